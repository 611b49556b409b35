package approvalplane_test

test_generic_delete_needs_ops_approval if {
	inp := req("internal-api", "DELETE", "/v2/widgets/17", null)
	e := approval_of(inp, "generic.delete")
	e.route == "ops-oncall"
	e.risk == "medium"
	e.action == "http_delete"
	e.summary == {"upstream": "internal-api", "path": "/v2/widgets/17"}
	decision(inp) == "require_approval"
	well_formed(inp)
}

test_generic_delete_method_is_case_insensitive if {
	"generic.delete" in approval_ids(req("internal-api", "delete", "/v2/widgets/17", null))
}

test_generic_other_methods_pass if {
	not "generic.delete" in approval_ids(req("internal-api", "POST", "/v2/widgets", {"name": "x"}))
	not "generic.delete" in approval_ids(req("internal-api", "GET", "/v2/widgets/17", null))
}

test_generic_delete_stays_out_of_provider_deletes if {
	not "generic.delete" in approval_ids(req("stripe", "DELETE", "/v1/customers/cus_1", null))
	not "generic.delete" in approval_ids(req("github", "DELETE", "/repos/acme/api", null))
	not "generic.delete" in approval_ids(req_q("postgrest", "DELETE", "/orders", {"id": "eq.1"}, null))
}

test_generic_delete_covers_unhandled_provider_deletes if {
	"generic.delete" in approval_ids(req("stripe", "DELETE", "/v1/webhook_endpoints/we_1", null))
	"generic.delete" in approval_ids(req("hubspot", "DELETE", "/crm/v3/objects/contacts/51", null))
}

test_generic_delete_allowlist_by_upstream_and_path if {
	inp := req("cache", "DELETE", "/keys/session/abc", null)
	list := [{"upstream": "cache", "path": "/keys/session/*"}]
	not "generic.delete" in approval_ids(inp) with data.generic.delete_allowlist as list
	"generic.delete_allowlisted" in allow_ids(inp) with data.generic.delete_allowlist as list
	decision(inp) == "allow" with data.generic.delete_allowlist as list
}

test_generic_delete_allowlist_does_not_match_other_paths if {
	list := [{"upstream": "cache", "path": "/keys/session/*"}]
	"generic.delete" in approval_ids(req("cache", "DELETE", "/keys/users/abc", null)) with data.generic.delete_allowlist as list
	"generic.delete" in approval_ids(req("cache", "DELETE", "/keys/session/a/b", null)) with data.generic.delete_allowlist as list
	"generic.delete" in approval_ids(req("other", "DELETE", "/keys/session/abc", null)) with data.generic.delete_allowlist as list
}

test_generic_delete_allowlist_string_forms if {
	inp := req("scratch", "DELETE", "/anything/at/all", null)
	not "generic.delete" in approval_ids(inp) with data.generic.delete_allowlist as ["scratch"]
	not "generic.delete" in approval_ids(inp) with data.generic.delete_allowlist as ["scratch:/anything/**"]
	not "generic.delete" in approval_ids(inp) with data.generic.delete_allowlist as [{"upstream": "scratch"}]
	"generic.delete" in approval_ids(inp) with data.generic.delete_allowlist as ["scratch:/other/**", 5, {"path": "/**"}]
}

test_generic_delete_site_rules_can_take_over if {
	# A site rule claims the request through delete_covered.
	inp := req("internal-api", "DELETE", "/v2/widgets/17", null)
	not "generic.delete" in approval_ids(inp) with data.approvalplane.delete_covered as {"site.widgets"}
}

test_generic_delete_ignores_non_http_kinds if {
	inp := {"kind": "mcp", "mcp": {"server": "s", "tool": "delete_thing", "arguments": {}}, "request": {"method": "DELETE", "path": "/x"}}
	not "generic.delete" in approval_ids(inp)
}

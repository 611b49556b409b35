# Catch-all: a DELETE that no provider rule handles asks ops-oncall.
#
# "Handled" means a provider rule file put an entry into `delete_covered`
# for this request (stripe.rego, github.rego and records.rego do so for
# the DELETEs they decide on). Deciding this from `delete_covered` rather
# than from `allow`/`approval` keeps the rule free of recursion. A site
# rule that takes over a DELETE adds its own entry:
#
#     delete_covered contains "site.cache_purge" if { ... }
#
# Data (data.generic.delete_allowlist): entries that let a DELETE through
# without asking. Each entry is an object {"upstream": "name", "path": "glob"}
# ("path" optional: the whole upstream), or a string "name" (the whole
# upstream) or "name:/glob". Globs use "/" as the separator: "*" matches
# one path segment, "**" any number.
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- dispatch ---------------------------------------------------------------

# The rules below add to generic_*; they reach the decision sets only for
# requests that pass generic_delete, so other requests never evaluate them.

approval contains element if {
	generic_delete
	some element in generic_approval
}

allow contains element if {
	generic_delete
	some element in generic_allow
}

generic_delete_allowlist := data.generic.delete_allowlist if {
	is_array(data.generic.delete_allowlist)
} else := []

generic_delete if {
	http_method == "DELETE"
	is_string(http_path)
}

generic_delete_handled if {
	some _ in delete_covered
}

# {"upstream": "u", "path": "/glob"} or {"upstream": "u"}
generic_delete_allowlisted(entry) if {
	is_object(entry)
	entry.upstream == input.upstream
	not entry.path
}

generic_delete_allowlisted(entry) if {
	is_object(entry)
	entry.upstream == input.upstream
	is_string(entry.path)
	glob.match(entry.path, ["/"], http_path)
}

# "u" or "u:/glob"
generic_delete_allowlisted(entry) if {
	is_string(entry)
	entry == input.upstream
}

generic_delete_allowlisted(entry) if {
	is_string(entry)
	is_string(input.upstream)
	startswith(entry, concat("", [input.upstream, ":"]))
	glob.match(substring(entry, count(input.upstream) + 1, -1), ["/"], http_path)
}

generic_delete_allowed if {
	some entry in generic_delete_allowlist
	generic_delete_allowlisted(entry)
}

generic_approval contains {
	"id": "generic.delete",
	"reason": sprintf("DELETE %s on %s: deletions ask unless a rule or the delete allowlist covers them", [http_path, generic_upstream_text]),
	"route": "ops-oncall",
	"risk": "medium",
	"action": "http_delete",
	"summary": {"upstream": generic_upstream_text, "path": http_path},
	"escalate_after": "30m",
} if {
	generic_delete
	not generic_delete_handled
	not generic_delete_allowed
}

generic_allow contains {
	"id": "generic.delete_allowlisted",
	"reason": sprintf("DELETE %s on %s is on the delete allowlist", [http_path, generic_upstream_text]),
} if {
	generic_delete
	not generic_delete_handled
	generic_delete_allowed
}

generic_upstream_text := input.upstream if {
	is_string(input.upstream)
} else := "unknown upstream"

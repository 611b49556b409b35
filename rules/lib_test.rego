# Test helpers shared by every *_test.rego, and tests of lib.rego.
#
# Rules are referred to by their full path (data.approvalplane.x) and not
# through `import data.approvalplane`: with regorus 0.14.1, a rule of a
# package split over several files, reached through an import alias, can
# see other rules of its own file (later ones, and `default` ones) as
# undefined.
package approvalplane_test

# --- building inputs --------------------------------------------------------

req(upstream, method, path, body) := req_q(upstream, method, path, {}, body)

req_q(upstream, method, path, query, body) := {
	"kind": "http",
	"agent": {"id": "test-agent"},
	"upstream": upstream,
	"justification": "customer asked for it",
	"request": {
		"method": method,
		"path": path,
		"query": query,
		"headers": {},
		"body": "",
		"body_sha256": "",
		"truncated": false,
		"parsed_body": body,
	},
	"now": "2026-11-23T20:36:33Z",
}

# --- reading results --------------------------------------------------------

denies(inp) := s if {
	s := data.approvalplane.deny with input as inp
}

approvals(inp) := s if {
	s := data.approvalplane.approval with input as inp
}

allows(inp) := s if {
	s := data.approvalplane.allow with input as inp
}

deny_ids(inp) := {e.id | some e in denies(inp)}

approval_ids(inp) := {e.id | some e in approvals(inp)}

allow_ids(inp) := {e.id | some e in allows(inp)}

# The one approval element with this id.
approval_of(inp, id) := e if {
	some e in approvals(inp)
	e.id == id
}

# The decision, as the proxy's combiner takes it (before policy.default).
decision(inp) := "deny" if count(deny_ids(inp)) > 0

decision(inp) := "require_approval" if {
	count(deny_ids(inp)) == 0
	count(approval_ids(inp)) > 0
}

decision(inp) := "allow" if {
	count(deny_ids(inp)) == 0
	count(approval_ids(inp)) == 0
	count(allow_ids(inp)) > 0
}

decision(inp) := "none" if {
	count(deny_ids(inp)) == 0
	count(approval_ids(inp)) == 0
	count(allow_ids(inp)) == 0
}

routes := {"finance-oncall", "eng-oncall", "comms-oncall", "data-oncall", "ops-oncall"}

risks := {"low", "medium", "high", "critical"}

# Every element has an id and a reason; every approval element also has a
# known route and risk, an action and a non-empty summary of strings.
well_formed(inp) if {
	every e in denies(inp) {
		is_string(e.id)
		is_string(e.reason)
	}
	every e in allows(inp) {
		is_string(e.id)
		is_string(e.reason)
	}
	every e in approvals(inp) {
		is_string(e.id)
		is_string(e.reason)
		e.route in routes
		e.risk in risks
		is_string(e.action)
		is_object(e.summary)
		count(e.summary) > 0
		every v in e.summary {
			is_string(v)
		}
	}
}

# --- lib.rego ---------------------------------------------------------------

test_money_formats_dollars if {
	data.approvalplane.money(240000, "") == "$2,400.00"
	data.approvalplane.money(5, "") == "$0.05"
	data.approvalplane.money(123456789, "") == "$1,234,567.89"
	data.approvalplane.money(100000, "usd") == "$1,000.00 USD"
}

test_money_formats_other_currencies if {
	data.approvalplane.money(240000, "eur") == "2,400.00 EUR"
	data.approvalplane.money(5000, "jpy") == "5,000 JPY"
	data.approvalplane.money(999, {"odd": "currency"}) == "$9.99"
}

test_thousands_groups_digits if {
	data.approvalplane.thousands("1") == "1"
	data.approvalplane.thousands("123") == "123"
	data.approvalplane.thousands("1234") == "1,234"
	data.approvalplane.thousands("123456") == "123,456"
	data.approvalplane.thousands("1234567") == "1,234,567"
}

test_whole_number_accepts_digits_and_numbers if {
	data.approvalplane.whole_number("240000") == 240000
	data.approvalplane.whole_number(500) == 500
}

test_whole_number_rejects_everything_else if {
	not data.approvalplane.whole_number("12.5")
	not data.approvalplane.whole_number("-5")
	not data.approvalplane.whole_number("abc")
	not data.approvalplane.whole_number("")
	not data.approvalplane.whole_number(12.5)
	not data.approvalplane.whole_number(-1)
	not data.approvalplane.whole_number(["1"])
	not data.approvalplane.whole_number({"a": "1"})
	data.approvalplane.not_whole_number("abc")
	not data.approvalplane.not_whole_number("12")
}

test_path_is_decoded_and_normalised if {
	segs := data.approvalplane.http_lsegments with input as req("stripe", "post", "/v1//Refund%73/", {})
	segs == ["v1", "refunds"]
	data.approvalplane.http_method == "POST" with input as req("stripe", "post", "/v1/refunds", {})
}

test_path_keeps_plus_signs if {
	data.approvalplane.http_path == "/a+b" with input as req("x", "GET", "/a+b", null)
}

test_upstream_mapping_follows_data if {
	data.approvalplane.upstream_is("stripe") with input as req("stripe-live", "GET", "/v1/charges", null)
		with data.providers.stripe as ["stripe-live", "stripe-test"]
	not data.approvalplane.upstream_is("stripe") with input as req("stripe", "GET", "/v1/charges", null)
		with data.providers.stripe as ["stripe-live"]
}

test_upstream_mapping_defaults_to_provider_name if {
	data.approvalplane.upstream_is("github") with input as req("github", "GET", "/user", null)
		with data.providers as {}
}

# Inputs that are not proxied HTTP calls match no provider rule and raise no
# error; request_approval calls (kind "api") are asked.rego's alone.
test_api_kind_input_matches_only_asked if {
	inp := {
		"kind": "api",
		"agent": {"id": "test-agent"},
		"action": "issue_refund",
		"payload": {"amount": 240000},
		"risk": "high",
		"policy_hints": {},
		"now": "2026-11-23T20:36:33Z",
	}
	count(denies(inp)) == 0
	approval_ids(inp) == {"asked.request_approval"}
	count(allows(inp)) == 0
	not data.approvalplane.http_request with input as inp
}

test_mcp_kind_input_matches_nothing if {
	inp := {
		"kind": "mcp",
		"agent": {"id": "test-agent"},
		"upstream": "github",
		"mcp": {"server": "github", "tool": "merge_pull_request", "arguments": {"owner": "o", "repo": "r"}},
		"now": "2026-11-23T20:36:33Z",
	}
	count(denies(inp)) == 0
	count(approvals(inp)) == 0
	count(allows(inp)) == 0
}

test_http_input_with_odd_types_is_not_an_error if {
	inp := {"kind": "http", "upstream": 5, "request": {"method": 7, "path": ["x"], "query": "q", "parsed_body": "text"}}
	count(denies(inp)) == 0
	count(approvals(inp)) == 0
	count(allows(inp)) == 0
}

test_whole_number_digit_strings_only if {
	data.approvalplane.whole_number("0007") == 7
	data.approvalplane.whole_number("000") == 0
	data.approvalplane.whole_number("0") == 0
	data.approvalplane.whole_number("999999999999999") == 999999999999999
	not data.approvalplane.whole_number("9999999999999999")
	not data.approvalplane.whole_number("1 2")
	not data.approvalplane.whole_number(" 12")
	not data.approvalplane.whole_number("١٢")
	not data.approvalplane.whole_number("+12")
}

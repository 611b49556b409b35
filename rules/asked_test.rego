package approvalplane_test

# --- building inputs --------------------------------------------------------

ask(action, payload, risk, hints) := {
	"kind": "api",
	"agent": {"id": "test-agent"},
	"action": action,
	"payload": payload,
	"risk": risk,
	"policy_hints": hints,
	"justification": "duplicate charge",
	"now": "2026-11-23T20:36:33Z",
}

asked_of(inp) := approval_of(inp, "asked.request_approval")

route_of(inp) := e.route if {
	e := asked_of(inp)
}

# --- the landing page's example ---------------------------------------------

test_asked_refund_goes_to_finance if {
	inp := ask("issue_refund", {"customer": "cus_4193_amaya", "amount": 2400.00}, "high", ["refund", "over_threshold"])
	e := asked_of(inp)
	e.route == "finance-oncall"
	e.risk == "high"
	e.action == "issue_refund"
	e.summary == {"amount": "2400", "customer": "cus_4193_amaya"}
	e.reason == "the agent asked for approval before issue_refund (hints: refund, over_threshold)"
	e.escalate_after == "15m"
	e.expires_after == "1h"
	approval_ids(inp) == {"asked.request_approval"}
	count(denies(inp)) == 0
	count(allows(inp)) == 0
	decision(inp) == "require_approval"
	well_formed(inp)
}

# --- routing by action ------------------------------------------------------

test_asked_routes_by_action if {
	route_of(ask("issue_refund", {"x": "1"}, null, [])) == "finance-oncall"
	route_of(ask("create_payout", {"x": "1"}, null, [])) == "finance-oncall"
	route_of(ask("void_invoice", {"x": "1"}, null, [])) == "finance-oncall"
	route_of(ask("deploy_production", {"x": "1"}, null, [])) == "eng-oncall"
	route_of(ask("merge_pull_request", {"x": "1"}, null, [])) == "eng-oncall"
	route_of(ask("rollback", {"x": "1"}, null, [])) == "eng-oncall"
	route_of(ask("send_email", {"x": "1"}, null, [])) == "comms-oncall"
	route_of(ask("notify_customers", {"x": "1"}, null, [])) == "comms-oncall"
	route_of(ask("delete_rows", {"x": "1"}, null, [])) == "data-oncall"
	route_of(ask("export_contacts", {"x": "1"}, null, [])) == "data-oncall"
	route_of(ask("restart_server", {"x": "1"}, null, [])) == "ops-oncall"
}

test_asked_action_match_ignores_case if {
	route_of(ask("Stripe.Refund.Create", {"x": "1"}, null, [])) == "finance-oncall"
	route_of(ask("DeployService", {"x": "1"}, null, [])) == "eng-oncall"
}

# Earlier entries win: an invoice email is finance's, a deploy notice eng's.
test_asked_first_entry_wins if {
	route_of(ask("send_invoice_email", {"x": "1"}, null, [])) == "finance-oncall"
	route_of(ask("notify_deploy", {"x": "1"}, null, [])) == "eng-oncall"
}

# --- routing by hint --------------------------------------------------------

test_asked_routes_by_hint if {
	route_of(ask("do_it", {"x": "1"}, null, ["refund"])) == "finance-oncall"
	route_of(ask("do_it", {"x": "1"}, null, ["over_threshold", "production_deploy"])) == "eng-oncall"
	route_of(ask("do_it", {"x": "1"}, null, ["Bulk-Email"])) == "comms-oncall"
	route_of(ask("do_it", {"x": "1"}, null, ["over_threshold"])) == "ops-oncall"
}

test_asked_action_beats_hints if {
	route_of(ask("send_newsletter", {"x": "1"}, null, ["refund"])) == "comms-oncall"
}

test_asked_hint_order_follows_the_table if {
	# Both hints match; the finance entry comes first in the table.
	route_of(ask("do_it", {"x": "1"}, null, ["export", "payment"])) == "finance-oncall"
}

# --- routes from data -------------------------------------------------------

test_asked_routes_come_from_data if {
	inp := ask("rotate_key", {"x": "1"}, null, [])
	route_of(inp) == "eng-oncall" with data.asked.routes as [{"route": "eng-oncall", "keywords": ["rotate"]}]
	route_of(inp) == "data-oncall" with data.asked.default_route as "data-oncall"
}

test_asked_empty_table_sends_everything_to_the_default if {
	route_of(ask("issue_refund", {"x": "1"}, null, ["refund"])) == "ops-oncall" with data.asked.routes as []
}

test_asked_broken_routes_fall_back_to_the_shipped_table if {
	inp := ask("issue_refund", {"x": "1"}, null, [])
	route_of(inp) == "finance-oncall" with data.asked.routes as "finance-oncall"
	route_of(inp) == "finance-oncall" with data.asked.routes as {"refund": "eng-oncall"}
	route_of(inp) == "finance-oncall" with data.asked.routes as [{"route": "eng-oncall", "keywords": "refund"}]
	route_of(inp) == "finance-oncall" with data.asked.routes as [{"route": 5, "keywords": ["refund"]}]
	route_of(inp) == "finance-oncall" with data.asked.routes as [{"route": "", "keywords": ["refund"]}]
	route_of(inp) == "finance-oncall" with data.asked.routes as [{"route": "eng-oncall", "keywords": ["refund"]}, "x"]
	route_of(inp) == "finance-oncall" with data.asked as "x"
	route_of(inp) == "finance-oncall" with data.asked as [1, 2]
}

test_asked_bad_keywords_match_nothing if {
	inp := ask("issue_refund", {"x": "1"}, null, [])
	# An empty keyword would match every action: it is ignored.
	route_of(inp) == "ops-oncall" with data.asked.routes as [{"route": "eng-oncall", "keywords": ["", 5, null, ["refund"]]}]
}

test_asked_broken_default_route_is_ops if {
	inp := ask("restart", {"x": "1"}, null, [])
	route_of(inp) == "ops-oncall" with data.asked.default_route as 5
	route_of(inp) == "ops-oncall" with data.asked.default_route as ""
	route_of(inp) == "ops-oncall" with data.asked.default_route as ["eng-oncall"]
}

test_asked_expiry_comes_from_data if {
	inp := ask("issue_refund", {"x": "1"}, null, [])
	asked_of(inp).expires_after == "1h"
	asked_of(inp).expires_after == "4h" with data.asked.expires_after as "4h"
	asked_of(inp).expires_after == "90m" with data.asked.expires_after as "90m"
	asked_of(inp).expires_after == "2d" with data.asked.expires_after as "2d"
}

test_asked_broken_expiry_is_an_hour if {
	inp := ask("issue_refund", {"x": "1"}, null, [])
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as 3600
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "0m"
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "soon"
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "h"
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "-5m"
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "1.5h"
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "10000000m"
	asked_of(inp).expires_after == "1h" with data.asked.expires_after as "5 m"
}

# --- risk -------------------------------------------------------------------

test_asked_risk_is_the_agents_when_it_is_higher if {
	asked_of(ask("a", {"x": "1"}, "low", [])).risk == "medium"
	asked_of(ask("a", {"x": "1"}, "medium", [])).risk == "medium"
	asked_of(ask("a", {"x": "1"}, "high", [])).risk == "high"
	asked_of(ask("a", {"x": "1"}, "critical", [])).risk == "critical"
	asked_of(ask("a", {"x": "1"}, "CRITICAL", [])).risk == "critical"
}

test_asked_escalation_follows_risk if {
	asked_of(ask("a", {"x": "1"}, "low", [])).escalate_after == "30m"
	asked_of(ask("a", {"x": "1"}, "medium", [])).escalate_after == "30m"
	asked_of(ask("a", {"x": "1"}, "high", [])).escalate_after == "15m"
	asked_of(ask("a", {"x": "1"}, "critical", [])).escalate_after == "10m"
}

test_asked_risk_falls_back_to_medium if {
	asked_of(ask("a", {"x": "1"}, null, [])).risk == "medium"
	asked_of(ask("a", {"x": "1"}, "extreme", [])).risk == "medium"
	asked_of(ask("a", {"x": "1"}, 3, [])).risk == "medium"
	asked_of(ask("a", {"x": "1"}, ["high"], [])).risk == "medium"
	inp := {"kind": "api", "action": "a", "payload": {"x": "1"}}
	asked_of(inp).risk == "medium"
	asked_of(inp).escalate_after == "30m"
}

# --- summary ----------------------------------------------------------------

test_asked_summary_shows_scalars if {
	payload := {
		"customer": "cus_1",
		"amount": 2400.5,
		"count": 3,
		"notify": true,
		"dry_run": false,
		"metadata": {"order": "6735"},
		"items": ["a", "b"],
		"note": null,
	}
	e := asked_of(ask("issue_refund", payload, "high", []))
	e.summary == {"customer": "cus_1", "amount": "2400.5", "count": "3", "notify": "true", "dry_run": "false"}
}

test_asked_summary_keeps_twelve_keys_in_order if {
	payload := {k: "v" | some i in numbers.range(10, 29); k := sprintf("k%d", [i])}
	e := asked_of(ask("a", payload, null, []))
	count(e.summary) == 12
	e.summary.k10 == "v"
	e.summary.k21 == "v"
	not e.summary.k22
}

test_asked_summary_counts_only_shown_keys if {
	# Nested values do not use up the twelve places.
	nested := {k: {"n": 1} | some i in numbers.range(10, 29); k := sprintf("a%d", [i])}
	payload := object.union(nested, {"z": "shown"})
	asked_of(ask("a", payload, null, [])).summary == {"z": "shown"}
}

test_asked_summary_cuts_long_strings if {
	long := concat("", [x | some _ in numbers.range(1, 300); x := "x"])
	v := asked_of(ask("a", {"text": long}, null, [])).summary.text
	count(v) == 200
	endswith(v, "…")
	asked_of(ask("a", {"k": concat("", [x | some _ in numbers.range(1, 200); x := "y"])}, null, [])).summary.k == concat("", [x | some _ in numbers.range(1, 200); x := "y"])
}

test_asked_summary_skips_very_long_keys if {
	key := concat("", [x | some _ in numbers.range(1, 101); x := "k"])
	payload := object.union({"a": "1"}, {key: "2"})
	asked_of(ask("a", payload, null, [])).summary == {"a": "1"}
}

test_asked_summary_redacts_credentials if {
	payload := {
		"customer": "cus_1",
		"api_key": "abc",
		"Stripe-Secret": "x",
		"webhook_token": 5,
		"note": "sk_live_0123456789abcdef",
		"short": "ghp_1",
	}
	e := asked_of(ask("a", payload, null, []))
	e.summary == {
		"customer": "cus_1",
		"api_key": "[redacted]",
		"Stripe-Secret": "[redacted]",
		"webhook_token": "[redacted]",
		"note": "[redacted]",
		"short": "ghp_1",
	}
	asked_of(ask("a", "ghp_abcdefghijklmnop", null, [])).summary == {"payload": "[redacted]"}
}

# --- malformed inputs -------------------------------------------------------

test_asked_payload_not_an_object if {
	asked_of(ask("a", "refund cus_1 $20", null, [])).summary == {"payload": "refund cus_1 $20"}
	asked_of(ask("a", 42, null, [])).summary == {"payload": "42"}
	asked_of(ask("a", ["x", "y"], null, [])).summary == {"payload": "a list of 2 items"}
	asked_of(ask("a", null, null, [])).summary == {"payload": "none"}
	asked_of(ask("a", {}, null, [])).summary == {"payload": "none"}
	asked_of(ask("a", {"m": {"n": 1}}, null, [])).summary == {"payload": "no top-level values (only nested ones)"}
	well_formed(ask("a", null, null, []))
	well_formed(ask("a", ["x"], null, []))
}

test_asked_payload_missing if {
	inp := {"kind": "api", "action": "issue_refund"}
	e := asked_of(inp)
	e.summary == {"payload": "none"}
	e.route == "finance-oncall"
	e.reason == "the agent asked for approval before issue_refund"
	well_formed(inp)
}

test_asked_action_not_a_string if {
	inp := ask(5, {"x": "1"}, "high", ["refund"])
	e := asked_of(inp)
	not e.action
	e.route == "finance-oncall"
	e.reason == "the agent asked for approval before an unnamed action (hints: refund)"
	decision(inp) == "require_approval"
	e2 := asked_of(ask("", {"x": "1"}, null, []))
	not e2.action
	e2.route == "ops-oncall"
	e3 := asked_of({"kind": "api", "action": {"name": "issue_refund"}, "payload": {"x": "1"}})
	not e3.action
	e3.route == "ops-oncall"
}

test_asked_hints_of_the_wrong_shape if {
	asked_of(ask("do_it", {"x": "1"}, null, {"refund": true})).route == "ops-oncall"
	asked_of(ask("do_it", {"x": "1"}, null, "refund")).route == "ops-oncall"
	e := asked_of(ask("do_it", {"x": "1"}, null, [5, null, "refund", ["deploy"]]))
	e.route == "finance-oncall"
	e.reason == "the agent asked for approval before do_it (hints: refund)"
}

test_asked_reason_names_at_most_sixteen_hints if {
	hints := [h | some i in numbers.range(1, 20); h := sprintf("h%d", [i])]
	e := asked_of(ask("do_it", {"x": "1"}, null, hints))
	endswith(e.reason, "h15, h16)")
}

test_asked_empty_api_document if {
	inp := {"kind": "api"}
	e := asked_of(inp)
	e.route == "ops-oncall"
	e.risk == "medium"
	e.summary == {"payload": "none"}
	not e.action
	decision(inp) == "require_approval"
}

test_asked_is_never_allowed_or_denied if {
	every inp in [
		ask("read_balance", {"x": "1"}, "low", ["read_only"]),
		ask("issue_refund", {"amount": 1}, "low", ["small"]),
	] {
		decision(inp) == "require_approval"
	}
}

# --- other kinds ------------------------------------------------------------

test_asked_ignores_http_inputs if {
	# An HTTP request that carries api-looking fields is still an HTTP request.
	inp := object.union(req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "2000"}), {"action": "issue_refund", "risk": "high"})
	not "asked.request_approval" in approval_ids(inp)
	decision(inp) == "allow"
	not "asked.request_approval" in approval_ids(req("internal-api", "DELETE", "/v2/widgets/17", null))
	not data.approvalplane.asked_request with input as req("stripe", "GET", "/v1/charges", null)
}

test_asked_ignores_mcp_and_other_kinds if {
	mcp := {"kind": "mcp", "mcp": {"server": "github", "tool": "merge_pull_request", "arguments": {}}}
	count(approvals(mcp)) == 0
	count(approvals({"kind": "API", "action": "issue_refund"})) == 0
	count(approvals({"action": "issue_refund"})) == 0
	count(approvals({"kind": 5})) == 0
}

# The agent may raise the risk, never lower it below its route's.
test_asked_risk_never_below_the_routes if {
	asked_of(ask("issue_refund", {"amount": 1000000}, "low", [])).risk == "high"
	asked_of(ask("send_newsletter", {"x": "1"}, "low", [])).risk == "medium"
	asked_of(ask("send_newsletter", {"x": "1"}, "critical", [])).risk == "critical"
	asked_of(ask("transfer", {"x": "1"}, "low", ["refund"])).risk == "high"
}

test_asked_route_risk_from_data if {
	routes := [{"route": "eng-oncall", "risk": "critical", "keywords": ["deploy"]}, {"route": "data-oncall", "risk": "bogus", "keywords": ["drop"]}]
	asked_of(ask("deploy_api", {"x": "1"}, "low", [])).risk == "critical" with data.asked.routes as routes
	asked_of(ask("drop_table", {"x": "1"}, "low", [])).risk == "medium" with data.asked.routes as routes
}

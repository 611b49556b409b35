# Agents that ask first: `request_approval` (POST /v1/approvals, kind "api").
#
# An agent that calls request_approval() has asked for a person, so every such
# call is held for one: this file never allows and never denies. It picks the
# route from the action and the agent's policy hints, takes the higher of the
# route's risk and the agent's declared one, and builds the approval card's
# summary from the payload.
#
# Data (data.asked, every key optional):
#   routes         [{"route": "finance-oncall", "risk": "high",
#                    "keywords": ["refund", ...]}, ...]
#                  in priority order: the first entry with a keyword in the
#                  action wins, then the first with a keyword in a hint.
#                  Keywords match lower-cased substrings ("refund" matches
#                  "issue_refund" and "Refund.Create").
#   default_route  the route when no keyword matches (default "ops-oncall")
#   expires_after  how long the approval stays open (default "1h")
# A setting of the wrong shape falls back to its shipped value. A route name
# that the config does not define denies the call, as for every rule.
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- dispatch ---------------------------------------------------------------

# The rules below add to asked_approval; it reaches the decision set only for
# request_approval calls, so proxied requests pay this one body and nothing
# else. This file adds nothing to `deny` or `allow`.

# `input.kind` is read directly here, not through asked_request: a rule call costs
# every proxied request about 3,000 VM instructions (measured with callgrind over
# the explain cases), a reference to input almost nothing.
approval contains element if {
	input.kind == "api"
	some element in asked_approval
}

asked_request if input.kind == "api"

# --- settings ---------------------------------------------------------------

asked_shipped_routes := [
	{"route": "finance-oncall", "risk": "high", "keywords": ["refund", "payment", "charge", "payout", "invoice"]},
	{"route": "eng-oncall", "risk": "high", "keywords": ["deploy", "release", "rollback", "merge", "workflow"]},
	{"route": "comms-oncall", "risk": "medium", "keywords": ["email", "message", "notify", "send"]},
	{"route": "data-oncall", "risk": "high", "keywords": ["delete", "update", "record", "table", "data", "export"]},
]

# data.asked.routes when it is a list of {"route": non-empty string,
# "keywords": list}; anything else falls back to the shipped table as a whole.
# Keywords that are not non-empty strings match nothing.
asked_routes := data.asked.routes if {
	is_array(data.asked.routes)
	count([e | some e in data.asked.routes; not asked_route_entry(e)]) == 0
} else := asked_shipped_routes

asked_route_entry(e) if {
	is_object(e)
	is_string(e.route)
	e.route != ""
	is_array(e.keywords)
}

asked_default_route := data.asked.default_route if {
	is_string(data.asked.default_route)
	data.asked.default_route != ""
} else := "ops-oncall"

# A duration such as "45m", "1h" or "2d": 1 to 6 digits, not all zeros, and a
# unit; anything else is "1h" (a malformed duration would deny the call).
asked_expires_after := d if {
	d = data.asked.expires_after
	is_string(d)
	count(d) >= 2
	count(d) <= 7
	substring(d, count(d) - 1, 1) in {"s", "m", "h", "d"}
	trim_left(substring(d, 0, count(d) - 1), "0123456789") == ""
	trim_left(substring(d, 0, count(d) - 1), "0") != ""
} else := "1h"

# --- what the agent sent ----------------------------------------------------

asked_risks := {"low", "medium", "high", "critical"}

asked_risk_rank := {"low": 0, "medium": 1, "high": 2, "critical": 3}

# The agent's own risk when it is one of the four. It may raise the risk,
# never lower it below the route's (the agent is the party being checked).
asked_declared_risk := r if {
	is_string(input.risk)
	r := lower(input.risk)
	r in asked_risks
} else := "low"

# The route entry's "risk" when it is one of the four; medium for an entry
# without one and for the default route.
asked_route_risk := r if {
	r = asked_matched_entry.risk
	is_string(r)
	r in asked_risks
} else := "medium"

asked_risk := asked_declared_risk if {
	asked_risk_rank[asked_declared_risk] > asked_risk_rank[asked_route_risk]
} else := asked_route_risk

# The same pace as the provider files: critical 10m, high 15m, else 30m.
asked_escalate_after := {"low": "30m", "medium": "30m", "high": "15m", "critical": "10m"}[asked_risk]

asked_action := input.action if {
	is_string(input.action)
	input.action != ""
}

asked_action_text := v if {
	v = asked_action
} else := "an unnamed action"

# The element names the action only when the agent gave one (an empty or
# non-string action would make the element malformed).
asked_action_field := {"action": v} if {
	v = asked_action
} else := {}

# The agent's string hints, the first 16.
asked_hints := array.slice([h | some h in input.policy_hints; is_string(h)], 0, 16) if {
	is_array(input.policy_hints)
} else := []

asked_reason := sprintf("the agent asked for approval before %s (hints: %s)", [asked_action_text, concat(", ", asked_hints)]) if {
	count(asked_hints) > 0
} else := sprintf("the agent asked for approval before %s", [asked_action_text])

# --- route ------------------------------------------------------------------

asked_keyword_in(entry, text) if {
	some k in entry.keywords
	is_string(k)
	k != ""
	contains(text, lower(k))
}

# Index of the first routes entry with a keyword in the action, or in a hint.
asked_action_match := min(s) if {
	is_string(input.action)
	text := lower(input.action)
	s := {i | some i, e in asked_routes; asked_keyword_in(e, text)}
	count(s) > 0
}

asked_hint_match := min(s) if {
	s := {i | some i, e in asked_routes; some h in asked_hints; asked_keyword_in(e, lower(h))}
	count(s) > 0
}

# The routes entry that matched (undefined when none did).
asked_matched_entry := e if {
	e = asked_routes[asked_action_match]
} else := e if {
	e = asked_routes[asked_hint_match]
}

asked_route := r if {
	r = asked_matched_entry.route
} else := asked_default_route

# --- summary ----------------------------------------------------------------

asked_max_fields := 12

asked_max_text := 200

# The payload's top-level strings, numbers and booleans (nested objects,
# arrays and nulls are left out), the first 12 keys in sorted order, each
# value cut at 200 characters. Values under a key that names a credential, or
# shaped like a well-known API key or token, read "[redacted]" (the same
# words and prefixes as the proxy's own redaction, src/redact.rs).
asked_summary_keys := array.slice(sort([k | some k, v in input.payload; asked_scalar(v); count(k) <= 100]), 0, asked_max_fields) if {
	is_object(input.payload)
} else := []

asked_scalar(v) if is_string(v)

asked_scalar(v) if is_number(v)

asked_scalar(v) if is_boolean(v)

asked_text(v) := v if {
	is_string(v)
	count(v) <= asked_max_text
} else := concat("", [substring(v, 0, asked_max_text - 1), "…"]) if {
	is_string(v)
} else := sprintf("%v", [v]) if {
	is_number(v)
} else := sprintf("%v", [v]) if {
	is_boolean(v)
}

asked_summary := s if {
	s := {k: asked_field(k, input.payload[k]) | some k in asked_summary_keys}
	count(s) > 0
} else := {"payload": asked_payload_text}

asked_field(k, v) := "[redacted]" if {
	asked_sensitive_key(k)
} else := "[redacted]" if {
	asked_credential_value(v)
} else := asked_text(v)

asked_sensitive_words := [
	"token", "secret", "password", "passwd", "credential",
	"private-key", "apikey", "api-key", "cookie", "authorization",
]

asked_sensitive_key(k) if {
	is_string(k)
	l := replace(lower(k), "_", "-")
	some w in asked_sensitive_words
	contains(l, w)
}

asked_credential_prefixes := [
	"sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_",
	"xoxb-", "xoxp-", "xoxa-", "xoxs-", "xapp-",
	"ghp_", "gho_", "ghs_", "github_pat_", "glpat-",
	"AKIA", "AIza", "eyJ",
]

asked_credential_value(v) if {
	is_string(v)
	count(v) >= 12
	some p in asked_credential_prefixes
	startswith(v, p)
}

# What the card says when the payload has no top-level value to show.
asked_payload_text := asked_field("payload", input.payload) if {
	asked_scalar(input.payload)
} else := sprintf("a list of %d items", [count(input.payload)]) if {
	is_array(input.payload)
} else := "no top-level values (only nested ones)" if {
	is_object(input.payload)
	count(input.payload) > 0
} else := "none"

# --- the approval -----------------------------------------------------------

asked_approval contains object.union(
	{
		"id": "asked.request_approval",
		"reason": asked_reason,
		"route": asked_route,
		"risk": asked_risk,
		"summary": asked_summary,
		"escalate_after": asked_escalate_after,
		"expires_after": asked_expires_after,
	},
	asked_action_field,
) if asked_request

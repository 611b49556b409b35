# Stripe: money movement and irreversible changes.
#
# Upstreams: data.providers.stripe (default ["stripe"]).
# Data: data.stripe.refund_auto_approve_max, in minor units (default 50000 = $500).
#
# Stripe bodies are forms, so amounts arrive as strings ("240000"); they are
# checked to be digit-only before conversion so a bad value can never make
# the evaluation fail.
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- dispatch ---------------------------------------------------------------

# The rules below add to stripe_*; they reach the decision sets only for
# requests that pass stripe_request, so other requests never evaluate them.
# Reads are allowed: stripe_approval and stripe_deny are not evaluated for them.

deny contains element if {
	stripe_request
	not http_read
	some element in stripe_deny
}

approval contains element if {
	stripe_request
	not http_read
	some element in stripe_approval
}

allow contains element if {
	stripe_request
	some element in stripe_allow
}

# Missing from data: $500. Present but not a whole number: 0, so that every
# refund with an amount asks (a broken setting must not open the gate).
stripe_refund_max := v if {
	v = whole_number(data.stripe.refund_auto_approve_max)
} else := 0 if {
	not_whole_number(data.stripe.refund_auto_approve_max)
} else := 50000

stripe_request if "stripe" in http_providers

# Reads never move money.
stripe_allow contains {
	"id": "stripe.read",
	"reason": "read-only Stripe request",
} if {
	stripe_request
	http_read
}

# --- refunds ----------------------------------------------------------------

# POST /v1/refunds, and the older POST /v1/charges/{id}/refunds and
# POST /v1/charges/{id}/refund.
stripe_refund if {
	stripe_request
	http_method == "POST"
	http_lsegments == ["v1", "refunds"]
}

stripe_refund if {
	stripe_request
	http_method == "POST"
	count(http_lsegments) == 4
	http_lsegments[0] == "v1"
	http_lsegments[1] == "charges"
	http_lsegments[3] in {"refunds", "refund"}
}

# The body states an amount (possibly a malformed one).
stripe_refund_states_amount if {
	a = http_body.amount
	not is_null(a)
}

stripe_refund_amount := whole_number(http_body.amount) if stripe_refund

stripe_currency := http_body.currency if {
	is_string(http_body.currency)
} else := ""

stripe_refund_summary := object.union(
	object.union(
		string_fields(http_object, ["charge", "payment_intent", "customer"]),
		stripe_path_charge,
	),
	{"amount": stripe_refund_amount_text},
)

# The charge id from /v1/charges/{id}/refunds, when the body does not name one.
stripe_path_charge := {"charge": http_segments[2]} if {
	http_lsegments[1] == "charges"
	not is_string(http_body.charge)
} else := {}

stripe_refund_amount_text := money(stripe_refund_amount, stripe_currency)

stripe_refund_amount_text := "full refund (amount not stated)" if {
	stripe_refund
	not stripe_refund_states_amount
}

# The threshold in the words of the request's currency: "$500" for dollars
# (or no currency), "50,000 JPY" for others.
stripe_threshold_text := sprintf("$%s", [trim_suffix(major_units(stripe_refund_max), ".00")]) if {
	lower(stripe_currency) in {"", "usd"}
}

stripe_threshold_text := money(stripe_refund_max, stripe_currency) if {
	not lower(stripe_currency) in {"", "usd"}
}

stripe_approval contains {
	"id": "stripe.refund.large",
	"reason": sprintf("refund amount %s is over your %s auto-approve threshold", [stripe_refund_amount_text, stripe_threshold_text]),
	"route": "finance-oncall",
	"risk": "high",
	"action": "issue_refund",
	"summary": stripe_refund_summary,
	"escalate_after": "15m",
} if {
	stripe_refund
	stripe_refund_amount > stripe_refund_max
}

# Without an amount Stripe refunds everything that is left on the charge,
# which may be any amount.
stripe_approval contains {
	"id": "stripe.refund.full",
	"reason": sprintf("full refund with no amount stated: it may be over your %s auto-approve threshold", [stripe_threshold_text]),
	"route": "finance-oncall",
	"risk": "high",
	"action": "issue_refund",
	"summary": stripe_refund_summary,
	"escalate_after": "15m",
} if {
	stripe_refund
	not stripe_refund_states_amount
}

stripe_allow contains {
	"id": "stripe.refund.small",
	"reason": sprintf("refund amount %s is within your %s auto-approve threshold", [stripe_refund_amount_text, stripe_threshold_text]),
} if {
	stripe_refund
	stripe_refund_amount <= stripe_refund_max
}

# An amount that is not a whole number of minor units cannot be compared
# with the threshold; Stripe would refuse it anyway.
stripe_deny contains {
	"id": "stripe.refund.invalid_amount",
	"reason": "refund amount is not a whole number of minor units (e.g. amount=240000 for $2,400.00)",
} if {
	stripe_refund
	stripe_refund_states_amount
	not_whole_number(http_body.amount)
}

# --- payouts ----------------------------------------------------------------

stripe_payout if {
	stripe_request
	http_method == "POST"
	http_lsegments == ["v1", "payouts"]
}

stripe_payout_amount_text := v if {
	v = money(whole_number(http_body.amount), stripe_currency)
} else := "unreadable" if {
	not_whole_number(http_body.amount)
} else := "not stated"

stripe_approval contains {
	"id": "stripe.payout.create",
	"reason": sprintf("payout of %s moves money out of the Stripe balance", [stripe_payout_amount_text]),
	"route": "finance-oncall",
	"risk": "high",
	"action": "create_payout",
	"summary": object.union(
		string_fields(http_object, ["destination", "method", "description", "statement_descriptor"]),
		{"amount": stripe_payout_amount_text},
	),
	"escalate_after": "15m",
} if stripe_payout

# --- customers --------------------------------------------------------------

stripe_customer_delete if {
	stripe_request
	http_method == "DELETE"
	count(http_lsegments) == 3
	http_lsegments[0] == "v1"
	http_lsegments[1] == "customers"
}

stripe_approval contains {
	"id": "stripe.customer.delete",
	"reason": "deleting a customer is permanent and cancels all of its active subscriptions",
	"route": "finance-oncall",
	"risk": "high",
	"action": "delete_customer",
	"summary": {"customer": http_segments[2]},
	"escalate_after": "30m",
} if stripe_customer_delete

# --- subscriptions ----------------------------------------------------------

# DELETE /v1/subscriptions/{id} cancels now. Bulk cancellations show up as a
# run of these approvals, which the proxy tracks; each one is gated here.
stripe_subscription_cancel_now if {
	stripe_request
	http_method == "DELETE"
	count(http_lsegments) == 3
	http_lsegments[0] == "v1"
	http_lsegments[1] == "subscriptions"
}

# POST /v1/subscriptions/{id} with cancel_at_period_end=true or cancel_at=<ts>
# schedules a cancellation.
stripe_subscription_cancel_later if {
	stripe_request
	http_method == "POST"
	count(http_lsegments) == 3
	http_lsegments[0] == "v1"
	http_lsegments[1] == "subscriptions"
	http_body.cancel_at_period_end in {"true", true}
}

stripe_subscription_cancel_later if {
	stripe_request
	http_method == "POST"
	count(http_lsegments) == 3
	http_lsegments[0] == "v1"
	http_lsegments[1] == "subscriptions"
	whole_number(http_body.cancel_at)
}

stripe_approval contains {
	"id": "stripe.subscription.cancel",
	"reason": "cancelling a subscription stops the customer's billing now",
	"route": "finance-oncall",
	"risk": "medium",
	"action": "cancel_subscription",
	"summary": object.union(
		string_fields(http_object, ["invoice_now", "prorate"]),
		{"subscription": http_segments[2], "when": "now"},
	),
	"escalate_after": "30m",
} if stripe_subscription_cancel_now

stripe_approval contains {
	"id": "stripe.subscription.cancel",
	"reason": "this update schedules the subscription to be cancelled",
	"route": "finance-oncall",
	"risk": "medium",
	"action": "cancel_subscription",
	"summary": {"subscription": http_segments[2], "when": "scheduled"},
	"escalate_after": "30m",
} if stripe_subscription_cancel_later

# --- payout bank accounts ---------------------------------------------------

# POST /v1/accounts/{id}/external_accounts
# POST|DELETE /v1/accounts/{id}/external_accounts/{ba}
# (and the older bank_accounts alias)
stripe_payout_account_change if {
	stripe_request
	http_method in {"POST", "DELETE"}
	count(http_lsegments) in {4, 5}
	http_lsegments[0] == "v1"
	http_lsegments[1] == "accounts"
	http_lsegments[3] in {"external_accounts", "bank_accounts"}
	not stripe_account_list_delete
}

# DELETE on the collection itself is not a Stripe endpoint.
stripe_account_list_delete if {
	http_method == "DELETE"
	count(http_lsegments) == 4
}

# POST /v1/accounts/{id} with external_account=... replaces the bank account.
stripe_payout_account_change if {
	stripe_request
	http_method == "POST"
	count(http_lsegments) == 3
	http_lsegments[0] == "v1"
	http_lsegments[1] == "accounts"
	external_account = http_body.external_account
	not is_null(external_account)
}

stripe_payout_account_change_kind := "remove" if {
	http_method == "DELETE"
} else := "add" if {
	http_method == "POST"
	count(http_lsegments) == 4
} else := "update"

stripe_payout_account_summary := object.union(
	{"account": http_segments[2], "change": stripe_payout_account_change_kind},
	stripe_external_account_field,
)

stripe_external_account_field := {"external_account": http_segments[4]} if {
	count(http_segments) == 5
} else := {"external_account": http_body.external_account} if {
	count(http_segments) != 5
	is_string(http_body.external_account)
} else := {}

stripe_approval contains {
	"id": "stripe.payout_account.change",
	"reason": "changes the bank account or card that payouts are sent to",
	"route": "finance-oncall",
	"risk": "critical",
	"action": "change_payout_account",
	"summary": stripe_payout_account_summary,
	"escalate_after": "10m",
} if stripe_payout_account_change

# --- DELETEs handled here (generic.delete stays out of them) ----------------

delete_covered contains "stripe.customer.delete" if stripe_customer_delete

delete_covered contains "stripe.subscription.cancel" if stripe_subscription_cancel_now

delete_covered contains "stripe.payout_account.change" if {
	stripe_payout_account_change
	http_method == "DELETE"
}

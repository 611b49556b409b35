package approvalplane_test

# --- reads ------------------------------------------------------------------

test_stripe_get_is_allowed if {
	inp := req("stripe", "GET", "/v1/charges/ch_1", null)
	"stripe.read" in allow_ids(inp)
	decision(inp) == "allow"
}

test_stripe_post_is_not_a_read if {
	not "stripe.read" in allow_ids(req("stripe", "POST", "/v1/customers", {"email": "a@b.c"}))
}

test_stripe_rules_need_a_stripe_upstream if {
	inp := req("billing", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "240000"})
	count(approval_ids(inp)) == 0
	count(allow_ids(inp)) == 0
}

# --- refunds ----------------------------------------------------------------

test_stripe_large_refund_needs_finance_approval if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "240000", "metadata": {"order": "6735"}})
	e := approval_of(inp, "stripe.refund.large")
	e.route == "finance-oncall"
	e.risk == "high"
	e.action == "issue_refund"
	e.escalate_after == "15m"
	e.summary == {"charge": "ch_1", "amount": "$2,400.00"}
	e.reason == "refund amount $2,400.00 is over your $500 auto-approve threshold"
	decision(inp) == "require_approval"
	well_formed(inp)
}

test_stripe_refund_at_threshold_is_allowed if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "50000"})
	"stripe.refund.small" in allow_ids(inp)
	count(approval_ids(inp)) == 0
	decision(inp) == "allow"
}

test_stripe_refund_just_over_threshold_needs_approval if {
	inp := req("stripe", "POST", "/v1/refunds", {"payment_intent": "pi_1", "amount": "50001"})
	e := approval_of(inp, "stripe.refund.large")
	e.summary == {"payment_intent": "pi_1", "amount": "$500.01"}
	not "stripe.refund.small" in allow_ids(inp)
}

test_stripe_refund_threshold_comes_from_data if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "2000"})
	"stripe.refund.large" in approval_ids(inp) with data.stripe.refund_auto_approve_max as 1000
	"stripe.refund.small" in allow_ids(inp) with data.stripe.refund_auto_approve_max as 5000
}

test_stripe_broken_threshold_fails_closed if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "100"})
	"stripe.refund.large" in approval_ids(inp) with data.stripe.refund_auto_approve_max as "lots"
}

test_stripe_json_number_amount_is_understood if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": 240000, "currency": "usd"})
	e := approval_of(inp, "stripe.refund.large")
	e.summary.amount == "$2,400.00 USD"
}

test_stripe_refund_currency_is_shown_uppercase if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "7500000", "currency": "eur"})
	e := approval_of(inp, "stripe.refund.large")
	e.summary.amount == "75,000.00 EUR"
}

test_stripe_full_refund_needs_approval if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "customer": "cus_9"})
	e := approval_of(inp, "stripe.refund.full")
	e.route == "finance-oncall"
	e.risk == "high"
	e.action == "issue_refund"
	e.summary == {"charge": "ch_1", "customer": "cus_9", "amount": "full refund (amount not stated)"}
	well_formed(inp)
}

test_stripe_full_refund_without_body_needs_approval if {
	"stripe.refund.full" in approval_ids(req("stripe", "POST", "/v1/refunds", null))
}

test_stripe_refund_with_amount_is_not_a_full_refund if {
	not "stripe.refund.full" in approval_ids(req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "100"}))
}

test_stripe_charge_refunds_endpoint_is_a_refund if {
	inp := req("stripe", "POST", "/v1/charges/ch_7/refunds", {"amount": "990000"})
	e := approval_of(inp, "stripe.refund.large")
	e.summary == {"charge": "ch_7", "amount": "$9,900.00"}
}

test_stripe_encoded_refund_path_is_still_a_refund if {
	"stripe.refund.large" in approval_ids(req("stripe", "POST", "/v1/re%66unds", {"amount": "990000"}))
}

test_stripe_bad_refund_amount_is_denied if {
	inp := req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "1e9"})
	"stripe.refund.invalid_amount" in deny_ids(inp)
	decision(inp) == "deny"
	"stripe.refund.invalid_amount" in deny_ids(req("stripe", "POST", "/v1/refunds", {"amount": {"x": "1"}}))
	"stripe.refund.invalid_amount" in deny_ids(req("stripe", "POST", "/v1/refunds", {"amount": "-100"}))
}

test_stripe_good_refund_amount_is_not_denied if {
	count(deny_ids(req("stripe", "POST", "/v1/refunds", {"charge": "ch_1", "amount": "100"}))) == 0
}

test_stripe_refund_update_is_not_a_refund if {
	inp := req("stripe", "POST", "/v1/refunds/re_1", {"metadata": {"a": "b"}})
	count(approval_ids(inp)) == 0
}

# --- payouts ----------------------------------------------------------------

test_stripe_payout_needs_approval if {
	inp := req("stripe", "POST", "/v1/payouts", {"amount": "1250000", "currency": "usd", "destination": "ba_1"})
	e := approval_of(inp, "stripe.payout.create")
	e.route == "finance-oncall"
	e.risk == "high"
	e.action == "create_payout"
	e.summary == {"amount": "$12,500.00 USD", "destination": "ba_1"}
	well_formed(inp)
}

test_stripe_payout_without_readable_amount_still_needs_approval if {
	e := approval_of(req("stripe", "POST", "/v1/payouts", {"amount": "lots"}), "stripe.payout.create")
	e.summary.amount == "unreadable"
	e2 := approval_of(req("stripe", "POST", "/v1/payouts", null), "stripe.payout.create")
	e2.summary.amount == "not stated"
}

test_stripe_payout_listing_is_allowed if {
	inp := req("stripe", "GET", "/v1/payouts", null)
	not "stripe.payout.create" in approval_ids(inp)
	decision(inp) == "allow"
}

# --- customers --------------------------------------------------------------

test_stripe_customer_delete_needs_approval if {
	inp := req("stripe", "DELETE", "/v1/customers/cus_123", null)
	e := approval_of(inp, "stripe.customer.delete")
	e.route == "finance-oncall"
	e.action == "delete_customer"
	e.summary == {"customer": "cus_123"}
	not "generic.delete" in approval_ids(inp)
	well_formed(inp)
}

test_stripe_customer_discount_delete_is_not_a_customer_delete if {
	inp := req("stripe", "DELETE", "/v1/customers/cus_123/discount", null)
	not "stripe.customer.delete" in approval_ids(inp)
	"generic.delete" in approval_ids(inp)
}

# --- subscriptions ----------------------------------------------------------

test_stripe_subscription_cancel_needs_approval if {
	inp := req("stripe", "DELETE", "/v1/subscriptions/sub_1", null)
	e := approval_of(inp, "stripe.subscription.cancel")
	e.route == "finance-oncall"
	e.risk == "medium"
	e.action == "cancel_subscription"
	e.summary == {"subscription": "sub_1", "when": "now"}
	not "generic.delete" in approval_ids(inp)
	well_formed(inp)
}

test_stripe_scheduled_cancel_needs_approval if {
	e := approval_of(req("stripe", "POST", "/v1/subscriptions/sub_1", {"cancel_at_period_end": "true"}), "stripe.subscription.cancel")
	e.summary.when == "scheduled"
	"stripe.subscription.cancel" in approval_ids(req("stripe", "POST", "/v1/subscriptions/sub_1", {"cancel_at": "1767225600"}))
}

test_stripe_subscription_update_is_not_a_cancel if {
	not "stripe.subscription.cancel" in approval_ids(req("stripe", "POST", "/v1/subscriptions/sub_1", {"cancel_at_period_end": "false"}))
	not "stripe.subscription.cancel" in approval_ids(req("stripe", "POST", "/v1/subscriptions/sub_1", {"metadata": {"a": "b"}}))
}

# --- payout bank accounts ---------------------------------------------------

test_stripe_new_external_account_is_critical if {
	inp := req("stripe", "POST", "/v1/accounts/acct_1/external_accounts", {"external_account": "btok_1"})
	e := approval_of(inp, "stripe.payout_account.change")
	e.route == "finance-oncall"
	e.risk == "critical"
	e.action == "change_payout_account"
	e.summary == {"account": "acct_1", "change": "add", "external_account": "btok_1"}
	well_formed(inp)
}

test_stripe_external_account_update_and_delete_are_critical if {
	e := approval_of(req("stripe", "POST", "/v1/accounts/acct_1/external_accounts/ba_9", {"default_for_currency": "true"}), "stripe.payout_account.change")
	e.summary == {"account": "acct_1", "change": "update", "external_account": "ba_9"}
	inp := req("stripe", "DELETE", "/v1/accounts/acct_1/external_accounts/ba_9", null)
	d := approval_of(inp, "stripe.payout_account.change")
	d.summary.change == "remove"
	not "generic.delete" in approval_ids(inp)
}

test_stripe_account_update_with_bank_account_is_critical if {
	"stripe.payout_account.change" in approval_ids(req("stripe", "POST", "/v1/accounts/acct_1", {"external_account": {"object": "bank_account", "account_number": "000123456789"}}))
}

test_stripe_account_update_without_bank_account_is_not_a_payout_change if {
	not "stripe.payout_account.change" in approval_ids(req("stripe", "POST", "/v1/accounts/acct_1", {"business_profile": {"name": "x"}}))
	not "stripe.payout_account.change" in approval_ids(req("stripe", "GET", "/v1/accounts/acct_1/external_accounts", null))
}

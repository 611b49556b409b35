package approvalplane_test

import data.approvalplane

refund(amount) := {"kind": "api", "agent": {"id": "support-agent"}, "action": "issue_refund",
	"payload": {"customer": "cus_4193", "amount": amount}}

test_small_refund_is_allowed if {
	count(approvalplane.allow) > 0 with input as refund(40)
	count(approvalplane.approval) == 0 with input as refund(40)
}

test_large_refund_needs_approval if {
	some a in approvalplane.approval with input as refund(2400)
	a.route == "finance-oncall"
}

test_huge_refund_is_denied if {
	some d in approvalplane.deny with input as refund(50000)
	d.id == "refund.too_large"
}

test_missing_amount_is_denied if {
	some d in approvalplane.deny with input as {"kind": "api", "action": "issue_refund", "payload": {}}
	d.id == "refund.malformed"
}

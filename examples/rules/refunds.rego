package approvalplane

# Policy for the examples: an agent asks (POST /v1/approvals, kind "api")
# before it issues a refund. Amounts are in dollars.

refund_request if {
	input.kind == "api"
	input.action == "issue_refund"
}

refund_amount := input.payload.amount if {
	refund_request
	is_number(input.payload.amount)
}

deny contains {"id": "refund.malformed", "reason": "a refund needs a positive numeric amount"} if {
	refund_request
	not refund_amount
}

deny contains {"id": "refund.malformed", "reason": "a refund needs a positive numeric amount"} if {
	refund_amount <= 0
}

deny contains {"id": "refund.too_large", "reason": "refunds over $10,000 are never issued by an agent"} if {
	refund_amount > 10000
}

allow contains {"id": "refund.small", "reason": "refunds up to $500 are routine"} if {
	refund_amount > 0
	refund_amount <= 500
}

approval contains {
	"id": "refund.large",
	"reason": "refunds over $500 need finance on-call",
	"route": "finance-oncall",
	"risk": "high",
	"action": "issue_refund",
	"summary": {"customer": object.get(input.payload, "customer", "unknown")},
	"expires_after": "1h",
} if {
	refund_amount > 500
	refund_amount <= 10000
}

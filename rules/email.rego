# Outbound email: large sends and sends to list addresses.
#
# Upstreams: data.providers.sendgrid / postmark / mailgun / ses (defaults:
# the provider names). Understood send endpoints:
#   SendGrid  POST /v3/mail/send                      personalizations[].to/cc/bcc[].email
#   Postmark  POST /email, /email/withTemplate        To, Cc, Bcc: "a@x, b@y"
#             POST /email/batch                       [ {To, Cc, Bcc}, ... ]
#             POST /email/batchWithTemplates          {"Messages": [ ... ]}
#   Mailgun   POST /v3/{domain}/messages(.mime)       to, cc, bcc: strings or arrays
#   SES v2    POST /v2/email/outbound-emails          Destination.{To,Cc,Bcc}Addresses
#             POST /v2/email/outbound-bulk-emails     BulkEmailEntries[].Destination
# Data (data.email):
#   max_recipients        sends to more distinct addresses than this ask (default 10)
#   high_risk_recipients  above this the request is high risk (default 100)
#   list_prefixes         an address starting with one of these is a list ("all@", "list-")
#   list_addresses        exact list addresses
#   list_domains          every address at these domains is a list
package approvalplane

# Every builtin argument below is type-guarded and every value that may be
# missing is bound with `=`, so the bytecode VM may decide (docs/policy.md):
# approvalplane: vm-safe

# --- dispatch ---------------------------------------------------------------

# The rules below add to email_*; they reach the decision sets only for
# requests that pass email_request, so other requests never evaluate them.
# Reads are allowed: email_approval is not evaluated for them.

approval contains element if {
	email_request
	not http_read
	some element in email_approval
}

allow contains element if {
	email_request
	some element in email_allow
}

email_max_recipients := v if {
	v = whole_number(data.email.max_recipients)
} else := 0 if {
	not_whole_number(data.email.max_recipients)
} else := 10

email_high_risk_recipients := v if {
	v = whole_number(data.email.high_risk_recipients)
} else := 0 if {
	not_whole_number(data.email.high_risk_recipients)
} else := 100

email_list_prefixes := data.email.list_prefixes if {
	is_array(data.email.list_prefixes)
} else := [
	"all@", "everyone@", "list-", "all-", "allhands@", "all-hands@",
	"staff@", "company@", "announce@", "announcements@", "customers@",
]

email_list_addresses := data.email.list_addresses if {
	is_array(data.email.list_addresses)
} else := []

email_list_domains := data.email.list_domains if {
	is_array(data.email.list_domains)
} else := []

email_providers := ["sendgrid", "postmark", "mailgun", "ses"]

email_request if count(http_providers & {"sendgrid", "postmark", "mailgun", "ses"}) > 0

email_allow contains {
	"id": "email.read",
	"reason": "read-only request to an email provider",
} if {
	email_request
	http_read
}

# --- which requests send mail -----------------------------------------------

email_send_via contains "sendgrid" if {
	"sendgrid" in http_providers
	http_method == "POST"
	http_lsegments == ["v3", "mail", "send"]
}

email_send_via contains "postmark" if {
	"postmark" in http_providers
	http_method == "POST"
	http_lsegments in {["email"], ["email", "batch"], ["email", "withtemplate"], ["email", "batchwithtemplates"]}
}

email_send_via contains "mailgun" if {
	"mailgun" in http_providers
	http_method == "POST"
	count(http_lsegments) == 3
	http_lsegments[0] == "v3"
	http_lsegments[2] in {"messages", "messages.mime"}
}

email_send_via contains "ses" if {
	"ses" in http_providers
	http_method == "POST"
	http_lsegments in {["v2", "email", "outbound-emails"], ["v2", "email", "outbound-bulk-emails"]}
}

email_send if {
	some _ in email_send_via
}

email_provider_text := concat(", ", sort([p | some p in email_send_via]))

# --- the recipients ---------------------------------------------------------

# Objects that carry recipient fields: SendGrid personalizations, Postmark
# messages, the Mailgun form, SES destinations.
email_message contains m if {
	"sendgrid" in email_send_via
	is_array(http_body.personalizations)
	some m in http_body.personalizations
	is_object(m)
}

email_message contains http_body if {
	some p in {"postmark", "mailgun"}
	p in email_send_via
}

email_message contains m if {
	"postmark" in email_send_via
	is_array(http_parsed)
	some m in http_parsed
	is_object(m)
}

email_message contains m if {
	"postmark" in email_send_via
	some k, list in http_object
	lower(k) == "messages"
	is_array(list)
	some m in list
	is_object(m)
}

email_message contains d if {
	"ses" in email_send_via
	some k, d in http_object
	lower(k) == "destination"
	is_object(d)
}

email_message contains d if {
	"ses" in email_send_via
	some k, entries in http_object
	lower(k) == "bulkemailentries"
	is_array(entries)
	some e in entries
	is_object(e)
	some k2, d in e
	lower(k2) == "destination"
	is_object(d)
}

email_recipient_fields := {"to", "cc", "bcc", "toaddresses", "ccaddresses", "bccaddresses"}

# Anything that looks like an address; display names and separators are
# skipped, so `"Doe, Jane" <jane@x.com>, bob@y.org` gives two addresses.
# The same as every match of the pattern
#     [^ \t\r\n<>(),;:"\[\]]+@[^ \t\r\n<>(),;:"\[\]]+
# (email_test.rego checks that): the text is cut at the separators, and a
# piece is an address when an "@" has a character on each side of it.
email_separators := {
	" ": ",", "\t": ",", "\r": ",", "\n": ",", "<": ",", ">": ",", "(": ",",
	")": ",", ";": ",", ":": ",", "\"": ",", "[": ",", "]": ",",
}

email_string_addresses(s) := {lower(a) |
	some a in split(strings.replace_n(email_separators, s), ",")
	count(a) >= 3
	contains(substring(a, 1, count(a) - 2), "@")
} if is_string(s)

email_object_addresses(o) := {a |
	some k, v in o
	lower(k) in {"email", "address"}
	some a in email_string_addresses(v)
} if is_object(o)

email_item_addresses(v) := email_string_addresses(v) if is_string(v)

email_item_addresses(v) := email_object_addresses(v) if is_object(v)

email_addresses(v) := email_item_addresses(v) if not is_array(v)

email_addresses(v) := {a | some item in v; some a in email_item_addresses(item)} if is_array(v)

email_recipient contains a if {
	some m in email_message
	some k, v in m
	lower(k) in email_recipient_fields
	some a in email_addresses(v)
}

# Distinct addresses across to, cc and bcc of every message in the request.
email_recipients := {a | some a in email_recipient}

email_recipient_count := count(email_recipients)

# --- list addresses ---------------------------------------------------------

# The list settings in the form they are matched in, once per decision
# (entries that are not strings are ignored).
email_list_prefixes_lower := [lower(p) | some p in email_list_prefixes; is_string(p)]

email_list_addresses_lower := {lower(x) | some x in email_list_addresses; is_string(x)}

email_list_suffixes := [concat("", ["@", lower(trim_prefix(d, "@"))]) | some d in email_list_domains; is_string(d)]

email_list_hit contains a if {
	some a in email_recipients
	strings.any_prefix_match(a, email_list_prefixes_lower)
}

email_list_hit contains a if {
	some a in email_recipients
	a in email_list_addresses_lower
}

email_list_hit contains a if {
	some a in email_recipients
	strings.any_suffix_match(a, email_list_suffixes)
}

email_list_hits := sort([a | some a in email_list_hit])

# --- the approval card ------------------------------------------------------

email_sample := concat(", ", array.slice(sort([a | some a in email_recipients]), 0, 3))

email_sample_text := email_sample if email_recipient_count <= 3

email_sample_text := sprintf("%s (+%d more)", [email_sample, email_recipient_count - 3]) if email_recipient_count > 3

email_subject := http_body.subject if {
	is_string(http_body.subject)
} else := http_body.Subject if {
	is_string(http_body.Subject)
} else := http_body.Content.Simple.Subject.Data if {
	is_string(http_body.Content.Simple.Subject.Data)
}

email_from := http_body.from if {
	is_string(http_body.from)
} else := http_body.from.email if {
	is_string(http_body.from.email)
} else := http_body.From if {
	is_string(http_body.From)
} else := http_body.FromEmailAddress if {
	is_string(http_body.FromEmailAddress)
}

email_summary := object.union_n([
	{
		"provider": email_provider_text,
		"recipients": format_int(email_recipient_count, 10),
		"sample": email_sample_text,
	},
	{"subject": s | s = email_subject},
	{"from": f | f = email_from},
])

email_bulk_risk := "high" if {
	email_recipient_count > email_high_risk_recipients
} else := "medium"

email_approval contains {
	"id": "email.send.bulk",
	"reason": sprintf("sends to %d recipients, over your limit of %d per send", [email_recipient_count, email_max_recipients]),
	"route": "comms-oncall",
	"risk": email_bulk_risk,
	"action": "send_email",
	"summary": email_summary,
	"escalate_after": "30m",
} if {
	email_send
	email_recipient_count > email_max_recipients
}

email_approval contains {
	"id": "email.send.list_address",
	"reason": sprintf("sends to a list address that reaches many people: %s", [concat(", ", email_list_hits)]),
	"route": "comms-oncall",
	"risk": "high",
	"action": "send_email",
	"summary": object.union(email_summary, {"list_addresses": concat(", ", email_list_hits)}),
	"escalate_after": "30m",
} if {
	email_send
	count(email_list_hits) > 0
}

# A send whose recipients cannot be read (e.g. an unparsed multipart body)
# cannot be sized, so a person looks at it.
email_approval contains {
	"id": "email.send.recipients_unknown",
	"reason": "the recipients of this send could not be read from the request body",
	"route": "comms-oncall",
	"risk": "medium",
	"action": "send_email",
	"summary": {"provider": email_provider_text, "recipients": "unknown"},
	"escalate_after": "30m",
} if {
	email_send
	email_recipient_count == 0
}

email_allow contains {
	"id": "email.send.small",
	"reason": sprintf("sends to %d recipient(s), within your limit of %d, and to no list address", [email_recipient_count, email_max_recipients]),
} if {
	email_send
	email_recipient_count > 0
	email_recipient_count <= email_max_recipients
	count(email_list_hits) == 0
}

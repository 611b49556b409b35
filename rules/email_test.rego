package approvalplane_test

# n addresses user1@example.com .. userN@example.com
users(n) := [sprintf("user%d@example.com", [i]) | some i in numbers.range(1, n)]

sendgrid_body(to, cc) := {
	"personalizations": [{"to": [{"email": a} | some a in to], "cc": [{"email": a} | some a in cc]}],
	"from": {"email": "support@acme.com"},
	"subject": "Your order",
	"content": [{"type": "text/plain", "value": "hi"}],
}

# --- reads ------------------------------------------------------------------

test_email_provider_get_is_allowed if {
	inp := req("postmark", "GET", "/messages/outbound", null)
	"email.read" in allow_ids(inp)
	decision(inp) == "allow"
}

test_email_send_is_not_a_read if {
	inp := req("postmark", "POST", "/email", {"To": "a@x.com"})
	not "email.read" in allow_ids(inp)
	not "email.send.recipients_unknown" in approval_ids(inp)
}

# --- SendGrid ---------------------------------------------------------------

test_sendgrid_small_send_is_allowed if {
	inp := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(["a@x.com"], ["b@y.com"]))
	"email.send.small" in allow_ids(inp)
	count(approval_ids(inp)) == 0
	decision(inp) == "allow"
}

test_sendgrid_large_send_needs_comms_approval if {
	inp := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(users(8), ["x1@y.com", "x2@y.com", "x3@y.com"]))
	e := approval_of(inp, "email.send.bulk")
	e.route == "comms-oncall"
	e.risk == "medium"
	e.action == "send_email"
	e.summary.recipients == "11"
	e.summary.provider == "sendgrid"
	e.summary.subject == "Your order"
	e.summary.from == "support@acme.com"
	e.summary.sample == "user1@example.com, user2@example.com, user3@example.com (+8 more)"
	e.reason == "sends to 11 recipients, over your limit of 10 per send"
	not "email.send.small" in allow_ids(inp)
	well_formed(inp)
}

test_sendgrid_counts_every_personalization_and_bcc if {
	body := {"personalizations": [
		{"to": [{"email": a} | some a in users(6)]},
		{"to": [{"email": "z@z.com"}], "bcc": [{"email": a} | some a in ["b1@b.com", "b2@b.com", "b3@b.com", "b4@b.com"]]},
	]}
	"email.send.bulk" in approval_ids(req("sendgrid", "POST", "/v3/mail/send", body))
}

test_email_very_large_send_is_high_risk if {
	inp := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(users(150), []))
	approval_of(inp, "email.send.bulk").risk == "high"
}

test_email_threshold_comes_from_data if {
	inp := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(users(3), []))
	"email.send.bulk" in approval_ids(inp) with data.email.max_recipients as 2
	not "email.send.bulk" in approval_ids(inp) with data.email.max_recipients as 3
}

test_email_list_address_needs_approval if {
	inp := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(["All@Acme.com"], []))
	e := approval_of(inp, "email.send.list_address")
	e.route == "comms-oncall"
	e.risk == "high"
	e.action == "send_email"
	e.summary.list_addresses == "all@acme.com"
	not "email.send.small" in allow_ids(inp)
	well_formed(inp)
}

test_email_list_prefix_exact_and_domain_match if {
	"email.send.list_address" in approval_ids(req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(["list-sales@acme.com"], [])))
	exact := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(["board@acme.com"], []))
	"email.send.list_address" in approval_ids(exact) with data.email.list_addresses as ["board@acme.com"]
	dom := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(["x@lists.acme.com"], []))
	"email.send.list_address" in approval_ids(dom) with data.email.list_domains as ["lists.acme.com"]
}

test_email_ordinary_address_is_not_a_list if {
	inp := req("sendgrid", "POST", "/v3/mail/send", sendgrid_body(["alice@acme.com", "ballast@acme.com"], []))
	not "email.send.list_address" in approval_ids(inp)
}

# --- Postmark ---------------------------------------------------------------

test_postmark_comma_separated_recipients_are_counted if {
	to := concat(", ", users(6))
	cc := "\"Doe, Jane\" <jane@acme.com>, bob@acme.com"
	inp := req("postmark", "POST", "/email", {"From": "support@acme.com", "To": to, "Cc": cc, "Bcc": "c1@x.com,c2@x.com,c3@x.com", "Subject": "Hi"})
	e := approval_of(inp, "email.send.bulk")
	e.summary.recipients == "11"
	e.summary.subject == "Hi"
}

test_postmark_small_send_is_allowed if {
	inp := req("postmark", "POST", "/email", {"From": "support@acme.com", "To": "\"Doe, Jane\" <jane@acme.com>", "Subject": "Hi"})
	"email.send.small" in allow_ids(inp)
	decision(inp) == "allow"
}

test_postmark_batch_counts_all_messages if {
	msgs := [{"To": a, "Subject": "s"} | some a in users(11)]
	"email.send.bulk" in approval_ids(req("postmark", "POST", "/email/batch", msgs))
	few := [{"To": a, "Subject": "s"} | some a in users(2)]
	"email.send.small" in allow_ids(req("postmark", "POST", "/email/batch", few))
}

test_postmark_template_batch_counts_all_messages if {
	msgs := {"Messages": [{"To": a, "TemplateId": 1} | some a in users(12)]}
	"email.send.bulk" in approval_ids(req("postmark", "POST", "/email/batchWithTemplates", msgs))
}

# --- Mailgun ----------------------------------------------------------------

test_mailgun_form_recipients_are_counted if {
	inp := req("mailgun", "POST", "/v3/mg.acme.com/messages", {"from": "a@acme.com", "to": concat(",", users(12)), "subject": "s", "text": "t"})
	approval_of(inp, "email.send.bulk").summary.recipients == "12"
	arr := req("mailgun", "POST", "/v3/mg.acme.com/messages", {"from": "a@acme.com", "to": users(5), "cc": users(11)})
	approval_of(arr, "email.send.bulk").summary.recipients == "11"
}

test_mailgun_small_send_is_allowed if {
	inp := req("mailgun", "POST", "/v3/mg.acme.com/messages", {"from": "a@acme.com", "to": "bob@example.com", "subject": "s"})
	"email.send.small" in allow_ids(inp)
}

test_mailgun_unreadable_body_needs_approval if {
	inp := req("mailgun", "POST", "/v3/mg.acme.com/messages", null)
	e := approval_of(inp, "email.send.recipients_unknown")
	e.summary == {"provider": "mailgun", "recipients": "unknown"}
	well_formed(inp)
}

test_mailgun_domain_listing_is_not_a_send if {
	inp := req("mailgun", "POST", "/v3/domains", {"name": "x.com"})
	count(approval_ids(inp)) == 0
}

# --- SES --------------------------------------------------------------------

test_ses_destination_is_counted if {
	body := {
		"FromEmailAddress": "a@acme.com",
		"Destination": {"ToAddresses": users(4), "CcAddresses": ["c@x.com"], "BccAddresses": [sprintf("b%d@x.com", [i]) | some i in numbers.range(1, 6)]},
		"Content": {"Simple": {"Subject": {"Data": "Quarterly"}, "Body": {"Text": {"Data": "x"}}}},
	}
	e := approval_of(req("ses", "POST", "/v2/email/outbound-emails", body), "email.send.bulk")
	e.summary.recipients == "11"
	e.summary.subject == "Quarterly"
	e.summary.from == "a@acme.com"
}

test_ses_small_send_is_allowed if {
	body := {"Destination": {"ToAddresses": ["bob@example.com"]}}
	"email.send.small" in allow_ids(req("ses", "POST", "/v2/email/outbound-emails", body))
}

test_ses_bulk_entries_are_counted if {
	body := {"BulkEmailEntries": [{"Destination": {"ToAddresses": [a]}} | some a in users(11)]}
	"email.send.bulk" in approval_ids(req("ses", "POST", "/v2/email/outbound-bulk-emails", body))
}

test_email_rules_need_an_email_upstream if {
	inp := req("crm", "POST", "/v3/mail/send", sendgrid_body(users(20), []))
	count(approval_ids(inp)) == 0
}

test_email_odd_recipient_types_are_not_errors if {
	body := {"personalizations": [{"to": "not-a-list"}, 5, {"to": [5, null, {"email": 7}, {"email": "ok@x.com"}]}]}
	inp := req("sendgrid", "POST", "/v3/mail/send", body)
	"email.send.small" in allow_ids(inp)
}

test_email_repeated_addresses_count_once if {
	body := {"Destination": {"ToAddresses": users(6), "BccAddresses": users(6)}}
	inp := req("ses", "POST", "/v2/email/outbound-emails", body)
	not "email.send.bulk" in approval_ids(inp)
	"email.send.small" in allow_ids(inp)
}

# --- address extraction without regular expressions -------------------------

test_email_addresses_are_the_matches_of_the_address_pattern if {
	pattern := `[^ \t\r\n<>(),;:"\[\]]+@[^ \t\r\n<>(),;:"\[\]]+`
	every s in [
		`"Doe, Jane" <Jane@X.com>, bob@y.org`,
		"a@b", "@ab", "ab@", "@", "a@@", "@@a", "x@y@z", "  a@b  ;c@d:e@f",
		"<a@b>(c@d)[e@f]\"g@h\"", "a@b\tc@d\re@f\ng@h", "no address here",
		"ü@é.de, Ünïcode@X.Y", "a@b,,,,c@d", "", "@a@", "a@b@",
	] {
		{lower(a) | some a in regex.find_n(pattern, s, -1)} == data.approvalplane.email_string_addresses(s)
	}
}

# Tests for email.rego (internal domain from data.yaml: example.com).
package hitl.email_test

# (email.allow_internal is tested in tests/test_policies.py, with a changed data.yaml:
# `with data.hitl.… as true` makes rego-cpp run out of memory.)

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

decide(method, host, path, body) := d if {
	a := agent
	r := request(method, host, path, body)
	d := hitl.decision with input.request as r with input.agent as a
}

test_hold_sendgrid_internal if {
	d := decide("POST", "api.sendgrid.com", "/v3/mail/send", {"personalizations": [{"to": [{"email": "ann@example.com"}]}], "subject": "Invoice 42"})
	d.action == "hold"
	d.rule == "email.send"
	d.message == "billing-agent wants to send \"Invoice 42\" to ann@example.com via SendGrid"
}

test_hold_external_recipients if {
	d := decide("POST", "api.sendgrid.com", "/v3/mail/send", {"personalizations": [{"to": [{"email": "ann@example.com"}], "bcc": [{"email": "eve@evil.test"}]}], "subject": "Hi"})
	d.action == "hold"
	d.rule == "email.external"
	d.message == "billing-agent wants to send \"Hi\" to ann@example.com, eve@evil.test via SendGrid — 1 recipient outside your domains: eve@evil.test"
}

test_mailgun_form_fields if {
	d := decide("POST", "api.mailgun.net", "/v3/mg.example.com/messages", {"to": ["Ann <ann@example.com>, carl@x.io", "dan@y.io"], "subject": "Hello"})
	d.rule == "email.external"
	endswith(d.message, "2 recipients outside your domains: carl@x.io, dan@y.io")
}

test_postmark if {
	d := decide("POST", "api.postmarkapp.com", "/email", {"To": "ann@example.com", "Subject": "Reset"})
	d.message == "billing-agent wants to send \"Reset\" to ann@example.com via Postmark"
}

test_gmail_reads_the_raw_message_headers if {
	raw := "VG86IGFubkBleGFtcGxlLmNvbQ0KQ2M6IEJvYiA8Ym9iQG90aGVyLm9yZz4NClN1YmplY3Q6IE51bWJlcnMNCg0KVG86IGhpZGRlbkBldmlsLnRlc3QNCmhlbGxv"
	d := decide("POST", "gmail.googleapis.com", "/gmail/v1/users/me/messages/send", {"raw": raw})
	d.rule == "email.external"
	d.message == "billing-agent wants to send \"Numbers\" to ann@example.com, bob@other.org via Gmail — 1 recipient outside your domains: bob@other.org"
}

test_gmail_garbage_is_still_held if {
	d := decide("POST", "gmail.googleapis.com", "/gmail/v1/users/me/messages/send", {"raw": "!!"})
	d.action == "hold"
	d.message == "billing-agent wants to send an email without a subject to recipients the proxy cannot read via Gmail"
}

test_graph_send_mail if {
	d := decide("POST", "graph.microsoft.com", "/v1.0/me/sendMail", {"message": {"subject": "Lunch", "toRecipients": [{"emailAddress": {"address": "ann@example.com"}}]}})
	d.rule == "email.send"
	d.message == "billing-agent wants to send \"Lunch\" to ann@example.com via Microsoft Graph"
}

test_other_graph_calls_are_not_email if {
	d := decide("POST", "graph.microsoft.com", "/v1.0/me/events", {})
	d.action == "allow"
}

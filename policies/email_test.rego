# Tests for email.rego (internal domain from data.yaml: example.com). More cases:
# tests/test_shipped_policies.py.
package hitl.email_test

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

test_send_internal_is_held if {
	a := agent
	r1 := request("POST", "api.sendgrid.com", "/v3/mail/send", {"personalizations": [{"to": [{"email": "ann@example.com"}]}], "subject": "Invoice 42"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.rule == "email.send"
	d.message == "billing-agent wants to send \"Invoice 42\" to ann@example.com via SendGrid"
}

test_send_outside_is_held_as_external if {
	a := agent
	r1 := request("POST", "api.postmarkapp.com", "/email", {"To": "ann@example.com, eve@evil.test", "Subject": "Hi"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.rule == "email.external"
	endswith(d.message, "1 recipient outside your domains: eve@evil.test")
}

# Tests for hitl.rego: `hitl-proxy policy test` runs every test_ rule of *_test.rego files.
#
# Two regopy 1.5 (rego-cpp) limits shape these tests:
# - replace the input path by path (`with input.request as r with input.agent as a`):
#   `with input as {…}` aborts when the rules under test call builtins on the input;
# - replace with a local variable or a literal: `with input.agent as a`, where
#   `agent` is a rule, silently leaves the result undefined.
package hitl_test

import data.hitl

agent := {"id": "billing-agent", "address": "10.0.0.7"}

request(method, host, path, body) := {
	"method": method, "scheme": "https", "host": host, "port": 443, "path": path,
	"query": {}, "headers": {}, "body": body, "body_text": null, "body_size": 0,
}

test_hold_stripe_charge if {
	a := agent
	r := request("POST", "api.stripe.com", "/v1/charges", {"amount": 5000, "currency": "usd"})
	d := hitl.decision with input.request as r with input.agent as a
	d.action == "hold"
	d.rule == "payments.stripe"
	d.message == "billing-agent wants to charge 50.00 USD via Stripe"
	d.grantable == true
}

test_hold_stripe_form_amount if {
	a := agent
	r := request("POST", "api.stripe.com", "/v1/payment_intents", {"amount": "1999", "currency": "eur"})
	d := hitl.decision with input.request as r with input.agent as a
	d.message == "billing-agent wants to charge 19.99 EUR via Stripe"
}

test_hold_email_names_the_url if {
	r := request("POST", "api.sendgrid.com", "/v3/mail/send", null)
	d := hitl.decision with input.request as r with input.agent as {"id": "anonymous", "address": "10.0.0.8"}
	d.action == "hold"
	d.rule == "email.sendgrid"
	d.message == "an anonymous agent wants to POST https://api.sendgrid.com/v3/mail/send"
}

test_allow_get if {
	a := agent
	r := request("GET", "api.stripe.com", "/v1/charges", null)
	d := hitl.decision with input.request as r with input.agent as a
	d == {"action": "allow", "rule": "default"}
}

test_allow_unknown_host if {
	a := agent
	r := request("POST", "example.com", "/v1/charges", {"amount": 5000, "currency": "usd"})
	d := hitl.decision with input.request as r with input.agent as a
	d == {"action": "allow", "rule": "default"}
}

test_allow_other_github_path if {
	a := agent
	r := request("POST", "api.github.com", "/repos/acme/app/pulls", null)
	d := hitl.decision with input.request as r with input.agent as a
	d.action == "allow"
}

test_intercept_guarded_host if {
	hitl.intercept with input.request as {"method": "CONNECT", "host": "api.stripe.com", "port": 443}
}

test_blind_tunnel_for_other_hosts if {
	not hitl.intercept with input.request as {"method": "CONNECT", "host": "example.com", "port": 443}
}

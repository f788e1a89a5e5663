# Tests for payments.rego (limits from data.yaml: hold above 100, deny above 10000).
# More cases: tests/test_shipped_policies.py.
package hitl.payments_test

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

test_charge_above_threshold_held if {
	a := agent
	r1 := request("POST", "api.stripe.com", "/v1/charges", {"amount": 25000, "currency": "usd"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.rule == "payments.charge"
	d.message == "billing-agent wants to charge 250.00 USD via Stripe"
}

test_above_hard_limit_denied if {
	a := agent
	r1 := request("POST", "api.stripe.com", "/v1/transfers", {"amount": 1500000, "currency": "usd"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "deny"
	d.rule == "payments.over_limit"
}

test_trailing_slash_charge_is_held_like_the_plain_path if {
	a := agent
	r1 := request("POST", "api.stripe.com", "/v1/charges/", {"amount": 25000, "currency": "usd"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.rule == "payments.charge"
}

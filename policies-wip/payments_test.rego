# Tests for payments.rego (limits from data.yaml: hold above 100, deny above 10000).
package hitl.payments_test

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

decide(method, host, path, body) := d if {
	a := agent
	r := request(method, host, path, body)
	d := hitl.decision with input.request as r with input.agent as a
}

test_allow_reads if {
	decide("GET", "api.stripe.com", "/v1/charges", null) == {"action": "allow", "rule": "payments.read"}
}

test_allow_small_charge if {
	d := decide("POST", "api.stripe.com", "/v1/charges", {"amount": 5000, "currency": "usd"})
	d.action == "allow"
	d.rule == "payments.small"
}

test_hold_charge_above_threshold if {
	d := decide("POST", "api.stripe.com", "/v1/charges", {"amount": 25000, "currency": "usd"})
	d.action == "hold"
	d.rule == "payments.charge"
	d.message == "billing-agent wants to charge 250.00 USD via Stripe"
	d.grantable == false
}

test_hold_form_amount if {
	d := decide("POST", "api.stripe.com", "/v1/payment_intents", {"amount": "19999", "currency": "eur"})
	d.message == "billing-agent wants to charge 199.99 EUR via Stripe"
}

test_zero_decimal_currency if {
	d := decide("POST", "api.stripe.com", "/v1/charges", {"amount": 20000, "currency": "jpy"})
	d.action == "hold"
	d.message == "billing-agent wants to charge 20000 JPY via Stripe"
}

test_deny_above_hard_limit if {
	d := decide("POST", "api.stripe.com", "/v1/transfers", {"amount": 1500000, "currency": "usd"})
	d.action == "deny"
	d.rule == "payments.over_limit"
	d.message == "refused: billing-agent may not transfer 15000.00 USD via Stripe (the limit for agents is 10000 USD; use another channel)"
}

test_hold_refund_without_amount if {
	d := decide("POST", "api.stripe.com", "/v1/refunds", {"charge": "ch_1"})
	d.action == "hold"
	d.rule == "payments.refund"
	d.message == "billing-agent wants to refund via Stripe, amount not stated in the request: POST https://api.stripe.com/v1/refunds"
}

test_hold_unreadable_amount if {
	d := decide("POST", "api.stripe.com", "/v1/charges", {"amount": "50 dollars", "currency": "usd"})
	d.action == "hold"
}

test_hold_other_writes if {
	d := decide("DELETE", "api.stripe.com", "/v1/customers/cus_1", null)
	d.action == "hold"
	d.rule == "payments.write"
	d.message == "billing-agent wants to DELETE https://api.stripe.com/v1/customers/cus_1 on Stripe"
}

test_paypal_order if {
	d := decide("POST", "api-m.paypal.com", "/v2/checkout/orders", {"purchase_units": [{"amount": {"currency_code": "USD", "value": "150.00"}}]})
	d.action == "hold"
	d.message == "billing-agent wants to charge 150.00 USD via PayPal"
}

test_paypal_payout_sums_items if {
	d := decide("POST", "api-m.paypal.com", "/v1/payments/payouts", {"items": [
		{"amount": {"currency": "EUR", "value": "60"}},
		{"amount": {"currency": "EUR", "value": "60.50"}},
	]})
	d.message == "billing-agent wants to pay out 120.50 EUR via PayPal"
}

test_paypal_refund_over_limit if {
	d := decide("POST", "api-m.paypal.com", "/v2/payments/captures/C1/refund", {"amount": {"currency_code": "USD", "value": "20000"}})
	d.action == "deny"
}

test_paypal_mixed_currencies_are_held if {
	d := decide("POST", "api-m.paypal.com", "/v1/payments/payouts", {"items": [
		{"amount": {"currency": "EUR", "value": "1"}},
		{"amount": {"currency": "USD", "value": "1"}},
	]})
	d.action == "hold"
	d.rule == "payments.payout"
}

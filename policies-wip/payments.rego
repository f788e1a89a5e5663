# Payments: Stripe and PayPal.
#
#   reads (GET, HEAD, OPTIONS)                      allow
#   a charge, refund, payout or transfer
#     above limits.deny_above                       deny   (the agent reads why)
#     above limits.hold_above                       hold   "billing-agent wants to charge 250.00 USD via Stripe"
#     at or below hold_above                        allow
#     with no amount the policy can read           hold   (e.g. a full refund, confirming an intent)
#   any other write to a payments host              hold
#
# Limits are in the currency's main unit and live in data.yaml (payments.limits).
# Stripe amounts are in the smallest unit (cents) except for zero-decimal currencies;
# PayPal amounts are decimal strings ("10.00").
package hitl.payments

import data.hitl.config
import data.hitl.config.payments as conf
import data.hitl.lib

provider := conf.hosts[input.request.host]

intercept if provider

decision := {"action": "allow", "rule": "payments.read"} if {
	provider
	config.reads[input.request.method]
} else := {
	"action": "deny",
	"message": concat("", [
		"refused: ", lib.who, " may not ", verb, " ", money.text, " via ", service,
		" (the limit for agents is ", limit_text(money.limits.deny_above), "; use another channel)",
	]),
	"rule": "payments.over_limit",
} if {
	money.major > money.limits.deny_above
} else := {
	"action": "hold",
	"message": concat("", [lib.who, " wants to ", verb, " ", money.text, " via ", service]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": concat(".", ["payments", kind]),
} if {
	money.major > money.limits.hold_above
} else := {
	"action": "allow",
	"message": concat("", [lib.who, " may ", verb, " ", money.text, " via ", service, " (within the limit)"]),
	"rule": "payments.small",
} if {
	money
} else := {
	"action": "hold",
	"message": concat("", [
		lib.who, " wants to ", verb, " via ", service, ", amount not stated in the request: ",
		input.request.method, " ", lib.url,
	]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": concat(".", ["payments", kind]),
} if {
	kind
} else := {
	"action": "hold",
	"message": concat("", [lib.who, " wants to ", input.request.method, " ", lib.url, " on ", service]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": "payments.write",
} if {
	config.writes[input.request.method]
	provider
}

service := conf.names[provider]

# charge | refund | payout | transfer, from the path (data: payments.money_paths).
kind := k if {
	input.request.method == "POST"
	some pattern, k in conf.money_paths[provider]
	regex.match(pattern, input.request.path)
}

verb := conf.verbs[kind]

limit_text(n) := concat(" ", [format_int(n, 10), upper(money.currency)])

# {major, currency, text, limits}: the amount in the currency's main unit.
money := {
	"major": major,
	"currency": currency,
	"text": concat(" ", [amount_text, upper(currency)]),
	"limits": object.get(conf.limits, currency, conf.limits["default"]),
} if kind

amount_text := sprintf("%v", [major]) if {
	conf.zero_decimal[currency]
} else := sprintf("%.2f", [major])

# --- Stripe: {"amount": 5000, "currency": "usd"}, often as form data ("5000") ----

currency := lower(input.request.body.currency) if {
	provider == "stripe"
	is_string(input.request.body.currency)
	regex.match("^[A-Za-z]{3}$", input.request.body.currency)
}

major := stripe_amount if {
	provider == "stripe"
	conf.zero_decimal[currency]
} else := stripe_amount / 100 if {
	provider == "stripe"
	currency
}

stripe_amount := input.request.body.amount if {
	is_number(input.request.body.amount)
	input.request.body.amount >= 0
}

stripe_amount := to_number(input.request.body.amount) if {
	is_string(input.request.body.amount)
	regex.match("^[0-9]{1,15}$", input.request.body.amount)
}

# --- PayPal: amounts {"currency_code": "USD", "value": "10.00"} in purchase units,
# payout items (whose key is "currency") or the body itself (captures, refunds) ------

paypal_parts := [u.amount | some u in input.request.body.purchase_units] if {
	is_array(input.request.body.purchase_units)
} else := [i.amount | some i in input.request.body.items] if {
	is_array(input.request.body.items)
} else := [input.request.body.amount] if {
	is_object(input.request.body.amount)
}

paypal_values := [to_number(a.value) |
	some a in paypal_parts
	is_string(a.value)
	regex.match("^[0-9]{1,15}(\\.[0-9]{1,2})?$", a.value)
]

paypal_currencies := {lower(c) |
	some a in paypal_parts
	c := object.get(a, "currency_code", object.get(a, "currency", null))
	is_string(c)
	regex.match("^[A-Za-z]{3}$", c)
}

currency := c if {
	provider == "paypal"
	count(paypal_currencies) == 1
	some c in paypal_currencies
}

major := sum(paypal_values) if {
	provider == "paypal"
	currency
	count(paypal_parts) > 0
	count(paypal_values) == count(paypal_parts)
}

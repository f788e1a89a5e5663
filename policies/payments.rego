# Payments: Stripe and PayPal.
#
#   reads (GET, HEAD, OPTIONS)                      allow  payments.read
#   a charge, refund, payout or transfer
#     above limits.deny_above                       deny   payments.over_limit (the agent reads why)
#     above limits.hold_above                       hold   payments.charge|refund|payout|transfer
#                                                   "billing-agent wants to charge 250.00 USD via Stripe"
#     at or below hold_above                        allow  payments.small
#     with no amount the policy can read            hold   (a full refund, confirming an intent)
#   any other write to a payments host              hold   payments.write
#
# Limits are in the currency's main unit and live in data.yaml (payments.limits), as
# do the paths that move money (payments.paths). Stripe amounts are in the smallest
# unit (cents) except for zero-decimal currencies; PayPal amounts are decimal
# strings ("10.00").
package hitl.payments

import data.hitl.config.payments as conf
import data.hitl.lib

api := lib.service.api

decide(r, a) := {"action": "allow", "rule": "payments.read"} if {
	lib.reading(r)
} else := d if {
	k := kind(r)
	d := by_amount(r, a, k, money(r.body, k))
} else := {
	"action": "hold",
	"message": concat("", [lib.who(a), " wants to ", r.method, " ", lib.url(r), " on ", lib.service.name]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": "payments.write",
} if {
	lib.writing(r)
}

# m: money(…), or {} when the request states no amount the policy can read.
by_amount(r, a, k, m) := {
	"action": "deny",
	"message": concat("", [
		"refused: ", lib.who(a), " may not ", conf.verbs[k], " ", m.text, " via ", lib.service.name,
		" (the limit for agents is ", format_int(m.limits.deny_above, 10), " ", upper(m.currency),
		"; use another channel)",
	]),
	"rule": "payments.over_limit",
} if {
	m.major > m.limits.deny_above
} else := {
	"action": "hold",
	"message": concat("", [lib.who(a), " wants to ", conf.verbs[k], " ", m.text, party(r.body, k), " via ", lib.service.name]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": concat(".", ["payments", k]),
} if {
	m.major > m.limits.hold_above
} else := {
	"action": "allow",
	"message": concat("", [lib.who(a), " may ", conf.verbs[k], " ", m.text, party(r.body, k), " via ", lib.service.name, " (within the limit)"]),
	"rule": "payments.small",
} if {
	m.major
} else := {
	"action": "hold",
	"message": concat("", [
		lib.who(a), " wants to ", conf.verbs[k], party(r.body, k), " via ", lib.service.name,
		"; the request states no amount the policy can read: ", r.method, " ", lib.url(r),
	]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": concat(".", ["payments", k]),
}

# charge | refund | payout | transfer, from the path: payments.paths lists exact
# paths, and paths whose next-to-last segment (an id) is written `*`.
kind(r) := k if {
	r.method == "POST"
	k := conf.paths[api][r.path]
} else := k if {
	r.method == "POST"
	parts := split(r.path, "/")
	n := count(parts)
	n > 3
	k := conf.paths[api][concat("/", array.concat(array.slice(parts, 0, n - 2), ["*", parts[n - 1]]))]
}

# {major, currency, text, limits}: the amount in the currency's main unit (dollars,
# not cents), or {} when there is none the policy can read.
money(body, k) := m if {
	c := currency(body)
	major := amount(body, c)
	m := {
		"major": major,
		"currency": c,
		"text": concat(" ", [amount_text(major, c), upper(c)]),
		"limits": limits(c),
	}
} else := {}

limits(c) := l if {
	l := conf.limits[c]
} else := conf.limits["default"]

amount_text(major, c) := format_int(major, 10) if {
	conf.zero_decimal[c]
} else := sprintf("%.2f", [major])

# Who or what the money goes to or comes from, when the request names it.
party(body, k) := concat("", [" for customer ", body.customer]) if {
	k == "charge"
	is_string(body.customer)
} else := concat("", [" to ", body.destination]) if {
	is_string(body.destination)
} else := concat("", [" of charge ", body.charge]) if {
	is_string(body.charge)
} else := concat("", [" of payment ", body.payment_intent]) if {
	is_string(body.payment_intent)
} else := ""

is_currency(c) if {
	is_string(c)
	regex.match(`^[A-Za-z]{3}$`, c)
}

# --- Stripe: {"amount": 5000, "currency": "usd"}, often as form data ("5000") ----

currency(body) := lower(body.currency) if {
	api == "stripe"
	is_currency(body.currency)
} else := c if {
	api == "paypal"
	cs := paypal_currencies(body)
	count(cs) == 1
	some c in cs
}

amount(body, c) := stripe_amount(body.amount) if {
	api == "stripe"
	conf.zero_decimal[c]
} else := stripe_amount(body.amount) / 100 if {
	api == "stripe"
} else := sum(values) if {
	api == "paypal"
	parts := paypal_parts(body)
	values := paypal_values(parts)
	count(parts) > 0
	count(values) == count(parts)
}

stripe_amount(x) := x if {
	is_number(x)
	x >= 0
} else := to_number(x) if {
	is_string(x)
	regex.match(`^[0-9]{1,15}$`, x)
}

# --- PayPal: amounts {"currency_code": "USD", "value": "10.00"} in purchase units,
# payout items (whose key is "currency") or the body itself (captures, refunds) ------

paypal_parts(body) := [u.amount | some u in body.purchase_units] if {
	is_array(body.purchase_units)
} else := [i.amount | some i in body.items] if {
	is_array(body.items)
} else := [body.amount] if {
	is_object(body.amount)
} else := []

paypal_values(parts) := [to_number(p.value) |
	some p in parts
	is_string(p.value)
	regex.match(`^[0-9]{1,15}(\.[0-9]{1,2})?$`, p.value)
]

paypal_currencies(body) := {lower(c) |
	some p in paypal_parts(body)
	c := object.get(p, "currency_code", object.get(p, "currency", null))
	is_currency(c)
}

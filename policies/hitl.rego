# hitl-proxy: the default policy.
#
# Every request an agent sends through the proxy is evaluated here. The `decision` rule
# answers one of:
#
#   allow  forward it now
#   deny   refuse it (the agent reads `message`)
#   hold   park it until a human approves or rejects it (the reviewer reads `message`)
#
# This policy holds writes to the services listed in data.yaml (APIs that send money,
# email or public messages on someone's behalf) and allows everything else. To guard
# another service, add a row there; to change what happens, edit the rules below.
#
# The input is described in DESIGN.md §5: input.request.{method, scheme, host, port,
# path, query, headers, body, body_text, body_size}, input.agent.{id, address},
# input.time.{unix, iso}. Hosts arrive lower-cased without a trailing dot, methods
# upper-cased, secret headers as "[redacted]".
#
# Builtin errors (to_number("abc"), …) are errors here, not "undefined": the request is
# then denied with policy_error. Check the type of agent-supplied values before
# converting them.
package hitl

# The methods that change something: held unless a service lists its own `methods`.
writes := ["POST", "PUT", "PATCH", "DELETE"]

# The data.yaml row for this request's host, if any.
service := data.hitl.services[input.request.host]

# Every request not held is allowed.
default decision := {"action": "allow", "rule": "default"}

decision := {
	"action": "hold",
	"message": message,
	"reviewers": [],
	"grantable": true,
	"rule": service.rule,
} if held

held if {
	input.request.method in object.get(service, "methods", writes)
	regex.match(object.get(service, "path", "^/"), input.request.path)
}

# TLS interception (asked at CONNECT, with only method, host and port): only for hosts
# this policy may hold, so that all other HTTPS traffic stays a blind tunnel that the
# proxy never decrypts.
default intercept := false

intercept if service

# --- What the reviewer reads -------------------------------------------------------
#
# Strings are joined with concat: regopy's sprintf quotes string arguments that come
# from other builtins (upper, concat, …) when it has more than one argument.

message := concat(" ", [who, "wants to charge", money, "via", service.name]) if {
	service.charges
	money
} else := concat(" ", [who, "wants to", input.request.method, url])

who := "an anonymous agent" if {
	input.agent.id == "anonymous"
} else := input.agent.id

url := concat("", [input.request.scheme, "://", authority, input.request.path])

authority := input.request.host if {
	{"http": 80, "https": 443}[input.request.scheme] == input.request.port
} else := concat(":", [input.request.host, format_int(input.request.port, 10)])

# "50.00 USD" from a body with `amount` (in the currency's smallest unit, as Stripe
# takes it) and `currency`; undefined when the body has no usable amount.
money := concat(" ", [amount_text, upper(input.request.body.currency)]) if {
	is_string(input.request.body.currency)
	regex.match("^[A-Za-z]{3}$", input.request.body.currency)
	amount_text
}

amount := input.request.body.amount if is_number(input.request.body.amount)

amount := to_number(input.request.body.amount) if {
	is_string(input.request.body.amount)
	regex.match("^[0-9]{1,15}$", input.request.body.amount)
}

amount_text := sprintf("%v", [amount]) if {
	lower(input.request.body.currency) in zero_decimal
} else := sprintf("%.2f", [amount / 100])

# Currencies without minor units (Stripe's list). An array, not a set: regopy builds a
# set literal again on every evaluation, at a cost of about 10 µs an element.
zero_decimal := [
	"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
	"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
]

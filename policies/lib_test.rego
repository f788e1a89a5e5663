# Helpers for the policy tests, and tests of lib.rego and main.rego.
#
# `hitl-proxy policy test` runs every test_ rule of the *_test.rego files. regopy 1.5
# (rego-cpp) limits shape these tests; the big table of sample requests lives in
# tests/test_shipped_policies.py instead (each `hitl.decision with …` here adds
# about 50 MB to the test bundle):
# - replace the input path by path, always both (`with input.request as r with
#   input.agent as a`): `with input as {…}` aborts the process, and leaving out
#   input.agent made rego-cpp grow to many GB building the tests;
# - replace with a local variable or a literal: `with input.agent as a`, where `a`
#   is a rule, silently leaves the result undefined;
# - no `with data.hitl… as …`: change data.yaml in a Python test instead;
# - `with` inside a helper function crashes rego-cpp: write it in each test.
package hitl.lib_test

import data.hitl
import data.hitl.lib

agent := {"id": "billing-agent", "address": "10.0.0.7"}

request(method, host, path, body) := {
	"method": method, "scheme": "https", "host": host, "port": 443, "path": path,
	"query": {}, "headers": {}, "body": body, "body_text": null, "body_size": 0,
}

test_who if {
	a := agent
	lib.who({"id": "billing-agent"}) == "billing-agent"
	lib.who({"id": "anonymous"}) == "an anonymous agent"
}

test_url if {
	a := agent
	lib.url(request("POST", "api.x.com", "/2/tweets", null)) == "https://api.x.com/2/tweets"
	lib.url(object.union(request("POST", "api.x.com", "/2/tweets", null), {"scheme": "http", "port": 8080})) == "http://api.x.com:8080/2/tweets"
}

test_route_path_drops_one_trailing_slash if {
	a := agent
	lib.route_path("/v1/charges/") == "/v1/charges"
	lib.route_path("/v1/charges") == "/v1/charges"
	lib.route_path("/") == "/"
}

test_quote_shortens_long_texts if {
	a := agent
	endswith(lib.quote(concat("", [x | some _ in numbers.range(1, 600); x := "a"])), "…\" (600 characters)")
}

test_unlisted_hosts_are_allowed if {
	a := agent
	r1 := request("GET", "example.com", "/", null)
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d1 == {"action": "allow", "rule": "default"}
}

test_sensitive_writes_are_held if {
	a := agent
	r1 := request("POST", "api.twilio.com", "/2010-04-01/Accounts/AC1/Messages.json", null)
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.rule == "sensitive.write"
	d.message == "billing-agent wants to POST https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json on Twilio"
}

test_intercept_only_listed_hosts if {
	a := agent
	hitl.intercept with input.request as {"method": "CONNECT", "host": "api.stripe.com", "port": 443}
	hitl.intercept with input.request as {"method": "CONNECT", "host": "abc.supabase.co", "port": 443}
	not hitl.intercept with input.request as {"method": "CONNECT", "host": "example.com", "port": 443}
}

# Helpers for the policy tests, and tests of lib.rego.
#
# `hitl-proxy policy test` runs every test_ rule of the *_test.rego files. Two regopy
# (rego-cpp) limits shape these tests:
# - replace the input path by path (`with input.request as r with input.agent as a`):
#   `with input as {…}` aborts the process when the rules under test call builtins;
# - replace with a local variable or a literal: `with input.agent as a`, where `a`
#   is a rule, silently leaves the result undefined.
package hitl.lib_test

import data.hitl.lib

agent := {"id": "billing-agent", "address": "10.0.0.7"}

anonymous := {"id": "anonymous", "address": "10.0.0.8"}

request(method, host, path, body) := {
	"method": method, "scheme": "https", "host": host, "port": 443, "path": path,
	"query": {}, "headers": {}, "body": body, "body_text": null, "body_size": 0,
}

test_who_names_the_agent if {
	a := agent
	lib.who == "billing-agent" with input.agent as a
}

test_who_anonymous if {
	a := anonymous
	lib.who == "an anonymous agent" with input.agent as a
}

test_url_default_port if {
	r := request("POST", "api.x.com", "/2/tweets", null)
	lib.url == "https://api.x.com/2/tweets" with input.request as r
}

test_url_other_port if {
	r := object.union(request("POST", "api.x.com", "/2/tweets", null), {"scheme": "http", "port": 8080})
	lib.url == "http://api.x.com:8080/2/tweets" with input.request as r
}

test_parent_domain if {
	r := request("GET", "abc.supabase.co", "/", null)
	lib.parent_domain == "supabase.co" with input.request as r
}

test_quote_shortens_long_texts if {
	q := lib.quote(concat("", [x | some _ in numbers.range(1, 600); x := "a"]))
	endswith(q, "…\" (600 characters)")
}

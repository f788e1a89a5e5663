# Tests for main.rego: the composition and the safe default.
package hitl.main_test

# (deny > hold > allow among use cases is tested in tests/test_policies.py, with an
# extra use case: `with data.hitl.candidates as …` makes rego-cpp run out of memory.)

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

test_allow_reads_of_unknown_hosts if {
	a := agent
	r := request("GET", "example.com", "/", null)
	d := hitl.decision with input.request as r with input.agent as a
	d == {"action": "allow", "rule": "default"}
}

test_allow_writes_to_unlisted_hosts if {
	a := agent
	r := request("POST", "example.com", "/v1/charges", {"amount": 5000000, "currency": "usd"})
	d := hitl.decision with input.request as r with input.agent as a
	d == {"action": "allow", "rule": "default"}
}

test_hold_unknown_writes_to_sensitive_hosts if {
	a := agent
	r := request("POST", "api.twilio.com", "/2010-04-01/Accounts/AC1/Messages.json", null)
	d := hitl.decision with input.request as r with input.agent as a
	d.action == "hold"
	d.rule == "sensitive.write"
	d.message == "billing-agent wants to POST https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json on Twilio"
}

test_reads_of_sensitive_hosts_are_allowed if {
	a := agent
	r := request("GET", "api.twilio.com", "/2010-04-01/Accounts", null)
	d := hitl.decision with input.request as r with input.agent as a
	d.action == "allow"
}

test_a_use_case_overrides_the_default if {
	a := agent
	r := request("POST", "api.sendgrid.com", "/v3/mail/send", {"personalizations": [{"to": [{"email": "ann@example.com"}]}], "subject": "Hi"})
	d := hitl.decision with input.request as r with input.agent as a
	d.rule == "email.send"
}

test_connect_is_allowed if {
	a := agent
	r := {"method": "CONNECT", "host": "api.stripe.com", "port": 443}
	d := hitl.decision with input.request as r with input.agent as a
	d.action == "allow"
}

test_intercept_hosts_that_may_be_held if {
	hitl.intercept with input.request as {"method": "CONNECT", "host": "api.stripe.com", "port": 443}
	hitl.intercept with input.request as {"method": "CONNECT", "host": "api.sendgrid.com", "port": 443}
	hitl.intercept with input.request as {"method": "CONNECT", "host": "abc.supabase.co", "port": 443}
	hitl.intercept with input.request as {"method": "CONNECT", "host": "slack.com", "port": 443}
	hitl.intercept with input.request as {"method": "CONNECT", "host": "api.twilio.com", "port": 443}
}

test_blind_tunnel_for_other_hosts if {
	not hitl.intercept with input.request as {"method": "CONNECT", "host": "example.com", "port": 443}
	not hitl.intercept with input.request as {"method": "CONNECT", "host": "files.slack.com", "port": 443}
}

# Tests for posting.rego (brand accounts from data.yaml). More cases:
# tests/test_shipped_policies.py.
package hitl.posting_test

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

test_post_held_with_the_text if {
	a := agent
	r1 := request("POST", "api.x.com", "/2/tweets", {"text": "We are live!"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.rule == "posting.post"
	d.message == "billing-agent wants to post on X: \"We are live!\""
}

test_brand_account_needs_two_approvals if {
	a := agent
	r1 := request("POST", "api.github.com", "/repos/acme/app/issues/12/comments", {"body": "Fixed"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.rule == "posting.brand"
	d.approvals == 2
}

test_trailing_slash_post_is_held_like_the_plain_path if {
	a := agent
	r1 := request("POST", "slack.com", "/api/chat.postMessage/", {"channel": "C1", "text": "hi"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.rule == "posting.post"
}

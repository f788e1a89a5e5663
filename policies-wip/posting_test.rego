# Tests for posting.rego (brand accounts from data.yaml).
package hitl.posting_test

import data.hitl
import data.hitl.lib_test.request

decide_as(id, method, host, path, body) := d if {
	a := {"id": id, "address": "10.0.0.9"}
	r := request(method, host, path, body)
	d := hitl.decision with input.request as r with input.agent as a
}

decide(method, host, path, body) := decide_as("billing-agent", method, host, path, body)

test_x_post_held_with_its_text if {
	d := decide("POST", "api.x.com", "/2/tweets", {"text": "We are live!"})
	d.action == "hold"
	d.rule == "posting.post"
	not d.approvals
	d.message == "billing-agent wants to post on X: \"We are live!\""
}

test_brand_agent_needs_two_approvals if {
	d := decide_as("marketing-agent", "POST", "api.x.com", "/2/tweets", {"text": "News"})
	d.rule == "posting.brand"
	d.approvals == 2
}

test_linkedin_brand_author if {
	d := decide("POST", "api.linkedin.com", "/rest/posts", {"author": "urn:li:organization:1000", "commentary": "Hiring!"})
	d.approvals == 2
	d.message == "billing-agent wants to post on LinkedIn: \"Hiring!\" (brand account urn:li:organization:1000)"
}

test_slack_post if {
	d := decide("POST", "slack.com", "/api/chat.postMessage", {"channel": "C1", "text": "hi"})
	d.message == "billing-agent wants to post in Slack channel C1: \"hi\""
}

test_slack_reads_allowed if {
	decide("POST", "slack.com", "/api/conversations.list", null).action == "allow"
}

test_github_comment if {
	d := decide("POST", "api.github.com", "/repos/bob/app/issues/12/comments", {"body": "LGTM"})
	d.rule == "posting.post"
	d.message == "billing-agent wants to comment on GitHub bob/app#12: \"LGTM\""
}

test_github_brand_org if {
	decide("POST", "api.github.com", "/repos/acme/app/pulls/3/reviews", {"body": "ok"}).approvals == 2
}

test_other_github_writes_allowed if {
	decide("POST", "api.github.com", "/repos/acme/app/pulls", {}).action == "allow"
}

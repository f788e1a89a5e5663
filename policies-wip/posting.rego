# Public posting: X, LinkedIn, Slack chat.postMessage, GitHub issue and PR comments.
#
#   a post (posting.post_paths)              hold          rule posting.post
#   … from a brand account                   hold, 2 approvals (posting.brand_approvals)
#                                                          rule posting.brand
#   anything else on these hosts             not this policy's business (main decides)
#
# Brand accounts (posting.brand_accounts) are matched against the agent id, the
# LinkedIn author, the GitHub owner and the Slack channel. The reviewer reads the text:
#   billing-agent wants to post on X: "We are live!"
package hitl.posting

import data.hitl.config.posting as conf
import data.hitl.lib

service := conf.hosts[input.request.host]

intercept if service

posting if {
	input.request.method != "GET"
	regex.match(conf.post_paths[service], input.request.path)
}

# Slack's Web API also takes GET, with the arguments in the query string.
posting if {
	service == "slack"
	input.request.method == "GET"
	regex.match(conf.post_paths.slack, input.request.path)
}

decision := {
	"action": "hold",
	"message": concat("", [summary, " (brand account ", brand, ")"]),
	"reviewers": conf.reviewers,
	"approvals": conf.brand_approvals,
	"grantable": false,
	"rule": "posting.brand",
} if {
	posting
	brand
} else := {
	"action": "hold",
	"message": summary,
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "posting.post",
} if {
	posting
}

summary := concat("", [lib.who, " wants to ", where, ": ", text_shown])

text_shown := lib.quote(text) if is_string(text) else := "(no text the proxy can read)"

# The brand accounts this post is made from, if any.
brand := concat(", ", [b | some b in accounts; conf.brand_accounts[b]]) if {
	some b in accounts
	conf.brand_accounts[b]
}

# --- Where each service keeps the text and the account ------------------------

accounts contains input.agent.id

accounts contains a if a := account

# X: {"text"} (v2), form `status` (v1.1)
where := "post on X" if service == "x"

text := input.request.body.text if service == "x"

text := lib.field("status") if service == "x"

# LinkedIn: /rest/posts {"author", "commentary"}; /v2/ugcPosts {"author", "specificContent":
# {"com.linkedin.ugc.ShareContent": {"shareCommentary": {"text"}}}}
where := "post on LinkedIn" if service == "linkedin"

account := input.request.body.author if service == "linkedin"

text := input.request.body.commentary if service == "linkedin"

text := input.request.body.specificContent["com.linkedin.ugc.ShareContent"].shareCommentary.text if {
	service == "linkedin"
}

# Slack: channel and text, as JSON, form data or query arguments.
where := concat(" ", ["post in Slack channel", account]) if {
	service == "slack"
	account
} else := "post in Slack" if service == "slack"

account := lib.field("channel") if service == "slack"

text := lib.field("text") if service == "slack"

# GitHub: {"body"} on /repos/OWNER/REPO/issues/N/comments and friends.
where := concat("", ["comment on GitHub ", repo, thread]) if service == "github"

repo := concat("/", [parts[2], parts[3]]) if {
	service == "github"
	parts := split(input.request.path, "/")
}

account := split(input.request.path, "/")[2] if service == "github"

thread := concat("", ["#", m[1]]) if {
	service == "github"
	some m in regex.find_all_string_submatch_n(`/(?:issues|pulls)/([0-9]+)/`, input.request.path, 1)
} else := ""

text := input.request.body.body if service == "github"

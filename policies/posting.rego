# Public posting: X, LinkedIn, Slack chat.postMessage, GitHub issue and PR comments.
#
#   a post (posting.post_paths, GitHub comments)   hold          rule posting.post
#   … from a brand account                         hold, posting.brand_approvals approvals
#                                                                rule posting.brand
#   anything else on these hosts                   not this policy's business: main's
#                                                  safe default allows it
#
# Brand accounts (posting.brand_accounts) are matched against the agent id, the
# LinkedIn author, the GitHub owner and the Slack channel. The reviewer reads the text:
#   billing-agent wants to post on X: "We are live!"
package hitl.posting

import data.hitl.config.posting as conf
import data.hitl.lib

api := lib.service.api

decide(r, a) := d if {
	posting(r)
	summary := concat("", [lib.who(a), " wants to ", where(r), ": ", text_shown(r)])
	d := by_account(summary, brand(r, a))
}

by_account(summary, brand) := {
	"action": "hold",
	"message": concat("", [summary, " (from brand account ", brand, ": ", format_int(conf.brand_approvals, 10), " approvals needed)"]),
	"reviewers": conf.reviewers,
	"approvals": conf.brand_approvals,
	"grantable": false,
	"rule": "posting.brand",
} if {
	brand != ""
} else := {
	"action": "hold",
	"message": summary,
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "posting.post",
}

posting(r) if {
	r.method in ["POST", "PUT", "PATCH"]
	conf.post_paths[api][r.path]
}

# Slack's Web API also takes GET, with the arguments in the query string.
posting(r) if {
	api == "slack"
	r.method == "GET"
	conf.post_paths.slack[r.path]
}

# GitHub: /repos/OWNER/REPO/{issues,pulls}/N/comments, …/pulls/N/reviews, and edits
# of a comment: /repos/OWNER/REPO/{issues,pulls}/comments/ID.
posting(r) if {
	api == "github"
	r.method in ["POST", "PATCH"]
	p := split(r.path, "/")
	count(p) == 7
	p[1] == "repos"
	p[4] in ["issues", "pulls"]
	github_comment(p[4], p[5], p[6])
}

github_comment(_, _, "comments")

github_comment(_, "comments", _)

github_comment("pulls", _, "reviews")

text_shown(r) := lib.quote(t) if {
	t := text(r)
	is_string(t)
} else := "(no text the proxy can read)"

# The brand account this post is made from: the account the request names, else the
# agent's own id; "" when neither is a brand account.
brand(r, a) := x if {
	x := account(r)
	conf.brand_accounts[x]
} else := a.id if {
	conf.brand_accounts[a.id]
} else := ""

# --- Where each service keeps the text and the account ------------------------
#
# X: {"text"} (v2), form `status` (v1.1)
# LinkedIn: /rest/posts {"author", "commentary"}; /v2/ugcPosts {"author", "specificContent":
#   {"com.linkedin.ugc.ShareContent": {"shareCommentary": {"text"}}}}
# Slack: channel and text, as JSON, form data or query arguments.
# GitHub: {"body"} on the comment paths above; the account is the owner.

where(r) := "post on X" if {
	api == "x"
} else := "post on LinkedIn" if {
	api == "linkedin"
} else := concat(" ", ["post in Slack channel", c]) if {
	api == "slack"
	c := lib.field(r, "channel")
} else := "post in Slack" if {
	api == "slack"
} else := concat("", ["comment on GitHub ", p[2], "/", p[3], thread]) if {
	api == "github"
	p := split(r.path, "/")
	thread := github_thread(p[5])
}

text(r) := t if {
	api == "x"
	t := r.body.text
} else := t if {
	api == "x"
	t := lib.field(r, "status")
} else := t if {
	api == "linkedin"
	t := r.body.commentary
} else := t if {
	api == "linkedin"
	t := r.body.specificContent["com.linkedin.ugc.ShareContent"].shareCommentary.text
} else := t if {
	api == "slack"
	t := lib.field(r, "text")
} else := t if {
	api == "github"
	t := r.body.body
}

account(r) := x if {
	api == "linkedin"
	x := r.body.author
} else := x if {
	api == "slack"
	x := lib.field(r, "channel")
} else := x if {
	api == "github"
	x := split(r.path, "/")[2]
}

github_thread(n) := "" if n == "comments" else := concat("", [" #", n])

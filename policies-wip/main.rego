# hitl-proxy: the main policy, composing the use cases.
#
# Every request an agent sends through the proxy is evaluated against `decision`,
# which answers allow, deny or hold (DESIGN.md §5). The use cases live in their own
# files, each in its own package with its own `decision` rule (undefined when the
# request is none of its business):
#
#   email.rego     data.hitl.email      mail sent through SendGrid, Mailgun, Postmark, Gmail, Graph
#   payments.rego  data.hitl.payments   Stripe and PayPal charges, refunds, payouts, transfers
#   database.rego  data.hitl.database   PostgREST / Supabase, Hasura, {"sql": ...} gateways
#   posting.rego   data.hitl.posting    X, LinkedIn, Slack, GitHub comments
#
# Composition. The use cases' answers are gathered in the set `candidates`; the
# strictest wins: any deny, else a hold, else an allow. (Two complete `decision`
# rules matching the same request would be a conflict, i.e. a policy error, which is
# why the use cases do not define data.hitl.decision themselves.) When no use case
# answers, the safe default applies:
#
#   1. reads (GET, HEAD, OPTIONS) are allowed;
#   2. writes to a host listed in data.hitl.config.sensitive_hosts are held;
#   3. everything else is allowed (rule "default").
#
# To add a use case: write `package hitl.yours` with a `decision` rule and an
# `intercept` rule for its hosts, and add one `candidates contains` line and one
# `intercept if` line below. Tables (hosts, limits, domains) go in data.yaml.
package hitl

import data.hitl.config
import data.hitl.lib

candidates contains d if d := data.hitl.email.decision

candidates contains d if d := data.hitl.payments.decision

candidates contains d if d := data.hitl.database.decision

candidates contains d if d := data.hitl.posting.decision

# Comprehensions rather than `some d in candidates` in the rule body: two use cases
# holding the same request must not make two values for `decision` (a conflict).
decision := denies[0] if {
	denies := [d | some d in candidates; d.action == "deny"]
	count(denies) > 0
} else := holds[0] if {
	holds := [d | some d in candidates; d.action == "hold"]
	count(holds) > 0
} else := allows[0] if {
	allows := [d | some d in candidates]
	count(allows) > 0
} else := fallback

# --- The safe default ----------------------------------------------------------

fallback := {
	"action": "hold",
	"message": concat(" ", [lib.who, "wants to", input.request.method, lib.url, "on", service_name]),
	"grantable": true,
	"rule": "sensitive.write",
} if {
	config.writes[input.request.method]
	service_name := config.sensitive_hosts[input.request.host]
} else := {"action": "allow", "rule": "default"}

# --- TLS interception ----------------------------------------------------------
#
# Asked at CONNECT, with only method, host and port: intercept only the hosts a
# policy may hold, so that all other HTTPS traffic stays a blind tunnel that the
# proxy never decrypts.

default intercept := false

intercept if config.sensitive_hosts[input.request.host]

intercept if data.hitl.email.intercept

intercept if data.hitl.payments.intercept

intercept if data.hitl.database.intercept

intercept if data.hitl.posting.intercept

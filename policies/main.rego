# hitl-proxy: the main policy, composing the use cases.
#
# Every request an agent sends through the proxy is evaluated against `decision`,
# which answers allow, deny or hold (docs/policies.md). The proxy asks `intercept` at
# CONNECT, to know whether to decrypt a tunnel at all.
#
# data.yaml lists the hosts the policies look at (config.hosts, config.domains), each
# with its use case. The use cases live in their own files and packages:
#
#   email.rego     data.hitl.email      mail sent through SendGrid, Mailgun, Postmark, Gmail, Graph
#   payments.rego  data.hitl.payments   Stripe and PayPal charges, refunds, payouts, transfers
#   database.rego  data.hitl.database   PostgREST / Supabase, Hasura, {"sql": ...} gateways
#   posting.rego   data.hitl.posting    X, LinkedIn, Slack, GitHub comments
#   mcp.rego       data.hitl.mcp        MCP tool calls (JSON-RPC), on any host
#
# Each has a function `decide(r, a)` of the request and the agent (functions, not
# rules: see lib.rego), undefined when the request is none of its business.
# This file asks mcp.rego first when the request is an MCP message (input.mcp), then
# only the use case of the request's host; then the safe default:
#
#   0. an MCP call that mcp.rego decides (a dangerous tool, a malformed body): its answer;
#      a write whose body is too large for the policy to read (past
#      policy.max_input_body_bytes: body null, body_truncated true), on any host: hold
#      (rule "body.unread"), or padding a body would hide what it says;
#   1. a host that is not listed: allow (rule "default"), after one table lookup;
#   2. reads (config.reads: GET, HEAD, OPTIONS) and CONNECT: allow;
#   3. writes (config.writes) to a host whose use case is in config.hold_writes: hold
#      (rule "sensitive.write");
#   4. the rest: allow (rule "default").
#
# To add a use case: write `package hitl.yours` with `decide(r, a)`, list its hosts
# in data.yaml with `use: yours`, and add one `else := d if` branch below.
package hitl

import data.hitl.config
import data.hitl.lib

default decision := {"action": "allow", "rule": "default"}

decision := d if {
	d := data.hitl.mcp.decide(mcp, agent)
} else := d if {
	input.request.body_truncated == true
	lib.writing(request)
	d := {
		"action": "hold", "rule": "body.unread",
		"message": concat("", [lib.who(agent), " wants to ", request.method, " ", lib.url(request),
			" with a body of ", format_int(input.request.body_size, 10),
			" bytes, too large for the policy to read"]),
	}
} else := d if {
	lib.service.use != "none"
	d := by_use(lib.service.use, request, agent)
}

# What the use cases read of the input, field by field. The proxy hands a policy only
# the fields it names (headers and the clock are never read here, so never passed);
# passing `input` whole would pass everything, on every request.
request := {
	"method": input.request.method, "scheme": input.request.scheme,
	"host": input.request.host, "port": input.request.port,
	"path": lib.route_path(input.request.path), "query": input.request.query,
	"body": input.request.body, "body_text": input.request.body_text,
}

agent := {"id": input.agent.id}

# One call of an MCP message (undefined for other requests); id and session are not
# read, so identical calls share the decision cache.
mcp := {
	"method": input.mcp.method, "tool": input.mcp.tool,
	"arguments": input.mcp.arguments, "error": input.mcp.error,
}

by_use(use, r, a) := data.hitl.email.decide(r, a) if {
	use == "email"
} else := data.hitl.payments.decide(r, a) if {
	use == "payments"
} else := data.hitl.database.decide(r, a) if {
	use == "database"
} else := data.hitl.posting.decide(r, a) if {
	use == "posting"
} else := {
	"action": "hold",
	"message": concat("", [lib.who(a), " wants to ", r.method, " ", lib.url(r), " on ", lib.service.name]),
	"grantable": true,
	"rule": "sensitive.write",
} if {
	lib.writing(r)
	config.hold_writes[use]
} else := {"action": "allow", "rule": "default"}

# TLS interception, asked at CONNECT with only method, host and port: only the
# listed hosts, which a policy may hold. All other HTTPS traffic stays a blind
# tunnel that the proxy never decrypts.
default intercept := false

intercept if lib.service.use != "none"

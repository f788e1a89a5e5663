# MCP: tool calls that agents make over MCP's streamable-HTTP transport, on any server.
#
# The proxy reads every JSON-RPC 2.0 POST and gives the policy `input.mcp`:
# {method, tool, arguments, id, session, error}. A batch is judged call by call and the
# strictest answer wins, so a dangerous call cannot hide among safe ones.
#
#   a body that claims JSON-RPC but cannot be read    deny   rule mcp.malformed
#   tools/call of a tool named like sending, paying,  hold   rule mcp.<kind>: mcp.send,
#     deleting, executing or posting                         mcp.pay, mcp.delete,
#                                                            mcp.execute, mcp.post
#   everything else (initialize, tools/list,          not decided here: main.rego's
#     notifications, read-only tools)                 rules for the host (usually allow)
#
# How a tool name is read (tables in data.yaml, mcp.verbs and mcp.objects): its words
# (send_email, sendEmail, gmail.send-email → send, email); the first word that is a
# verb decides: a write verb holds as its kind, a read verb (get, list, search …) lets
# it through; with no verb at all, the last word decides (create_payment → payment →
# pay; run_sql → run → execute). The reviewer reads who calls what, to whom, about what:
#   support-agent wants to call send_email to ceo@example.com: 'Quarterly numbers'
#
# For HTTPS MCP servers reached through HTTPS_PROXY, list the host in data.yaml `hosts`
# with `use: mcp`, so its tunnel is intercepted and its calls are seen at all. Through
# plain HTTP or a reverse route (proxy.routes) every MCP server is covered.
package hitl.mcp

import data.hitl.config.mcp as conf
import data.hitl.lib

decide(m, a) := {
	"action": "deny",
	"message": concat("", [
		lib.who(a), " sent a JSON-RPC body the proxy cannot read (", m.error,
		"); it was not forwarded",
	]),
	"rule": "mcp.malformed",
} if {
	is_string(m.error)
} else := {
	"action": "hold",
	"message": message(m, a),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": concat("", ["mcp.", k]),
} if {
	m.method == "tools/call"
	k := kind(m.tool)
}

# The kind of a tool (send, pay, delete, execute, post); undefined for a harmless one.
kind(tool) := k if {
	ws := words(tool)
	verbs := [v | some w in ws; v := conf.verbs[w]]
	k := by_words(verbs, ws)
	k != "read"
}

by_words(verbs, ws) := verbs[0] if {
	count(verbs) > 0
} else := conf.objects[ws[count(ws) - 1]]

# "sendEmail", "send_email", "gmail.send-email" → ["send", "email"] (with "gmail").
words(tool) := [lower(x) | some x in regex.find_n(`[A-Z]?[a-z0-9]+|[A-Z]+`, tool, -1)]

# --- What the reviewer reads -----------------------------------------------------

message(m, a) := concat("", [lib.who(a), " wants to call ", m.tool, target(m.arguments), gist(m.arguments)])

target(args) := concat("", [" to ", ts[0]]) if {
	ts := [t | some f in conf.target_fields; t := text(args[f])]
	count(ts) > 0
} else := ""

gist(args) := concat("", [": ", quote(gs[0])]) if {
	gs := [g | some f in conf.gist_fields; g := text(args[f])]
	count(gs) > 0
} else := ""

text(x) := x if {
	is_string(x)
	x != ""
} else := concat(", ", x) if {
	is_array(x)
	count(x) > 0
	every y in x { is_string(y) }
} else := json.marshal(x) if is_number(x)

quote(s) := concat("", ["'", s, "'"]) if {
	count(s) <= 200
} else := concat("", ["'", substring(s, 0, 200), "…' (", format_int(count(s), 10), " characters)"])

# Tests for mcp.rego. More cases, through a real MCP client and server:
# tests/test_mcp.py.
package hitl.mcp_test

import data.hitl
import data.hitl.lib_test.request

agent := {"id": "support-agent", "address": "10.0.0.7"}

call(tool, args) := {"method": "tools/call", "tool": tool, "arguments": args, "id": 7, "session": "s1", "error": null}

test_send_email_is_held_with_recipient_and_subject if {
	a := agent
	r := request("POST", "mcp.internal.test", "/mcp", null)
	m := call("send_email", {"to": "ceo@example.com", "subject": "Quarterly numbers", "body": "…"})
	d := hitl.decision with input.request as r with input.agent as a with input.mcp as m
	d.action == "hold"
	d.rule == "mcp.send"
	d.message == "support-agent wants to call send_email to ceo@example.com: 'Quarterly numbers'"
}

test_dangerous_tool_names_are_held if {
	a := agent
	r := request("POST", "mcp.internal.test", "/mcp", null)
	m1 := call("create_payment", {"amount": 250, "customer": "cus_1"})
	d1 := hitl.decision with input.request as r with input.agent as a with input.mcp as m1
	d1.rule == "mcp.pay"
	d1.message == "support-agent wants to call create_payment to cus_1: '250'"
	m2 := call("run_sql", {"sql": "DELETE FROM users"})
	d2 := hitl.decision with input.request as r with input.agent as a with input.mcp as m2
	d2.rule == "mcp.execute"
	m3 := call("deleteRepository", {})
	d3 := hitl.decision with input.request as r with input.agent as a with input.mcp as m3
	d3.rule == "mcp.delete"
	m4 := call("slack.post_message", {"channel": "C1", "text": "hi"})
	d4 := hitl.decision with input.request as r with input.agent as a with input.mcp as m4
	d4.rule == "mcp.post"
	d4.message == "support-agent wants to call slack.post_message to C1: 'hi'"
}

test_read_only_tools_and_handshake_are_allowed if {
	a := agent
	r := request("POST", "mcp.internal.test", "/mcp", null)
	m1 := call("get_email", {"id": "1"})
	d1 := hitl.decision with input.request as r with input.agent as a with input.mcp as m1
	d1.action == "allow"
	m2 := {"method": "initialize", "tool": null, "arguments": null, "id": 0, "session": null, "error": null}
	d2 := hitl.decision with input.request as r with input.agent as a with input.mcp as m2
	d2.action == "allow"
	m3 := {"method": "tools/list", "tool": null, "arguments": null, "id": 1, "session": "s1", "error": null}
	d3 := hitl.decision with input.request as r with input.agent as a with input.mcp as m3
	d3.action == "allow"
	m4 := {"method": "notifications/initialized", "tool": null, "arguments": null, "id": null, "session": "s1", "error": null}
	d4 := hitl.decision with input.request as r with input.agent as a with input.mcp as m4
	d4.action == "allow"
}

test_malformed_json_rpc_is_denied if {
	a := agent
	r := request("POST", "mcp.internal.test", "/mcp", null)
	m := {"method": null, "tool": null, "arguments": null, "id": null, "session": null, "error": "duplicate key 'name'"}
	d := hitl.decision with input.request as r with input.agent as a with input.mcp as m
	d.action == "deny"
	d.rule == "mcp.malformed"
}

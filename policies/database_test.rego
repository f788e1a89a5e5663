# Tests for database.rego. More cases (PostgREST filters, Hasura):
# tests/test_shipped_policies.py.
package hitl.database_test

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

test_sql_write_held_with_the_statement if {
	a := agent
	r1 := request("POST", "db-gateway.example.com", "/query", {"sql": "DELETE FROM orders WHERE id = 7"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d := d1
	d.action == "hold"
	d.message == "billing-agent wants to run on the SQL gateway (db-gateway.example.com): DELETE FROM orders WHERE id = 7"
}

test_sql_drop_denied if {
	a := agent
	r1 := request("POST", "db-gateway.example.com", "/query", {"sql": "drop table orders"})
	d1 := hitl.decision with input.request as r1 with input.agent as a
	d1.action == "deny"
}

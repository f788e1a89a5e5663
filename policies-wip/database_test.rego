# Tests for database.rego (gateways from data.yaml).
package hitl.database_test

# (PostgREST filters from the query string are tested in tests/test_policies.py:
# rego-cpp runs out of memory iterating a query object given by `with`.)

import data.hitl
import data.hitl.lib_test.agent
import data.hitl.lib_test.request

decide(method, host, path, body) := d if {
	a := agent
	r := request(method, host, path, body)
	d := hitl.decision with input.request as r with input.agent as a
}

sql(statement) := decide("POST", "db-gateway.example.com", "/query", {"sql": statement})

test_sql_read_allowed if {
	sql("SELECT * FROM orders WHERE id = 7").rule == "database.read"
	sql("/* report */ select 1 -- drop later").action == "allow"
}

test_sql_write_held_with_the_statement if {
	d := sql("DELETE FROM orders WHERE id = 7")
	d.action == "hold"
	d.rule == "database.write"
	d.message == "billing-agent wants to run on db-gateway.example.com: DELETE FROM orders WHERE id = 7"
}

test_sql_drop_and_truncate_denied if {
	sql("drop table orders").action == "deny"
	sql("SELECT 1; TRUNCATE orders").action == "deny"
	sql("ALTER TABLE orders DROP COLUMN total").rule == "database.destructive"
}

test_sql_literal_is_not_a_keyword if {
	sql("INSERT INTO notes VALUES ('drop me a line')").action == "hold"
}

test_select_into_is_a_write if {
	sql("SELECT * INTO backup FROM orders").action == "hold"
}

test_postgrest_read if {
	decide("GET", "abc.supabase.co", "/rest/v1/orders", null).action == "allow"
}

test_postgrest_delete_without_filter_denied if {
	d := decide("DELETE", "abc.supabase.co", "/rest/v1/orders", null)
	d.action == "deny"
	d.message == "refused: a DELETE without a filter removes every row of orders on abc.supabase.co"
}

test_postgrest_rpc_held if {
	d := decide("POST", "postgrest.example.com", "/rpc/close_month", null)
	d.action == "hold"
	d.message == "billing-agent wants to run on postgrest.example.com: CALL close_month()"
}

test_hasura_query_allowed_mutation_held if {
	decide("POST", "hasura.example.com", "/v1/graphql", {"query": "query { orders { id } }"}).action == "allow"
	d := decide("POST", "hasura.example.com", "/v1/graphql", {"query": "mutation { delete_orders(where: {}) { affected_rows } }"})
	d.action == "hold"
	d.message == "billing-agent wants to run on hasura.example.com: GraphQL mutation { delete_orders(where: {}) { affected_rows } }"
}

test_hasura_run_sql if {
	decide("POST", "hasura.example.com", "/v2/query", {"type": "run_sql", "args": {"sql": "TRUNCATE orders"}}).action == "deny"
}

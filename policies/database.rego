# Database gateways: SQL over HTTP.
#
#   PostgREST / Supabase   reads allowed; POST/PATCH/PUT/DELETE and /rpc calls held,
#                          described as SQL ("DELETE FROM orders WHERE id=eq.7");
#                          a DELETE with no filter (every row) is denied
#   Hasura                 GraphQL queries allowed, mutations held; run_sql as below
#   {"sql": "..."} bodies  SELECT/SHOW/EXPLAIN allowed, other statements held,
#                          any DROP or TRUNCATE denied
#
# Which host is which kind of gateway (`api: postgrest | hasura | sql`): config.hosts
# and config.domains in data.yaml. The reviewer reads the statement itself. Regular
# expressions here run on the lower-cased text (rego-cpp does not take the (?i) flag).
package hitl.database

import data.hitl.config.database as conf
import data.hitl.lib

api := lib.service.api

decide(r, a) := {
	"action": "deny",
	"message": concat("", ["refused: DROP and TRUNCATE are not allowed through the proxy; ", lib.who(a), " sent: ", s]),
	"rule": "database.destructive",
} if {
	s := sql(r.body)
	regex.match(`\b(drop|truncate)\b`, bare(s))
} else := {
	"action": "allow",
	"rule": "database.read",
} if {
	read(r)
} else := {
	"action": "deny",
	"message": concat("", ["refused: a DELETE without a filter removes every row of ", t, " on ", r.host]),
	"rule": "database.destructive",
} if {
	api == "postgrest"
	r.method == "DELETE"
	t := table(r.path)
	count(filters(r.query)) == 0
} else := {
	"action": "hold",
	"message": concat("", [lib.who(a), " wants to run on ", lib.service.name, " (", r.host, "): ", s]),
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "database.write",
} if {
	s := statement(r)
} else := {
	"action": "hold",
	"message": concat("", [lib.who(a), " wants to ", r.method, " ", lib.url(r)]),
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "database.write",
} if {
	lib.writing(r)
}

# --- SQL -------------------------------------------------------------------------

# The statement of a {"sql": "..."} gateway or of Hasura's run_sql.
sql(body) := body.sql if {
	api == "sql"
	is_string(body.sql)
} else := body.args.sql if {
	api == "hasura"
	body.type == "run_sql"
	is_string(body.args.sql)
}

# Lower case, comments and quoted literals removed: what the keywords are checked on.
bare(s) := regex.replace(regex.replace(lower(s), `/\*.*?\*/|--[^\n]*`, " "), `'([^']|'')*'`, "''")

# A read: a statement that starts with a reading keyword and has no writing keyword
# anywhere; a GraphQL query; any GET, HEAD or OPTIONS without SQL.
read(r) if {
	b := bare(sql(r.body))
	regex.match(`^[\s;(]*(select|show|explain|values|table|with)\b`, b)
	not regex.match(`\b(insert|update|delete|merge|into|create|alter|grant|revoke|copy|call|do|lock|set|refresh|vacuum)\b`, b)
}

read(r) if {
	lib.reading(r)
	not sql(r.body)
}

read(r) if {
	g := graphql(r)
	not mutation(g)
}

statement(r) := sql(r.body) if {
	sql(r.body)
} else := concat("", ["GraphQL ", r.body.query]) if {
	mutation(graphql(r))
} else := postgrest_statement(r) if {
	api == "postgrest"
}

# --- Hasura GraphQL --------------------------------------------------------------

graphql(r) := lower(regex.replace(r.body.query, `#[^\n]*`, " ")) if {
	api == "hasura"
	r.method == "POST"
	is_string(r.body.query)
}

mutation(g) if regex.match(`(^|[\s}])mutation[\s({]`, g)

# --- PostgREST (Supabase: the same under /rest/v1) ------------------------------

# "/rest/v1/orders" → ["", "orders"]; "/rpc/close_month" → ["", "rpc", "close_month"]
postgrest_path(path) := split(trim_prefix(path, "/rest/v1"), "/")

table(path) := p[1] if {
	p := postgrest_path(path)
	count(p) == 2
	p[1] != "rpc"
}

function(path) := p[2] if {
	p := postgrest_path(path)
	count(p) == 3
	p[1] == "rpc"
}

# PostgREST filters are query parameters such as id=eq.7; postgrest_options are not.
# (`some name, values in …` inside [ … | … ] is taken for an array by rego-cpp.)
filters(query) := [f |
	some name
	values := query[name]
	not conf.postgrest_options[name]
	some value in values
	f := concat("=", [name, value])
]

where(query) := "" if {
	count(filters(query)) == 0
} else := concat("", [" WHERE ", concat(" AND ", filters(query))])

text(r) := r.body_text if is_string(r.body_text) else := ""

postgrest_statement(r) := concat("", ["CALL ", f, "(", text(r), ")"]) if {
	r.method == "POST"
	f := function(r.path)
} else := concat("", ["INSERT INTO ", t, " ", text(r)]) if {
	r.method == "POST"
	t := table(r.path)
} else := concat("", ["UPSERT INTO ", t, " ", text(r), where(r.query)]) if {
	r.method == "PUT"
	t := table(r.path)
} else := concat("", ["UPDATE ", t, " SET ", text(r), where(r.query)]) if {
	r.method == "PATCH"
	t := table(r.path)
} else := concat("", ["DELETE FROM ", t, where(r.query)]) if {
	r.method == "DELETE"
	t := table(r.path)
}

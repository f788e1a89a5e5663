# Database gateways: SQL over HTTP.
#
#   PostgREST / Supabase   GET reads allowed; POST/PATCH/PUT/DELETE and /rpc calls held,
#                          described as SQL ("DELETE FROM orders WHERE id=eq.7");
#                          a DELETE with no filter (every row) is denied
#   Hasura                 GraphQL queries allowed, mutations held; run_sql as below
#   {"sql": "..."} bodies  SELECT/SHOW/EXPLAIN allowed, other statements held,
#                          any DROP or TRUNCATE denied
#
# Which host is which kind of gateway: database.hosts / database.domains in data.yaml.
# The reviewer reads the statement itself. Regular expressions here run on the
# lower-cased text (rego-cpp does not take the (?i) flag).
package hitl.database

import data.hitl.config
import data.hitl.config.database as conf
import data.hitl.lib

kind := k if {
	k := conf.hosts[input.request.host]
} else := k if {
	k := conf.domains[lib.parent_domain]
}

intercept if kind

decision := {
	"action": "deny",
	"message": concat("", ["refused: DROP and TRUNCATE are not allowed through the proxy; ", lib.who, " sent: ", sql]),
	"rule": "database.destructive",
} if {
	destructive
} else := {
	"action": "allow",
	"rule": "database.read",
} if {
	read
} else := {
	"action": "deny",
	"message": concat("", ["refused: a DELETE without a filter removes every row of ", table, " on ", input.request.host]),
	"rule": "database.destructive",
} if {
	kind == "postgrest"
	input.request.method == "DELETE"
	count(filters) == 0
	table
} else := {
	"action": "hold",
	"message": concat("", [lib.who, " wants to run on ", input.request.host, ": ", statement]),
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "database.write",
} if {
	statement
} else := {
	"action": "hold",
	"message": concat("", [lib.who, " wants to ", input.request.method, " ", lib.url]),
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "database.write",
} if {
	kind
	config.writes[input.request.method]
}

# --- SQL -------------------------------------------------------------------------

# The statement of a {"sql": "..."} gateway or of Hasura's run_sql.
sql := input.request.body.sql if {
	kind == "sql"
	is_string(input.request.body.sql)
}

sql := input.request.body.args.sql if {
	kind == "hasura"
	input.request.body.type == "run_sql"
	is_string(input.request.body.args.sql)
}

# Lower case, comments and quoted literals removed: what the keywords are checked on.
bare := regex.replace(regex.replace(lower(sql), `/\*.*?\*/|--[^\n]*`, " "), `'([^']|'')*'`, "''")

destructive if regex.match(`\b(drop|truncate)\b`, bare)

# A read: starts with a reading keyword and has no writing keyword anywhere.
read if {
	regex.match(`^[\s;(]*(select|show|explain|values|table)\b`, bare)
	not regex.match(`\b(insert|update|delete|merge|into|create|alter|grant|revoke|copy|call|do|lock|set|refresh|vacuum)\b`, bare)
}

read if {
	kind
	config.reads[input.request.method]
	not sql
}

read if {
	graphql
	not mutation
}

statement := sql

# --- Hasura GraphQL --------------------------------------------------------------

graphql := lower(regex.replace(input.request.body.query, `#[^\n]*`, " ")) if {
	kind == "hasura"
	input.request.method == "POST"
	is_string(input.request.body.query)
}

mutation if regex.match(`(^|[\s}])mutation[\s({]`, graphql)

statement := concat("", ["GraphQL ", input.request.body.query]) if mutation

# --- PostgREST (Supabase: the same under /rest/v1) ------------------------------

table := m[1] if {
	kind == "postgrest"
	some m in regex.find_all_string_submatch_n(`^(?:/rest/v1)?/([^/]+)$`, input.request.path, 1)
	m[1] != "rpc"
}

function := m[1] if {
	kind == "postgrest"
	some m in regex.find_all_string_submatch_n(`^(?:/rest/v1)?/rpc/([^/]+)$`, input.request.path, 1)
}

# (`some name, values in …` inside [ … | … ] is taken for an array by rego-cpp.)
# PostgREST filters are query parameters such as id=eq.7; these others are not.
filters := [f |
	some name
	values := input.request.query[name]
	not conf.postgrest_options[name]
	some value in values
	f := concat("=", [name, value])
]

where := "" if {
	count(filters) == 0
} else := concat("", [" WHERE ", concat(" AND ", filters)])

body := input.request.body_text if is_string(input.request.body_text) else := ""

statement := concat("", ["INSERT INTO ", table, " ", body]) if {
	input.request.method == "POST"
}

statement := concat("", ["UPSERT INTO ", table, " ", body, where]) if {
	input.request.method == "PUT"
}

statement := concat("", ["UPDATE ", table, " SET ", body, where]) if {
	input.request.method == "PATCH"
}

statement := concat("", ["DELETE FROM ", table, where]) if {
	input.request.method == "DELETE"
}

statement := concat("", ["CALL ", function, "(", body, ")"]) if {
	input.request.method == "POST"
}

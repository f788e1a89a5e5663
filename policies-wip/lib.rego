# Helpers the use-case policies share: who is asking, and the URL in plain form.
#
# regopy note: strings are joined with concat, not sprintf — regopy's sprintf quotes
# string arguments that come from other builtins when it has more than one argument.
package hitl.lib

# "billing-agent", or "an anonymous agent" without proxy credentials.
who := "an anonymous agent" if {
	input.agent.id == "anonymous"
} else := input.agent.id

# https://host/path, with the port only when it is not the scheme's default.
url := concat("", [input.request.scheme, "://", authority, input.request.path])

authority := input.request.host if {
	input.request.scheme == "https"
	input.request.port == 443
} else := input.request.host if {
	input.request.scheme == "http"
	input.request.port == 80
} else := concat(":", [input.request.host, format_int(input.request.port, 10)])

# The request's body field `name`, from the JSON or form body, else from the query
# string (Slack's Web API takes its arguments either way).
field(name) := input.request.body[name] if {
	is_object(input.request.body)
	is_string(input.request.body[name])
} else := input.request.query[name][0] if {
	is_array(input.request.query[name])
	is_string(input.request.query[name][0])
}

# The parent domain of the request's host: "abc.supabase.co" → "supabase.co".
parent_domain := concat(".", array.slice(labels, 1, count(labels))) if {
	labels := split(input.request.host, ".")
	count(labels) > 2
}

# A quoted, shortened text for messages: reviewers see the start of long texts.
quote(text) := concat("", ["\"", text, "\""]) if {
	count(text) <= 500
} else := concat("", ["\"", substring(text, 0, 500), "…\" (", format_int(count(text), 10), " characters)"])

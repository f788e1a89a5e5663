# Helpers the use-case policies share: which service a request goes to, who is
# asking, the URL in plain form.
#
# regopy 1.5 (rego-cpp) costs, measured, that shape every file here:
# - the proxy hands the policy only the input fields some rule names (input.request.host),
#   about 1-3 µs a value: name fields one by one; `input` or `input.request` used whole
#   hands over everything, headers included, on every request;
# - every module costs about 10 µs per evaluation even where the request never gets to
#   (rego-cpp's own overhead, in proportion to the size of the policies);
# - a lookup such as table[key] scans the table (about 0.75 µs a row): keep the
#   tables an unlisted host is looked up in short;
# - a set or object literal is built again on every evaluation (about 10 µs an
#   element): keep tables in data.yaml, compare with == or `in [array]`;
# - a rule's value is computed once per evaluation, but an undefined rule is computed
#   again at every reference: give such a rule a default;
# - strings are joined with concat, not sprintf: regopy's sprintf quotes string
#   arguments that come from other builtins when it has more than one argument.
package hitl.lib

import data.hitl.config

# The data.yaml row for the request's host: {use, api, name}; use "none" for a host
# that is not listed, which lets every other request through after one lookup.
default service := {"use": "none"}

service := s if {
	s := config.hosts[input.request.host]
} else := s if {
	s := config.domains[parent_domain(input.request.host)]
}

# "abc.supabase.co" → "supabase.co" (the host without its first label).
parent_domain(host) := substring(host, i + 1, -1) if {
	i := indexof(host, ".")
	i > 0
}

reading(r) if config.reads[r.method]

writing(r) if config.writes[r.method]

# "billing-agent", or "an anonymous agent" without proxy credentials.
who(a) := "an anonymous agent" if {
	a.id == "anonymous"
} else := a.id

# The path the use-case policies match: the proxy has already normalized it (dot
# segments, "//", escapes); here a trailing slash goes too ("/v1/charges/" is
# "/v1/charges"), since most APIs route both to one handler and an exact-path rule
# written for one must also catch the other. "/" stays "/".
route_path(p) := trim_suffix(p, "/") if {
	p != "/"
} else := p

# https://host/path, with the port only when it is not the scheme's default.
url(r) := concat("", [r.scheme, "://", authority(r), r.path])

authority(r) := r.host if {
	r.scheme == "https"
	r.port == 443
} else := r.host if {
	r.scheme == "http"
	r.port == 80
} else := concat(":", [r.host, format_int(r.port, 10)])

# The request's field `name`, from the JSON or form body, else from the query string
# (Slack's Web API takes its arguments either way). Undefined unless it is a string.
field(r, name) := r.body[name] if {
	is_object(r.body)
	is_string(r.body[name])
} else := r.query[name][0] if {
	is_array(r.query[name])
	is_string(r.query[name][0])
}

# A quoted text for messages; reviewers see the start of long texts.
quote(text) := concat("", ["\"", text, "\""]) if {
	count(text) <= 500
} else := concat("", ["\"", substring(text, 0, 500), "…\" (", format_int(count(text), 10), " characters)"])

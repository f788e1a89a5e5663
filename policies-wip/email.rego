# Email: sending through SendGrid, Mailgun, Postmark, the Gmail API and Microsoft Graph.
#
#   a send whose recipients include anyone outside email.internal_domains
#                                        hold, always   rule email.external
#   any other send                       hold           rule email.send
#                                        (allow instead when email.allow_internal is true)
#   anything else on these hosts         not this policy's business (main decides)
#
# The reviewer reads who the mail goes to and its subject:
#   billing-agent wants to send "Your invoice" to ann@example.com, bob@other.org via SendGrid
#   — 1 recipient outside your domains: bob@other.org
package hitl.email

import data.hitl.config.email as conf
import data.hitl.lib

provider := conf.hosts[input.request.host]

intercept if provider

sending if {
	input.request.method == "POST"
	regex.match(conf.send_paths[provider], input.request.path)
}

decision := {
	"action": "hold",
	"message": concat("", [summary, " — ", outside_text]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": "email.external",
} if {
	sending
	count(outside) > 0
} else := {
	"action": "allow",
	"message": summary,
	"rule": "email.internal",
} if {
	sending
	allow_internal
	count(recipients) > 0
} else := {
	"action": "hold",
	"message": summary,
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "email.send",
} if {
	sending
}

allow_internal if conf.allow_internal == true

summary := concat("", [lib.who, " wants to send ", subject_text, " to ", recipients_text, " via ", conf.names[provider]])

subject_text := lib.quote(subject) if {
	is_string(subject)
	subject != ""
} else := "an email without a subject"

recipients_text := concat(", ", recipients) if {
	count(recipients) > 0
} else := "recipients the proxy cannot read"

outside_text := concat("", [
	format_int(count(outside), 10), " recipient", plural, " outside your domains: ",
	concat(", ", outside),
])

plural := "" if count(outside) == 1 else := "s"

# Addresses whose domain is not one of ours (nor a subdomain of one).
outside := [a |
	some a in recipients
	not internal(a)
]

internal(address) if conf.internal_domains[lower(split(address, "@")[1])]

internal(address) if {
	domain := lower(split(address, "@")[1])
	some d, _ in conf.internal_domains
	endswith(domain, concat("", [".", d]))
}

# Every address in the recipient fields, in order, without duplicates' names:
# "Ann <ann@example.com>, bob@other.org" → ["ann@example.com", "bob@other.org"].
recipients := [a |
	some text in recipient_texts
	some a in regex.find_n(`[^\s<>,;"']+@[^\s<>,;"']+`, text, -1)
]

# --- Where each provider keeps recipients and subject ---------------------------

# SendGrid: {"personalizations": [{"to": [{"email"}], "cc", "bcc", "subject"}], "subject"}
recipient_texts := [r.email |
	some p in input.request.body.personalizations
	some field in ["to", "cc", "bcc"]
	some r in p[field]
	is_string(r.email)
] if provider == "sendgrid"

subject := input.request.body.subject if {
	provider == "sendgrid"
	is_string(input.request.body.subject)
} else := input.request.body.personalizations[0].subject if provider == "sendgrid"

# Mailgun: form fields to, cc, bcc (repeatable) and subject.
# Postmark: JSON To, Cc, Bcc (comma-separated) and Subject.
recipient_texts := [t |
	some field in conf.fields[provider].recipients
	some t in as_list(input.request.body[field])
	is_string(t)
] if conf.fields[provider]

subject := input.request.body[conf.fields[provider].subject]

as_list(x) := x if is_array(x) else := [x]

# Gmail: {"raw": base64url of the RFC 822 message} (drafts: {"message": {"raw"}}).
gmail_raw := input.request.body.raw if provider == "gmail"

gmail_raw := input.request.body.message.raw if provider == "gmail"

gmail_message := base64url.decode(gmail_raw) if {
	is_string(gmail_raw)
	regex.match(`^[A-Za-z0-9_=-]+$`, gmail_raw)
}

# The header lines before the first blank line, as [name in lower case, value].
# (regex.split, not split: the decoded text holds real line breaks, which rego-cpp
# does not match against the "\n" escape in a Rego string.)
gmail_headers := [[lower(m[1]), m[2]] |
	some line in regex.split(`\r?\n`, regex.split(`\r?\n\r?\n`, gmail_message)[0])
	some m in regex.find_all_string_submatch_n(`^([A-Za-z-]+):[ \t]*(.*)$`, line, 1)
]

recipient_texts := [h[1] | some h in gmail_headers; conf.gmail_recipient_headers[h[0]]] if provider == "gmail"

subject := h[1] if {
	provider == "gmail"
	some h in gmail_headers
	h[0] == "subject"
}

# Microsoft Graph: {"message": {"subject", "toRecipients": [{"emailAddress": {"address"}}], …}}
recipient_texts := [r.emailAddress.address |
	some field in ["toRecipients", "ccRecipients", "bccRecipients"]
	some r in input.request.body.message[field]
	is_string(r.emailAddress.address)
] if provider == "graph"

subject := input.request.body.message.subject if provider == "graph"

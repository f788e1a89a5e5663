# Email: sending through SendGrid, Mailgun, Postmark, the Gmail API and Microsoft Graph.
#
#   a send with any recipient outside email.internal_domains
#                                        hold, always   rule email.external
#   any other send                       hold           rule email.send
#                                        (allow instead when email.allow_internal is true)
#   other writes to these hosts          hold (main's safe default: email is in hold_writes)
#   reads                                allow
#
# The reviewer reads who the mail goes to and its subject:
#   billing-agent wants to send "Your invoice" to ann@example.com, bob@other.org via SendGrid
#   — 1 recipient outside your domains: bob@other.org
package hitl.email

import data.hitl.config.email as conf
import data.hitl.lib

api := lib.service.api

decide(r, a) := d if {
	sending(r)
	to := recipients(r)
	summary := concat("", [
		lib.who(a), " wants to send ", subject_text(subject(r)), " to ", recipients_text(to),
		" via ", lib.service.name,
	])
	d := by_recipients(summary, to, [x | some x in to; not internal(x)])
}

by_recipients(summary, to, outside) := {
	"action": "hold",
	"message": concat("", [
		summary, " — ", format_int(count(outside), 10), " recipient", plural(outside),
		" outside your domains: ", concat(", ", outside),
	]),
	"reviewers": conf.reviewers,
	"grantable": false,
	"rule": "email.external",
} if {
	count(outside) > 0
} else := {
	"action": "allow",
	"message": summary,
	"rule": "email.internal",
} if {
	conf.allow_internal == true
	count(to) > 0
} else := {
	"action": "hold",
	"message": summary,
	"reviewers": conf.reviewers,
	"grantable": true,
	"rule": "email.send",
}

# --- Which calls send mail -------------------------------------------------------
#
# (startswith/endswith, not regular expressions: they are cheaper in rego-cpp.)

sending(r) if {
	r.method == "POST"
	send_path(r.path)
}

send_path(path) if {
	api == "sendgrid"
	path == "/v3/mail/send"
}

send_path(path) if { # /v3/DOMAIN/messages, /v3/DOMAIN/messages.mime
	api == "mailgun"
	startswith(path, "/v3/")
	some suffix in ["/messages", "/messages.mime"]
	endswith(path, suffix)
}

send_path(path) if {
	api == "postmark"
	path in ["/email", "/email/batch", "/email/withTemplate", "/email/batchWithTemplates"]
}

send_path(path) if { # /gmail/v1/users/me/messages/send, …/drafts/send, and the upload forms
	api == "gmail"
	some prefix in ["/gmail/v1/users/", "/upload/gmail/v1/users/"]
	startswith(path, prefix)
	endswith(path, "/send")
}

send_path(path) if { # /v1.0/me/sendMail, /v1.0/users/ID/sendMail
	api == "graph"
	endswith(path, "/sendMail")
}

send_path(path) if { # /v1.0/me/messages/ID/send: a draft
	api == "graph"
	contains(path, "/messages/")
	endswith(path, "/send")
}

# --- What the reviewer reads -----------------------------------------------------

subject_text(s) := lib.quote(s) if {
	is_string(s)
	s != ""
} else := "an email without a subject"

recipients_text(to) := concat(", ", to) if {
	count(to) > 0
} else := "recipients the proxy cannot read"

plural(xs) := "" if count(xs) == 1 else := "s"

# Whether an address's domain is one of ours, or a subdomain of one.
internal(address) if conf.internal_domains[lower(split(address, "@")[1])]

internal(address) if {
	domain := lower(split(address, "@")[1])
	some d, _ in conf.internal_domains
	endswith(domain, concat("", [".", d]))
}

# Every address in the recipient fields, in order:
# "Ann <ann@example.com>, bob@other.org" → ["ann@example.com", "bob@other.org"].
recipients(r) := [x |
	some text in recipient_texts(r.body)
	some x in regex.find_n(`[^\s<>,;"']+@[^\s<>,;"']+`, text, -1)
]

# --- Where each provider keeps recipients and subject ---------------------------

# SendGrid: {"personalizations": [{"to": [{"email"}], "cc", "bcc", "subject"}], "subject"}
# Mailgun: form fields to, cc, bcc (repeatable: a list) and subject.
# Postmark: JSON To, Cc, Bcc (comma-separated) and Subject.
# Gmail: {"raw": base64url of the RFC 822 message} (drafts: {"message": {"raw"}}).
# Microsoft Graph: {"message": {"subject", "toRecipients": [{"emailAddress": {"address"}}], …}}
recipient_texts(body) := [x.email |
	some p in body.personalizations
	some f in ["to", "cc", "bcc"]
	some x in p[f]
	is_string(x.email)
] if {
	api == "sendgrid"
} else := [t |
	some f in ["to", "cc", "bcc"]
	some t in as_list(body[f])
	is_string(t)
] if {
	api == "mailgun"
} else := [t |
	some f in ["To", "Cc", "Bcc"]
	t := body[f]
	is_string(t)
] if {
	api == "postmark"
} else := [h[1] | some h in gmail_headers(body); h[0] in ["to", "cc", "bcc"]] if {
	api == "gmail"
} else := [x.emailAddress.address |
	some f in ["toRecipients", "ccRecipients", "bccRecipients"]
	some x in body.message[f]
	is_string(x.emailAddress.address)
] if {
	api == "graph"
} else := []

subject(r) := s if {
	api in ["sendgrid", "mailgun"]
	s := r.body.subject
	is_string(s)
} else := s if {
	api == "sendgrid"
	s := r.body.personalizations[0].subject
} else := s if {
	api == "postmark"
	s := r.body.Subject
} else := s if {
	api == "gmail"
	s := [h[1] | some h in gmail_headers(r.body); h[0] == "subject"][0]
} else := s if {
	api == "graph"
	s := r.body.message.subject
} else := ""

as_list(x) := x if is_array(x) else := [x]

gmail_raw(body) := body.raw if {
	is_string(body.raw)
} else := body.message.raw

# The header lines before the first blank line, as [name in lower case, value].
# (regex.split, not split: the decoded text holds real line breaks, which rego-cpp
# does not match against the "\n" escape in a Rego string.)
gmail_headers(body) := [[lower(m[1]), m[2]] |
	some line in regex.split(`\r?\n`, regex.split(`\r?\n\r?\n`, message)[0])
	some m in regex.find_all_string_submatch_n(`^([A-Za-z-]+):[ \t]*(.*)$`, line, 1)
] if {
	raw := gmail_raw(body)
	is_string(raw)
	regex.match(`^[A-Za-z0-9_=-]+$`, raw)
	message := base64url.decode(raw)
} else := []

# The compose demo's policy: charges to the demo upstream wait for a human, deletes are
# refused, everything else passes. See policies/main.rego for the shipped ones.
package hitl

default decision := {"action": "allow", "rule": "default"}

decision := {
	"action": "hold",
	"message": concat(" ", [input.agent.id, "wants to create a charge on the demo upstream"]),
	"rule": "demo.charge",
	"grantable": true,
} if {
	input.request.host == "demo-upstream"
	input.request.method == "POST"
	startswith(input.request.path, "/v1/charges")
}

decision := {"action": "deny", "message": "the demo agent may not delete", "rule": "demo.delete"} if {
	input.request.method == "DELETE"
}

# Decrypt HTTPS only for the demo upstream (it speaks plain HTTP, so: never); every other
# HTTPS connection stays a blind tunnel.
default intercept := false

intercept if input.request.host == "demo-upstream"

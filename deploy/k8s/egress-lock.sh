#!/bin/sh
# Init container of the agent pod (deploy/k8s/agent.yaml): only the hitl-proxy sidecar's
# user (uid 10001) may open connections out of the pod; every other container — the agent —
# can reach only loopback, that is the proxy on 127.0.0.1:8080. Runs once with NET_ADMIN,
# before the pod's other containers start; the rules live in the pod's network namespace.
set -eu
PROXY_UID="${PROXY_UID:-10001}"
for ipt in iptables ip6tables; do
  "$ipt" -w -A OUTPUT -o lo -j ACCEPT
  "$ipt" -w -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  "$ipt" -w -A OUTPUT -m owner --uid-owner "$PROXY_UID" -j ACCEPT
  "$ipt" -w -A OUTPUT -j REJECT
done
echo "egress-lock: only uid $PROXY_UID may leave the pod"

#!/usr/bin/env bash
# The tutorial's check of the API server's authentication flags, one controller after another:
#   ssh controller-N grep -oE "\-\-(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*" \
#     /etc/systemd/system/kube-apiserver.service
# (the pattern is quoted once more for the remote shell, which would otherwise choke on the
# parentheses). Compared against `k8sboot verify`, which checks far more in one connection per host.
#
# usage: grep_loop.sh -F SSH_CONFIG HOST...
# Exit status: non-zero if any host's unit lacks the flags (grep finds nothing) or ssh fails.
set -euo pipefail
CFG=""
if [ "${1:-}" = "-F" ]; then CFG=$2; shift 2; fi
[ -n "$CFG" ] && [ $# -gt 0 ] || { echo "usage: grep_loop.sh -F SSH_CONFIG HOST..." >&2; exit 2; }

for instance in "$@"; do
  echo "== ${instance}"
  ssh -F "$CFG" "$instance" \
    'grep -oE "\-\-(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*" /etc/systemd/system/kube-apiserver.service'
done

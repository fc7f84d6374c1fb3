#!/usr/bin/env bash
# The by-hand way to move the ServiceAccount token issuer to a new URL, as a Kubernetes The Hard
# Way reader would script it: for each controller in turn one `ssh` that edits the unit with sed,
# `daemon-reload`, `restart` and waits until `is-active`. Three passes over the controllers, as
# kube-apiserver allows since 1.22 (--service-account-issuer repeated: the first one signs, every
# one is accepted): accept the new issuer beside the old -> sign as the new one -> drop the old.
# No health gate (the next host restarts as soon as the previous one is `active`), no load-balancer
# drain: the tutorial has neither. Nothing changes in the PKI dir.
#
# The phases' flags are k8sboot's (`k8sboot rotate issuer start --to URL | switch | finish`):
#   start:  --service-account-issuer=OLD --service-account-issuer=NEW
#   switch: --service-account-issuer=NEW --service-account-issuer=OLD
#   finish: --service-account-issuer=NEW
# After finish, set cluster.service_account_issuer: NEW in the inventory (as k8sboot asks before its
# finish); `k8sboot verify` then finds nothing to report.
#
# usage: manual_rotate_issuer.sh [--control-master] [--phase start|switch|finish]... --from OLD --to NEW -F SSH_CONFIG HOST...
#   SSH_CONFIG  `Host controller-N` blocks (bench/lib.py ssh-config); OpenSSH's defaults otherwise
#   OLD, NEW    the issuer URLs (https://...; no spaces, quotes, `|` or backslashes)
#   --phase     run only these phases (default: all three, in order)
#   --control-master   one multiplexed connection per host, closed at the end of the run
# The remote commands are built on this side on purpose ($UNIT, $OLD, $NEW, $RESTART expand here):
# shellcheck disable=SC2016,SC2029
set -euo pipefail

CM=0 CFG="" OLD="" NEW="" PHASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --control-master) CM=1; shift ;;
    --phase) PHASES+=("$2"); shift 2 ;;
    --from) OLD=$2; shift 2 ;;
    --to) NEW=$2; shift 2 ;;
    -F) CFG=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "manual_rotate_issuer.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -n "$CFG" ] && [ -n "$OLD" ] && [ -n "$NEW" ] && [ $# -gt 0 ] || {
  echo "usage: manual_rotate_issuer.sh [--control-master] [--phase start|switch|finish]... --from OLD --to NEW -F SSH_CONFIG HOST..." >&2
  exit 2; }
for url in "$OLD" "$NEW"; do
  case "$url" in
    https://*) ;; *) echo "manual_rotate_issuer.sh: $url is not an https:// URL" >&2; exit 2 ;;
  esac
  case "$url" in
    *[[:space:]\'\"\|\\]*) echo "manual_rotate_issuer.sh: $url has a character this script cannot quote" >&2; exit 2 ;;
  esac
done
[ ${#PHASES[@]} -gt 0 ] || PHASES=(start switch finish)
for p in "${PHASES[@]}"; do
  case "$p" in start|switch|finish) ;; *) echo "manual_rotate_issuer.sh: unknown phase $p" >&2; exit 2 ;; esac
done

HOSTS=("$@")
CFG=$(realpath "$CFG")
SSH_OPTS=(-F "$CFG")
if [ "$CM" = 1 ]; then
  CM_DIR=$(mktemp -d /tmp/manual-rotate-cm.XXXXXX)
  SSH_OPTS+=(-o ControlMaster=auto -o "ControlPath=$CM_DIR/%C" -o ControlPersist=60)
  close_masters() {
    for h in "${HOSTS[@]}"; do ssh "${SSH_OPTS[@]}" -O exit "$h" 2>/dev/null || true; done
    rm -rf "$CM_DIR"
  }
  trap close_masters EXIT
fi

UNIT=/etc/systemd/system/kube-apiserver.service
RESTART='systemctl daemon-reload
  systemctl restart kube-apiserver
  for i in $(seq 1 100); do
    systemctl is-active --quiet kube-apiserver && exit 0
    sleep 0.1
  done
  echo "kube-apiserver is not active on $(hostname): $(systemctl is-active kube-apiserver)" >&2
  exit 1'

# the sed program of each phase (an issuer line is `  --service-account-issuer=URL \`)
case_sed() {
  case "$1" in
    # the new issuer after the old one
    start) printf '%s\n' "s|^\\( *\\)--service-account-issuer=$OLD \\\\\$|&\\n\\1--service-account-issuer=$NEW \\\\|" ;;
    # the old one moves after the new one
    switch) printf '%s\n' "\\|--service-account-issuer=$OLD \\\\\$|d; s|^\\( *\\)--service-account-issuer=$NEW \\\\\$|&\\n\\1--service-account-issuer=$OLD \\\\|" ;;
    # the old one goes
    finish) printf '%s\n' "\\|--service-account-issuer=$OLD \\\\\$|d" ;;
  esac
}

for p in "${PHASES[@]}"; do
  prog=$(case_sed "$p")
  for instance in "${HOSTS[@]}"; do
    ssh "${SSH_OPTS[@]}" "$instance" "set -e
  sed -i '$prog' $UNIT
  $RESTART"
  done
done

#!/usr/bin/env bash
# The by-hand way to rotate the ServiceAccount signing key, as a Kubernetes The Hard Way reader
# would script it: openssl for the new pair, then for each controller in turn `scp` and one `ssh`
# that puts the file in place, edits the unit with sed, `daemon-reload`, `restart` and waits until
# `is-active`. Three passes over the controllers, the order the upstream advice gives
# (kubernetes #20165): trust the new public key beside the old one -> sign with the new key ->
# drop the old key. There is no health gate (the next host restarts as soon as the previous one
# is `active`) and no load-balancer drain: the tutorial has neither.
#
# It reaches the end state `k8sboot rotate service-account-key ... finish` reaches, so that
# `k8sboot verify` finds nothing to report afterwards:
#   local PKI_DIR: the new pair is service-account.pem (0644) / service-account-key.pem (0600), the
#     old pair kept under PKI_DIR/retired/ (0700 dir, files 0600, named as k8sboot names them:
#     service-account.<UTC stamp>.pem, service-account-key.<UTC stamp>.pem);
#   every controller: /var/lib/kubernetes/service-account.pem (0644) and -key.pem (0600), root:root,
#     with the new contents; the unit's flags back to the single canonical pair
#     (--service-account-key-file=/var/lib/kubernetes/service-account.pem,
#     --service-account-signing-key-file=/var/lib/kubernetes/service-account-key.pem); the
#     service-account-1 files removed; kube-apiserver active.
# The phases' unit flags are k8sboot's:
#   start:  --service-account-key-file=.../service-account.pem --service-account-key-file=.../service-account-1.pem
#           --service-account-signing-key-file=.../service-account-key.pem
#   switch: the same key files, --service-account-signing-key-file=.../service-account-1-key.pem
#   finish: --service-account-key-file=.../service-account.pem --service-account-signing-key-file=.../service-account-key.pem
#           (service-account.pem/-key.pem now hold the new pair)
#
# usage: manual_rotate_sa.sh [--control-master] [-a KEY_ALG] [--phase start|switch|finish]... -F SSH_CONFIG -p PKI_DIR HOST...
#   SSH_CONFIG  `Host controller-N` blocks (HostName, User, IdentityFile, UserKnownHostsFile);
#               everything else is OpenSSH's default, as for a tutorial reader (bench/lib.py ssh-config)
#   PKI_DIR     the PKI dir the inventory points to (the output of `k8sboot gen-certs`)
#   KEY_ALG     rsa-2048 (default), rsa-3072, rsa-4096 or ecdsa-p256: the inventory's pki.key_algorithm
#   --phase     run only these phases (default: all three, in order)
#   --control-master   one multiplexed connection per host (ControlMaster auto, ControlPersist),
#                      closed at the end of the run
# The remote commands are built on this side on purpose ($D, $UNIT, $RESTART expand here; what runs
# there is single-quoted in RESTART):
# shellcheck disable=SC2016,SC2029
set -euo pipefail

CM=0 CFG="" PKI="" ALG="rsa-2048" PHASES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --control-master) CM=1; shift ;;
    --phase) PHASES+=("$2"); shift 2 ;;
    -a) ALG=$2; shift 2 ;;
    -F) CFG=$2; shift 2 ;;
    -p) PKI=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "manual_rotate_sa.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -n "$CFG" ] && [ -n "$PKI" ] && [ $# -gt 0 ] || {
  echo "usage: manual_rotate_sa.sh [--control-master] [-a KEY_ALG] [--phase start|switch|finish]... -F SSH_CONFIG -p PKI_DIR HOST..." >&2
  exit 2; }
[ ${#PHASES[@]} -gt 0 ] || PHASES=(start switch finish)
for p in "${PHASES[@]}"; do
  case "$p" in start|switch|finish) ;; *) echo "manual_rotate_sa.sh: unknown phase $p" >&2; exit 2 ;; esac
done

HOSTS=("$@")
CFG=$(realpath "$CFG") PKI=$(realpath "$PKI")
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

D=/var/lib/kubernetes
UNIT=/etc/systemd/system/kube-apiserver.service
# the end of every remote step: reload the edited unit, restart, wait until active (at most 10 s)
RESTART='systemctl daemon-reload
  systemctl restart kube-apiserver
  for i in $(seq 1 100); do
    systemctl is-active --quiet kube-apiserver && exit 0
    sleep 0.1
  done
  echo "kube-apiserver is not active on $(hostname): $(systemctl is-active kube-apiserver)" >&2
  exit 1'

cd "$PKI"

start() {
  # the new pair, next to the old one
  case "$ALG" in
    rsa-*) (umask 077; openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${ALG#rsa-}" \
              -out service-account-1-key.pem 2>/dev/null) ;;
    ecdsa-p256) (umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 \
              -out service-account-1-key.pem) ;;
    *) echo "manual_rotate_sa.sh: unsupported key algorithm $ALG" >&2; exit 2 ;;
  esac
  openssl pkey -in service-account-1-key.pem -pubout -out service-account-1.pem
  chmod 0600 service-account-1-key.pem
  chmod 0644 service-account-1.pem
  for instance in "${HOSTS[@]}"; do
    scp -q "${SSH_OPTS[@]}" service-account-1.pem "${instance}:~/"
    ssh "${SSH_OPTS[@]}" "$instance" "set -e
  chmod 0644 service-account-1.pem
  chown root:root service-account-1.pem
  mv service-account-1.pem $D/
  grep -q -- '--service-account-key-file=$D/service-account-1.pem' $UNIT ||
    sed -i 's|^\( *\)--service-account-key-file=$D/service-account.pem \\\\\$|&\n\1--service-account-key-file=$D/service-account-1.pem \\\\|' $UNIT
  $RESTART"
  done
}

switch() {
  for instance in "${HOSTS[@]}"; do
    scp -q "${SSH_OPTS[@]}" service-account-1-key.pem "${instance}:~/"
    ssh "${SSH_OPTS[@]}" "$instance" "set -e
  chmod 0600 service-account-1-key.pem
  chown root:root service-account-1-key.pem
  mv service-account-1-key.pem $D/
  sed -i 's|--service-account-signing-key-file=$D/service-account-key.pem |--service-account-signing-key-file=$D/service-account-1-key.pem |' $UNIT
  $RESTART"
  done
}

finish() {
  # locally: the old pair to retired/, the new pair takes the canonical names
  local stamp
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  mkdir -p retired
  chmod 0700 retired
  mv service-account.pem "retired/service-account.$stamp.pem"
  mv service-account-key.pem "retired/service-account-key.$stamp.pem"
  chmod 0600 "retired/service-account.$stamp.pem" "retired/service-account-key.$stamp.pem"
  mv service-account-1.pem service-account.pem
  mv service-account-1-key.pem service-account-key.pem
  for instance in "${HOSTS[@]}"; do
    scp -q "${SSH_OPTS[@]}" service-account.pem service-account-key.pem "${instance}:~/"
    ssh "${SSH_OPTS[@]}" "$instance" "set -e
  chmod 0644 service-account.pem
  chmod 0600 service-account-key.pem
  chown root:root service-account.pem service-account-key.pem
  mv service-account.pem service-account-key.pem $D/
  sed -i -e '\\|--service-account-key-file=$D/service-account-1.pem |d' \\
    -e 's|--service-account-signing-key-file=$D/service-account-1-key.pem |--service-account-signing-key-file=$D/service-account-key.pem |' $UNIT
  rm -f $D/service-account-1.pem $D/service-account-1-key.pem
  $RESTART"
  done
}

for p in "${PHASES[@]}"; do
  "$p"
done

#!/usr/bin/env bash
# The Kubernetes The Hard Way way of bootstrapping etcd ("Bootstrapping the etcd Cluster"): for
# each controller, one after another, `scp` etcd's certificates and the rendered unit to the home
# directory, then one `ssh` that moves them into place, daemon-reload, enable, restart. It does
# exactly the job of `k8sboot deploy-etcd` (same files, modes, owner, data dir, unit, enabled,
# running), then waits, as the tutorial's verification step does, until `etcdctl endpoint health
# --cluster` on the first controller says every member is healthy. It restarts every time: the
# tutorial has no notion of "nothing changed".
#
# Starting: the unit is Type=notify, so `systemctl start etcd` blocks until the member has joined a
# cluster with quorum, and a member of a new cluster has none until enough of the others run. The
# tutorial runs its commands on every controller at once (tmux, synchronize-panes), so the members
# start together; a script that visits the hosts one by one gets the same with `--no-block` (and
# waits for the old process to be gone, so that a restart is under way before the next host), then
# waits for the cluster once at the end.
#
# usage: kthw_etcd.sh [--control-master] -F SSH_CONFIG -p PKI_DIR -u UNITS_DIR -d DATA_DIR [-r RECORD] HOST...
#   SSH_CONFIG  `Host controller-N` blocks (bench/lib.py ssh-config INVENTORY)
#   PKI_DIR     the output of `k8sboot gen-certs`
#   UNITS_DIR   UNITS_DIR/HOST.etcd.service, rendered by k8sboot (bench/etcd writes them)
#   DATA_DIR    the member's data dir, /var/lib/etcd/<cluster name>
#   RECORD      the name of the record deploy-etcd writes into the data dir (k8sboot-member.json,
#               0600): UNITS_DIR/HOST.RECORD is shipped there too, so the end state is the same
#   --control-master   one multiplexed connection per host (ControlMaster auto, ControlPersist),
#                      closed at the end of the run
set -euo pipefail

CM=0 CFG="" PKI="" UNITS="" DATA="" RECORD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --control-master) CM=1; shift ;;
    -F) CFG=$2; shift 2 ;;
    -p) PKI=$2; shift 2 ;;
    -u) UNITS=$2; shift 2 ;;
    -d) DATA=$2; shift 2 ;;
    -r) RECORD=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "kthw_etcd.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -n "$CFG" ] && [ -n "$PKI" ] && [ -n "$UNITS" ] && [ -n "$DATA" ] && [ $# -gt 0 ] || {
  echo "usage: kthw_etcd.sh [--control-master] -F SSH_CONFIG -p PKI_DIR -u UNITS_DIR -d DATA_DIR [-r RECORD] HOST..." >&2
  exit 2; }

HOSTS=("$@")
CFG=$(realpath "$CFG") PKI=$(realpath "$PKI") UNITS=$(realpath "$UNITS")
SSH_OPTS=(-F "$CFG")
if [ "$CM" = 1 ]; then
  CM_DIR=$(mktemp -d /tmp/kthw-cm.XXXXXX)
  SSH_OPTS+=(-o ControlMaster=auto -o "ControlPath=$CM_DIR/%C" -o ControlPersist=60)
  close_masters() {
    for h in "${HOSTS[@]}"; do ssh "${SSH_OPTS[@]}" -O exit "$h" 2>/dev/null || true; done
    rm -rf "$CM_DIR"
  }
  trap close_masters EXIT
fi

cd "$PKI"
for instance in "${HOSTS[@]}"; do
  record=()
  [ -z "$RECORD" ] || record=("$UNITS/$instance.$RECORD")
  scp -q "${SSH_OPTS[@]}" \
    etcd-ca.pem etcd-server.pem etcd-server-key.pem etcd-peer.pem etcd-peer-key.pem "$UNITS/$instance.etcd.service" \
    "${record[@]}" "${instance}:~/"

  ssh "${SSH_OPTS[@]}" "$instance" "set -e; DATA=$DATA; RECORD=$RECORD; mv ${instance}.etcd.service etcd.service;
    [ -z \"\$RECORD\" ] || mv ${instance}.\$RECORD \$RECORD;"'
    mkdir -p /etc/etcd "$DATA"
    chmod 0700 /etc/etcd "$DATA"
    if [ -n "$RECORD" ]; then chmod 0600 "$RECORD"; chown root:root "$RECORD"; mv "$RECORD" "$DATA/$RECORD"; fi
    chmod 0644 etcd-ca.pem etcd-server.pem etcd-peer.pem etcd.service
    chmod 0600 etcd-server-key.pem etcd-peer-key.pem
    chown root:root etcd-ca.pem etcd-server.pem etcd-server-key.pem etcd-peer.pem etcd-peer-key.pem etcd.service
    mv etcd-ca.pem etcd-server.pem etcd-server-key.pem etcd-peer.pem etcd-peer-key.pem /etc/etcd/
    mv etcd.service /etc/systemd/system/etcd.service
    systemctl daemon-reload
    systemctl enable etcd 2>/dev/null
    old=$(systemctl show -p MainPID --value etcd)
    systemctl restart --no-block etcd
    while [ "$old" != 0 ] && [ "$(systemctl show -p MainPID --value etcd)" = "$old" ]; do sleep 0.05; done'
done

# the tutorial's verification, until it holds: every member healthy
first=${HOSTS[0]}
ssh "${SSH_OPTS[@]}" "$first" "n=${#HOSTS[@]};"'
  export ETCDCTL_API=3
  for i in $(seq 1 600); do
    out=$(etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/etcd-ca.pem \
            --cert=/etc/etcd/etcd-server.pem --key=/etc/etcd/etcd-server-key.pem \
            --command-timeout=2s endpoint health --cluster 2>&1) &&
      [ "$(printf "%s\n" "$out" | grep -c "is healthy")" -eq "$n" ] && exit 0
    sleep 0.1
  done
  echo "etcd is not healthy on every member after 60 s: $out" >&2
  exit 1'

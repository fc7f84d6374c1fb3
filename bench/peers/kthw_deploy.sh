#!/usr/bin/env bash
# The Kubernetes The Hard Way way of shipping the API server: for each controller, one after
# another, `scp` the certificates, the encryption config and the rendered unit to the home
# directory, then one `ssh` that moves them into place and (re)starts the service. It does
# exactly the job of `k8sboot deploy-apiserver` (same files, modes, unit, daemon-reload, enable,
# restart, wait until active), so the benchmark compares like with like. It restarts every time:
# the tutorial has no notion of "nothing changed".
#
# usage: kthw_deploy.sh [--control-master] -F SSH_CONFIG -p PKI_DIR -u UNITS_DIR HOST...
#   SSH_CONFIG  `Host controller-N` blocks (HostName, User, IdentityFile, UserKnownHostsFile);
#               everything else is OpenSSH's default, as for a tutorial reader
#   PKI_DIR     the output of `k8sboot gen-certs`
#   UNITS_DIR   UNITS_DIR/HOST.kube-apiserver.service, from `k8sboot render-apiserver --out UNITS_DIR`
#   --control-master   the fair variant: one multiplexed connection per host (ControlMaster auto,
#                      ControlPersist), closed at the end of the run
set -euo pipefail

CM=0 CFG="" PKI="" UNITS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --control-master) CM=1; shift ;;
    -F) CFG=$2; shift 2 ;;
    -p) PKI=$2; shift 2 ;;
    -u) UNITS=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "kthw_deploy.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
[ -n "$CFG" ] && [ -n "$PKI" ] && [ -n "$UNITS" ] && [ $# -gt 0 ] || {
  echo "usage: kthw_deploy.sh [--control-master] -F SSH_CONFIG -p PKI_DIR -u UNITS_DIR HOST..." >&2; exit 2; }

HOSTS=("$@")
CFG=$(realpath "$CFG") PKI=$(realpath "$PKI") UNITS=$(realpath "$UNITS")
SSH_OPTS=(-F "$CFG")
CM_DIR=""
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
  scp -q "${SSH_OPTS[@]}" \
    ca.pem kubernetes.pem kubernetes-key.pem service-account.pem service-account-key.pem \
    kube-apiserver-kubelet-client.pem kube-apiserver-kubelet-client-key.pem \
    encryption-config.yaml etcd-ca.pem apiserver-etcd-client.pem apiserver-etcd-client-key.pem "$UNITS/$instance.kube-apiserver.service" \
    "${instance}:~/"

  ssh "${SSH_OPTS[@]}" "$instance" "set -e; mv ${instance}.kube-apiserver.service kube-apiserver.service;"'
    mkdir -p /var/lib/kubernetes
    chmod 0700 /var/lib/kubernetes
    chmod 0644 ca.pem kubernetes.pem service-account.pem kube-apiserver-kubelet-client.pem kube-apiserver.service \
      etcd-ca.pem apiserver-etcd-client.pem
    chmod 0600 kubernetes-key.pem service-account-key.pem kube-apiserver-kubelet-client-key.pem encryption-config.yaml \
      apiserver-etcd-client-key.pem
    chown root:root ca.pem kubernetes.pem kubernetes-key.pem service-account.pem service-account-key.pem \
      kube-apiserver-kubelet-client.pem kube-apiserver-kubelet-client-key.pem encryption-config.yaml \
      etcd-ca.pem apiserver-etcd-client.pem apiserver-etcd-client-key.pem kube-apiserver.service
    mv ca.pem kubernetes.pem kubernetes-key.pem service-account.pem service-account-key.pem \
      kube-apiserver-kubelet-client.pem kube-apiserver-kubelet-client-key.pem encryption-config.yaml \
      etcd-ca.pem apiserver-etcd-client.pem apiserver-etcd-client-key.pem /var/lib/kubernetes/
    mv kube-apiserver.service /etc/systemd/system/kube-apiserver.service
    systemctl daemon-reload
    systemctl enable kube-apiserver 2>/dev/null
    systemctl restart kube-apiserver
    for i in $(seq 1 100); do
      systemctl is-active --quiet kube-apiserver && exit 0
      sleep 0.1
    done
    echo "kube-apiserver is not active on $(hostname): $(systemctl is-active kube-apiserver)" >&2
    exit 1'
done

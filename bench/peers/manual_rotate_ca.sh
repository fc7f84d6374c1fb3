#!/usr/bin/env bash
# The by-hand way to rotate the cluster CA (and etcd's CA with it), as a Kubernetes The Hard Way
# reader would script the upstream "Manual Rotation of CA Certificates" procedure: openssl for the
# new CAs and the re-signed leaves, then for each host in turn one `scp` of the phase's files and
# one `ssh` that puts them in place, restarts and waits until `is-active` (etcd members, then
# controllers, then the load balancer, which reloads). Three passes:
#   start    new CA + new etcd CA; every trust store becomes a bundle, new CA first, then the old
#            one: the controllers' ca.pem and etcd-ca.pem, etcd's etcd-ca.pem, the LB's ca.pem
#   reissue  every leaf of the PKI re-signed by the new CA from its own key (openssl x509
#            -x509toreq / -req: same key, subject, SANs, usages); the new CAs take the canonical
#            names, the old CA keys are retired; the new certs go to the etcd members (serving,
#            peer), the controllers (serving, kubelet client, etcd client) and the LB (health cert)
#   finish   every bundle reduced to the new CA; the old CA certs retired
# There is no health gate (the next host restarts as soon as the previous one is `active`) and no
# load-balancer drain: the tutorial has neither.
#
# It reaches the end state `k8sboot rotate ca start|reissue|finish` reaches, so that `k8sboot
# verify` finds nothing to report afterwards; even its PKI dir's names on the way are k8sboot's:
#   start:   ca-new.pem / ca-new-key.pem, etcd-ca-new.pem / etcd-ca-new-key.pem (keys 0600),
#            ca-trust.pem and etcd-ca-trust.pem (the bundles: new, then old; 0644)
#   reissue: ca.pem / ca-key.pem and etcd-ca.pem / etcd-ca-key.pem are the new CAs; the old certs
#            stay as ca-old.pem / etcd-ca-old.pem (still in the bundles); the old keys go to
#            retired/ca-key.<stamp>.pem / retired/etcd-ca-key.<stamp>.pem (0600); the -new files
#            are gone; every leaf re-signed in place (its key untouched)
#   finish:  retired/ca.<stamp>.pem / retired/etcd-ca.<stamp>.pem (0600) hold the old CA certs;
#            ca-old.pem, etcd-ca-old.pem and the -trust bundles are gone
#   <stamp>: when start made the new CA (UTC, 20261205T060000Z), as k8sboot names retired files
#            after the rotation's start (here: the new CA cert's mtime, kept by mv)
# and on the hosts, with k8sboot's modes, root:root: /var/lib/kubernetes/{ca,etcd-ca}.pem (0644),
# /etc/etcd/etcd-ca.pem (0644), /etc/haproxy/k8sboot/ca.pem (0644) and k8sboot-health.pem (cert +
# key, 0600); every leaf on a host the local one. No unit changes: the trust files keep their names.
#
# usage: manual_rotate_ca.sh [--control-master] [-a KEY_ALG] [--phase start|reissue|finish]...
#                            [--etcd HOST]... [--lb HOST]... -F SSH_CONFIG -p PKI_DIR HOST...
#   HOST        the controllers (kube-apiserver)
#   --etcd      an etcd member (repeatable; default: every HOST, as in the tutorial)
#   --lb        a load balancer host (HAProxy, k8sboot's /etc/haproxy/k8sboot layout; repeatable)
#   SSH_CONFIG  `Host NAME` blocks (HostName, User, IdentityFile, UserKnownHostsFile) for every
#               host; OpenSSH's defaults otherwise, as for a tutorial reader (bench/lib.py ssh-config)
#   PKI_DIR     the PKI dir the inventory points to (the output of `k8sboot gen-certs`)
#   KEY_ALG     rsa-2048 (default), rsa-3072, rsa-4096 or ecdsa-p256: the inventory's pki.key_algorithm
#   --phase     run only these phases (default: all three, in order)
#   --control-master   one multiplexed connection per host (ControlMaster auto, ControlPersist),
#                      closed at the end of the run
# The remote commands are built on this side on purpose ($D, $E, $L, $WAIT expand here):
# shellcheck disable=SC2016,SC2029
set -euo pipefail

CM=0 CFG="" PKI="" ALG="rsa-2048" PHASES=() ETCD=() LBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --control-master) CM=1; shift ;;
    --phase) PHASES+=("$2"); shift 2 ;;
    --etcd) ETCD+=("$2"); shift 2 ;;
    --lb) LBS+=("$2"); shift 2 ;;
    -a) ALG=$2; shift 2 ;;
    -F) CFG=$2; shift 2 ;;
    -p) PKI=$2; shift 2 ;;
    --) shift; break ;;
    -*) echo "manual_rotate_ca.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [ -z "$CFG" ] || [ -z "$PKI" ] || [ $# -eq 0 ]; then
  echo "usage: manual_rotate_ca.sh [--control-master] [-a KEY_ALG] [--phase start|reissue|finish]... [--etcd HOST]... [--lb HOST]... -F SSH_CONFIG -p PKI_DIR HOST..." >&2
  exit 2
fi
[ ${#PHASES[@]} -gt 0 ] || PHASES=(start reissue finish)
for p in "${PHASES[@]}"; do
  case "$p" in start|reissue|finish) ;; *) echo "manual_rotate_ca.sh: unknown phase $p" >&2; exit 2 ;; esac
done
case "$ALG" in
  rsa-2048|rsa-3072|rsa-4096|ecdsa-p256) ;;
  *) echo "manual_rotate_ca.sh: unsupported key algorithm $ALG" >&2; exit 2 ;;
esac

HOSTS=("$@")
[ ${#ETCD[@]} -gt 0 ] || ETCD=("${HOSTS[@]}")
CFG=$(realpath "$CFG") PKI=$(realpath "$PKI")
SSH_OPTS=(-F "$CFG")
STAGE=$(mktemp -d /tmp/manual-rotate-ca.XXXXXX)
cleanup() { rm -rf "$STAGE"; }
if [ "$CM" = 1 ]; then
  CM_DIR=$(mktemp -d /tmp/manual-rotate-cm.XXXXXX)
  SSH_OPTS+=(-o ControlMaster=auto -o "ControlPath=$CM_DIR/%C" -o ControlPersist=60)
  cleanup() {
    local h
    for h in "${HOSTS[@]}" "${ETCD[@]}" "${LBS[@]}"; do ssh "${SSH_OPTS[@]}" -O exit "$h" 2>/dev/null || true; done
    rm -rf "$CM_DIR" "$STAGE"
  }
fi
trap cleanup EXIT

D=/var/lib/kubernetes
E=/etc/etcd
L=/etc/haproxy/k8sboot
# restart a unit, wait until active (at most 10 s)
WAIT='for i in $(seq 1 100); do
    systemctl is-active --quiet "$u" && exit 0
    sleep 0.1
  done
  echo "$u is not active on $(hostname): $(systemctl is-active "$u")" >&2
  exit 1'
ETCD_LEAVES="etcd-server etcd-peer apiserver-etcd-client etcd-healthcheck-client"

cd "$PKI"

genkey() {       # genkey OUT: a new private key of $ALG, 0600 from the start
  case "$ALG" in
    rsa-*) (umask 077; openssl genpkey -algorithm RSA -pkeyopt "rsa_keygen_bits:${ALG#rsa-}" -out "$1" 2>/dev/null) ;;
    ecdsa-p256) (umask 077; openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1") ;;
  esac
  chmod 0600 "$1"
}

days_of() {      # days_of CERT: its validity in whole days (notAfter - notBefore)
  local nb na
  nb=$(openssl x509 -in "$1" -noout -startdate | cut -d= -f2)
  na=$(openssl x509 -in "$1" -noout -enddate | cut -d= -f2)
  echo $(( ($(date -u -d "$na" +%s) - $(date -u -d "$nb" +%s)) / 86400 ))
}

stamp() {        # when start made the new CA: the retired files' suffix
  local f=ca-new.pem
  [ -f "$f" ] || f=ca.pem
  date -u -r "$f" +%Y%m%dT%H%M%SZ
}

# push HOST CMD FILE...: one scp of the staged files to ~, one ssh that runs CMD there
push() {
  local host=$1 cmd=$2
  shift 2
  scp -q "${SSH_OPTS[@]}" "$@" "${host}:~/"
  ssh "${SSH_OPTS[@]}" "$host" "set -e
  $cmd"
}

# the three kinds of host, each in turn: files from $STAGE/<kind>/, installed, restarted
to_etcd() {      # to_etcd FILE...: into /etc/etcd (keys 0600), restart etcd
  local h f names=()
  for f in "$@"; do names+=("$(basename "$f")"); done
  for h in "${ETCD[@]}"; do
    push "$h" "chmod 0644 ${names[*]}
  chown root:root ${names[*]}
  mv ${names[*]} $E/
  u=etcd
  systemctl restart etcd
  $WAIT" "$@"
  done
}

to_controllers() {   # to_controllers FILE...: into /var/lib/kubernetes, restart kube-apiserver
  local h f names=()
  for f in "$@"; do names+=("$(basename "$f")"); done
  for h in "${HOSTS[@]}"; do
    push "$h" "chmod 0644 ${names[*]}
  chown root:root ${names[*]}
  mv ${names[*]} $D/
  u=kube-apiserver
  systemctl restart kube-apiserver
  $WAIT" "$@"
  done
}

to_lbs() {       # to_lbs FILE...: into /etc/haproxy/k8sboot (the health pem 0600), reload haproxy
  local h f names=()
  [ ${#LBS[@]} -gt 0 ] || return 0
  for f in "$@"; do names+=("$(basename "$f")"); done
  for h in "${LBS[@]}"; do
    push "$h" "chown root:root ${names[*]}
  chmod 0644 ${names[*]}
  [ ! -f k8sboot-health.pem ] || chmod 0600 k8sboot-health.pem
  mv ${names[*]} $L/
  u=haproxy
  systemctl reload haproxy
  $WAIT" "$@"
  done
}

# stage KIND NAME SOURCE: $STAGE/KIND/NAME is a copy of the local SOURCE (the name it gets there)
stage() {
  mkdir -p "$STAGE/$1"
  cp "$3" "$STAGE/$1/$2"
}

start() {
  local ca days
  for ca in ca etcd-ca; do
    if [ ! -f "$ca-new.pem" ]; then
      # a new key; the old CA's subject and validity, CA:TRUE, self-signed
      genkey "$ca-new-key.pem"
      days=$(days_of "$ca.pem")
      openssl x509 -x509toreq -in "$ca.pem" -signkey "$ca-new-key.pem" -out "$STAGE/$ca.csr" 2>/dev/null
      openssl x509 -req -in "$STAGE/$ca.csr" -signkey "$ca-new-key.pem" -days "$days" -out "$ca-new.pem" \
        -extfile <(printf '%s\n' 'basicConstraints=critical,CA:TRUE' \
                     'keyUsage=critical,digitalSignature,keyCertSign,cRLSign' 'subjectKeyIdentifier=hash') 2>/dev/null
      chmod 0644 "$ca-new.pem"
    fi
    cat "$ca-new.pem" "$ca.pem" > "$ca-trust.pem"       # new first, then old
    chmod 0644 "$ca-trust.pem"
  done
  rm -rf "${STAGE:?}"/*
  stage etcd etcd-ca.pem etcd-ca-trust.pem
  stage ctl ca.pem ca-trust.pem
  stage ctl etcd-ca.pem etcd-ca-trust.pem
  stage lb ca.pem ca-trust.pem
  to_etcd "$STAGE"/etcd/*
  to_controllers "$STAGE"/ctl/*
  to_lbs "$STAGE"/lb/*
}

# resign NAME CA: NAME.pem re-signed by CA (the new one) from its own key NAME-key.pem
resign() {
  local name=$1 ca=$2 days
  days=$(days_of "$name.pem")
  openssl x509 -x509toreq -in "$name.pem" -signkey "$name-key.pem" -copy_extensions copy \
    -out "$STAGE/$name.csr" 2>/dev/null
  openssl x509 -req -in "$STAGE/$name.csr" -CA "$ca.pem" -CAkey "$ca-key.pem" -copy_extensions copy -days "$days" \
    -extfile <(printf '%s\n' 'subjectKeyIdentifier=hash' 'authorityKeyIdentifier=keyid:always') \
    -out "$STAGE/$name.pem" 2>/dev/null
  chmod 0644 "$STAGE/$name.pem"
  mv "$STAGE/$name.pem" "$name.pem"
}

reissue() {
  local ca s key name
  s=$(stamp)
  mkdir -p retired
  chmod 0700 retired
  for ca in ca etcd-ca; do
    if [ -f "$ca-new.pem" ]; then
      # the old key retired, the old cert kept (still trusted) as -old, the new CA canonical
      (umask 077; cp "$ca-key.pem" "retired/$ca-key.$s.pem")
      chmod 0600 "retired/$ca-key.$s.pem"
      mv "$ca.pem" "$ca-old.pem"
      mv "$ca-new-key.pem" "$ca-key.pem"
      mv "$ca-new.pem" "$ca.pem"
    fi
  done
  for key in *-key.pem; do
    name=${key%-key.pem}
    case "$name" in ca|etcd-ca|service-account) continue ;; esac
    [ -f "$name.pem" ] || continue
    case " $ETCD_LEAVES " in *" $name "*) resign "$name" etcd-ca ;; *) resign "$name" ca ;; esac
  done
  rm -rf "${STAGE:?}"/*
  stage etcd etcd-server.pem etcd-server.pem
  stage etcd etcd-peer.pem etcd-peer.pem
  stage ctl kubernetes.pem kubernetes.pem
  stage ctl kube-apiserver-kubelet-client.pem kube-apiserver-kubelet-client.pem
  stage ctl apiserver-etcd-client.pem apiserver-etcd-client.pem
  mkdir -p "$STAGE/lb"
  cat k8sboot-health.pem k8sboot-health-key.pem > "$STAGE/lb/k8sboot-health.pem"
  to_etcd "$STAGE"/etcd/*
  to_controllers "$STAGE"/ctl/*
  to_lbs "$STAGE"/lb/*
}

finish() {
  local ca s
  s=$(stamp)
  rm -rf "${STAGE:?}"/*
  stage etcd etcd-ca.pem etcd-ca.pem
  stage ctl ca.pem ca.pem
  stage ctl etcd-ca.pem etcd-ca.pem
  stage lb ca.pem ca.pem
  to_etcd "$STAGE"/etcd/*
  to_controllers "$STAGE"/ctl/*
  to_lbs "$STAGE"/lb/*
  # locally: the old CA certs retired, the bundles gone
  mkdir -p retired
  chmod 0700 retired
  for ca in ca etcd-ca; do
    if [ -f "$ca-old.pem" ]; then
      mv "$ca-old.pem" "retired/$ca.$s.pem"
      chmod 0600 "retired/$ca.$s.pem"
    fi
    rm -f "$ca-trust.pem"
  done
}

for p in "${PHASES[@]}"; do
  "$p"
done

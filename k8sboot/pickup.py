"""verify's proof that a running kube-apiserver uses the certificates on its disk (issue 13, point 4).

A new serving pair is deployed without a restart: the running server re-reads --tls-cert-file and
--tls-private-key-file by itself (about every minute), and --client-ca-file likewise. That a file
on the host is right says nothing about what the process holds in memory, so verify asks the
server itself, over TLS on each controller's secure port (the address and dialer of verify's
other probes):

- **serving cert presented**: one handshake that verifies nothing reads the certificate the
  server presents; its SHA-256 is compared with the local pki/kubernetes.pem. Another cert while
  the host's copy is the local one and changed less than `PICKUP_GRACE` ago is WARN (not picked
  up yet: the server looks again within its reload period); later it is DRIFT (the server has not
  re-read --tls-cert-file).
- **client cert from pki/ca.pem accepted**: a request as k8sboot's health identity (signed by
  the local CA) must be authenticated: any answer but 401 and no TLS alert. That proves the CA the
  server asks clients for holds the local one, by behaviour, as a client meets it.

- **authentication config in use** (only with an `authentication:` section, issue 14): the
  server's own record of the --authentication-config it applied, the `hash` label of
  `apiserver_authentication_config_controller_last_config_info` on GET /metrics (kube-apiserver
  1.34+; the lab's stand-in reports it the same way), read as admin, against the sha256 of the
  file k8sboot renders. The file is re-read without a restart; another hash shortly after the
  host's copy changed is WARN, later DRIFT (the new file did not load: the server keeps the old
  one and logs why). A server that reports no such metric (before 1.34) is WARN: unproven.

The age of the host's file comes from verify's facts (`stat -c '%.9Y'`, the host's clock) against
the workstation's clock: the grace is generous enough for hosts a few seconds off NTP. The checks
(`check_serving_cert`, `check_client_ca`) are pure; `read_presented` and `probe_host` dial.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from k8sboot import layout
from k8sboot.verify import DRIFT, OK, SKIP, Check, pem_fingerprint

WARN = "WARN"                 # shown, never drift: the exit code stays 0

# A real kube-apiserver looks at its serving pair every minute (and on a file event); the grace
# adds room for the deploy itself and for a host clock a little off the workstation's.
PICKUP_GRACE = 90.0

SERVING_CERT = layout.cert_file(layout.APISERVER)          # kubernetes.pem
SERVING_CERT_REMOTE = layout.remote_path(SERVING_CERT)
CA_REMOTE = layout.remote_path(layout.cert_file(layout.CA))
LIVEZ = "/livez"              # readable by any authenticated user (system:public-info-viewer)

AUTH_CONFIG = layout.AUTHENTICATION_CONFIG_FILE
AUTH_CONFIG_REMOTE = layout.AUTHENTICATION_CONFIG.path
AUTH_CONFIG_METRIC = "apiserver_authentication_config_controller_last_config_info"
METRICS = "/metrics"

SERVING_LABEL = "serving cert presented"
AUTH_CONFIG_LABEL = "authentication config in use"
CLIENT_CA_LABEL = "client cert from pki/ca.pem accepted"


@dataclass(frozen=True)
class Presented:
    """What one TLS handshake showed: the server's leaf (DER) or why there was none."""

    der: bytes | None
    error: str = ""
    version: str = ""         # TLSv1.3, ...


def fingerprint(der: bytes) -> str:
    """SHA256 fingerprint AA:BB:... of a DER certificate (as verify.pem_fingerprint prints one)."""
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def parse_mtimes(started: str) -> dict[str, float]:
    """Path -> mtime (seconds since the epoch) from verify's `started` section (`stat -c '%.9Y %n'`
    lines; the `start` line of the process is not a file)."""
    out: dict[str, float] = {}
    for line in started.splitlines():
        when, _, path = line.strip().partition(" ")
        if when == "start" or not path.startswith("/"):
            continue
        try:
            out[path] = float(when)
        except ValueError:
            continue
    return out


def _age(mtime: float | None, now: float) -> str:
    return "an unknown time" if mtime is None else f"{max(0.0, now - mtime):.0f} s"


def check_serving_cert(host: str, presented: Presented, local_fp: str | None, host_copy_is_local: bool,
                       mtime: float | None, now: float, grace: float = PICKUP_GRACE) -> Check:
    """The certificate the server presents against pki/kubernetes.pem (`local_fp`).

    `host_copy_is_local`: the host's --tls-cert-file has the local bytes (verify's file check);
    `mtime`: when that file last changed on the host; `now`: the workstation's clock."""
    if local_fp is None:
        return Check(host, SERVING_LABEL, SKIP, f"no local pki/{SERVING_CERT} to compare with")
    if presented.der is None:
        return Check(host, SERVING_LABEL, DRIFT, f"no TLS handshake: {presented.error}", local_fp, "")
    got = fingerprint(presented.der)
    if got == local_fp:
        return Check(host, SERVING_LABEL, OK, f"SHA256 {got}: pki/{SERVING_CERT}"
                     + (f" ({presented.version})" if presented.version else ""), local_fp, got)
    if not host_copy_is_local:
        return Check(host, SERVING_LABEL, DRIFT,
                     f"presents SHA256 {got}, not pki/{SERVING_CERT}, and the host's {SERVING_CERT_REMOTE} "
                     "is not the local one either: deploy-apiserver uploads it (no restart: the server "
                     "re-reads it)", local_fp, got)
    if mtime is not None and now - mtime < grace:
        return Check(host, SERVING_LABEL, WARN,
                     f"not picked up yet: {SERVING_CERT_REMOTE} changed {_age(mtime, now)} ago and the server "
                     f"still presents SHA256 {got}; a running kube-apiserver re-reads --tls-cert-file about "
                     "every minute: verify again shortly", local_fp, got)
    return Check(host, SERVING_LABEL, DRIFT,
                 f"the server presents an old serving cert (SHA256 {got}): it has not re-read --tls-cert-file, "
                 f"though {SERVING_CERT_REMOTE} is pki/{SERVING_CERT} since {_age(mtime, now)} ago — see its "
                 "journal (`journalctl -u kube-apiserver`: a pair that does not load is kept out), or "
                 "`systemctl restart kube-apiserver` on the host", local_fp, got)


def check_client_ca(host: str, answer, ca_mtime: float | None, now: float, grace: float = PICKUP_GRACE,
                    identity: str = "") -> Check:
    """A request with a client cert signed by pki/ca.pem (`answer`: a probe.ProbeAnswer, or None
    without a client cert): any HTTP answer but 401 means the server's --client-ca-file trusts the
    local CA. A refusal shortly after ca.pem changed on the host is WARN (not re-read yet)."""
    who = identity or "a client cert signed by pki/ca.pem"
    if answer is None:
        return Check(host, CLIENT_CA_LABEL, SKIP, "no client cert in pki/ to try (k8sboot-health or admin)")
    if answer.status is not None and answer.status != 401:
        return Check(host, CLIENT_CA_LABEL, OK, f"HTTP {answer.status} to {who}: --client-ca-file trusts pki/ca.pem",
                     "not 401", str(answer.status))
    why = (f"HTTP 401 to {who}" if answer.status == 401 else f"refused: {answer.error}")
    if answer.status is None and "TLS verification failed" in answer.error:
        return Check(host, CLIENT_CA_LABEL, SKIP, f"not tried: {answer.error} (see {SERVING_LABEL!r})")
    if ca_mtime is not None and now - ca_mtime < grace:
        return Check(host, CLIENT_CA_LABEL, WARN,
                     f"{why}; {CA_REMOTE} changed {_age(ca_mtime, now)} ago: not re-read yet, verify again "
                     "shortly", "not 401", str(answer.status or ""))
    return Check(host, CLIENT_CA_LABEL, DRIFT,
                 f"{why}: the server does not accept the local CA's client certs (its --client-ca-file holds "
                 "another CA, or it has not re-read the file); deploy-apiserver puts ca.pem back",
                 "not 401", str(answer.status or ""))


def config_hash(data: bytes) -> str:
    """How kube-apiserver labels a config file it applied: sha256:<hex> of the file's bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def applied_config_hash(metrics_text: str) -> str | None:
    """The `hash` label of the last authentication config the server applied, from /metrics text."""
    import re

    found = None
    for line in metrics_text.splitlines():
        if line.startswith(AUTH_CONFIG_METRIC + "{"):
            m = re.search(r'[{,]hash="([^"]*)"', line)
            if m:
                found = m.group(1)
    return found


def check_authentication_config(host: str, answer, local: bytes, host_copy_is_local: bool, mtime: float | None,
                                now: float, grace: float = PICKUP_GRACE) -> Check:
    """The config the server applied (`answer`: a probe.ProbeAnswer of GET /metrics as admin, or
    None without an admin cert) against the file k8sboot renders (`local`)."""
    want = config_hash(local)
    if answer is None:
        return Check(host, AUTH_CONFIG_LABEL, SKIP, "no pki/admin.pem to read /metrics with")
    if answer.status != 200:
        why = f"HTTP {answer.status}" if answer.status is not None else answer.error
        return Check(host, AUTH_CONFIG_LABEL, WARN, f"GET {METRICS} as admin: {why}: cannot tell which "
                     "authentication config the server applied", want, "")
    got = applied_config_hash(answer.body or "")
    if got is None:
        return Check(host, AUTH_CONFIG_LABEL, WARN, f"the server reports no {AUTH_CONFIG_METRIC} (kube-apiserver "
                     "before 1.34 has none): unproven which authentication config it applied", want, "")
    if got == want:
        return Check(host, AUTH_CONFIG_LABEL, OK, f"{want[:19]}…: the file rendered from the inventory", want, got)
    if not host_copy_is_local:
        return Check(host, AUTH_CONFIG_LABEL, DRIFT, f"the server applied {got[:19]}…, and the host's "
                     f"{AUTH_CONFIG_REMOTE} is not the rendered one either: deploy-apiserver uploads it (no "
                     "restart: the server re-reads it)", want, got)
    if mtime is not None and now - mtime < grace:
        return Check(host, AUTH_CONFIG_LABEL, WARN, f"not re-read yet: {AUTH_CONFIG_REMOTE} changed "
                     f"{_age(mtime, now)} ago and the server still reports {got[:19]}…: verify again shortly",
                     want, got)
    return Check(host, AUTH_CONFIG_LABEL, DRIFT,
                 f"the server still applies another authentication config ({got[:19]}…) though {AUTH_CONFIG_REMOTE} "
                 f"is the rendered one since {_age(mtime, now)} ago: the new file did not load (the server keeps "
                 "the old one; `journalctl -u kube-apiserver` says why)", want, got)


# --- on the wire ----------------------------------------------------------------------------------


def read_presented(address: str, port: int, timeout: float = 5.0, dial=None) -> Presented:
    """One TLS handshake with no verification and no client cert: the leaf the server presents,
    whoever signed it (an old or foreign cert is exactly what this must be able to see). `dial`:
    as in k8sboot.probe (ssh.proxy_jump)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        raw = dial(address, port, timeout) if dial is not None else socket.create_connection((address, port), timeout)
    except OSError as exc:
        return Presented(None, f"{type(exc).__name__}: {exc}")
    try:
        raw.settimeout(timeout)
        with context.wrap_socket(raw, server_hostname=address) as tls:
            return Presented(tls.getpeercert(binary_form=True), version=tls.version() or "")
    except (OSError, ssl.SSLError) as exc:
        return Presented(None, f"{type(exc).__name__}: {exc}")
    finally:
        raw.close()


def probe_host(inventory, host, port: int, facts, local_pki: dict[str, bytes], *, dial=None,
               timeout: float = 5.0, now: float | None = None) -> list[Check]:
    """Both checks for one controller whose kube-apiserver is active: the handshake, then a
    request as the health identity (else admin), both to its internal IP (what clients and the
    load balancer dial; the serving cert names it)."""
    from k8sboot import health, probe
    from k8sboot.errors import PkiError

    address = str(host.internal_ip)
    presented = read_presented(address, port, timeout, dial)
    local = local_pki.get(SERVING_CERT)
    local_fp = pem_fingerprint(local) if local else None
    mtimes = parse_mtimes(facts.sections.get("started", ""))
    now = time.time() if now is None else now
    fact = facts.file(SERVING_CERT_REMOTE)
    same = local is not None and fact.exists and fact.sha256 == hashlib.sha256(local).hexdigest()
    checks = [check_serving_cert(host.name, presented, local_fp, same, mtimes.get(SERVING_CERT_REMOTE), now)]
    try:
        ca, cert, key = health.credentials(inventory)
    except PkiError:
        answer, who = None, ""
    else:
        answer = probe.request(address, port, "GET", LIVEZ, ca, cert=cert, key=key, timeout=timeout, dial=dial)
        who = f"pki/{Path(cert).name}"
    checks.append(check_client_ca(host.name, answer, mtimes.get(CA_REMOTE), now, identity=who))
    auth = local_pki.get(AUTH_CONFIG)
    if auth is not None:
        checks.append(probe_authentication_config(inventory, host, port, facts, auth, mtimes, now,
                                                  dial=dial, timeout=timeout))
    return checks


def probe_authentication_config(inventory, host, port: int, facts, local: bytes, mtimes: dict[str, float],
                                now: float, *, dial=None, timeout: float = 5.0) -> Check:
    from k8sboot import health, probe, rotation
    from k8sboot.errors import PkiError

    pki_dir = Path(inventory.pki.dir)
    cert, key = pki_dir / layout.cert_file(layout.ADMIN), pki_dir / layout.key_file(layout.ADMIN)
    try:
        ca, _, _ = health.credentials(inventory)
    except PkiError:
        ca = pki_dir / rotation.trust_name(inventory.rotation, layout.cert_file(layout.CA))
    answer = None
    if cert.exists() and key.exists():
        answer = probe.request(str(host.internal_ip), port, "GET", METRICS, ca, cert=cert, key=key,
                               timeout=timeout, dial=dial, max_body=64 << 20)
    fact = facts.file(AUTH_CONFIG_REMOTE)
    same = fact.exists and fact.sha256 == hashlib.sha256(local).hexdigest()
    return check_authentication_config(host.name, answer, local, same, mtimes.get(AUTH_CONFIG_REMOTE), now)

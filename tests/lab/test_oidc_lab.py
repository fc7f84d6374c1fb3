"""People log in with OIDC on real lab hosts (issue 14): the inventory's `authentication:` section
deployed as --authentication-config to three controllers behind lb-0, idp-0 (Debian's nginx)
serving the discovery document and JWKS over HTTPS, ID tokens minted with idp-0's key.

For a table of tokens, the offline `k8sboot whoami --token` (keys fetched from idp-0 as the API
server fetches them) and the real `kubectl --token ... auth whoami` through the load balancer give
the same answer, and that answer is the one the upstream documentation gives for the mappings
(a prefix concatenated to the claim, groups from a list claim, system:authenticated added; the
claim and user validation rules refusing with 401). A change of the section alone is deployed
with no restart (same MainPID on every host), takes effect within seconds, `verify` proves the
running servers applied the new file (the hash they report), and a client loop through the load
balancer with an ID token sees no failure across it. A CEL expression that does not compile is
refused at `inventory check` and never reaches a host.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from http.client import HTTPSConnection
import ssl
from datetime import timedelta
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tests/deploy_helpers.py
from deploy_helpers import BackgroundLoop, fresh_lab_env, reset_hosts, wait_until_lb_serves  # noqa: E402

from k8sboot import layout  # noqa: E402

pytestmark = pytest.mark.lab

LB = "10.240.0.5"
AUDIENCE = "k8sboot-lab"
PICKUP_TIMEOUT = 30.0
REMOTE = layout.AUTHENTICATION_CONFIG.path

SECTION = """\
authentication:
  jwt:
    - issuer:
        url: {issuer}
        audiences: [{audiences}]
{policy}        certificateAuthorityFile: {ca}
      claimValidationRules:
        - expression: "claims.?email_verified.orValue(true) == true"
          message: the email address must be verified
        - {{claim: hd, requiredValue: example.com}}
      claimMappings:
        username: {{claim: email, prefix: ""}}
        groups: {{claim: groups, prefix: "{prefix}"}}
        uid: {{claim: sub}}
        extra:
          - key: example.com/tenant
            valueExpression: "claims.?tenant.orValue('')"
      userValidationRules:
        - expression: "!user.username.startsWith('system:')"
          message: usernames in system are reserved
"""


def section(idp, prefix: str = "oidc:", audiences: tuple[str, ...] = (AUDIENCE,)) -> str:
    policy = "        audienceMatchPolicy: MatchAny\n" if len(audiences) > 1 else ""
    return SECTION.format(issuer=idp.issuer, audiences=", ".join(audiences), policy=policy, ca=idp.ca_file,
                          prefix=prefix)


def mint(idp, sub: str = "jane-uid", **kwargs) -> str:
    from k8sboot.lab import idp as idpmod

    claims = {"hd": "example.com", "tenant": "t1", **kwargs.pop("claims", {})}
    claims = {k: v for k, v in claims.items() if v is not None}
    kwargs.setdefault("email", "jane@example.com")
    kwargs.setdefault("groups", ["dev", "ops"])
    return idpmod.mint_token(sub, directory=idp.directory, claims=claims, **kwargs)


@pytest.fixture(scope="module")
def env(lab_hosts, lab_lb, lab_idp, tmp_path_factory):
    e = fresh_lab_env(lab_hosts, tmp_path_factory, "oidc")
    try:
        text = e.inventory.read_text().replace(f"api_endpoint: https://{e.hosts[0].address}:6443",
                                                f"api_endpoint: https://{LB}:6443")
        e.base_text = text + f"load_balancers:\n  - {{name: lb-0, address: {LB}, internal_ip: {LB}}}\n"
        e.inventory = e.tmp / "lab-oidc.yaml"
        e.inventory.write_text(e.base_text + section(lab_idp))
        e.idp = lab_idp
        e.gen_certs()
        res, doc = e.deploy()
        assert res.exit_code == 0 and doc["ok"], res.output
        res = e.k8sboot("deploy-lb", "-i", e.inventory)
        assert res.exit_code == 0, res.output
        wait_until_lb_serves(e.pki, LB, timeout=60)
        yield e
    finally:
        reset_hosts(e)
        lab_lb.host.reset()


def kubectl_whoami(env, token: str) -> tuple[int, dict | str]:
    """The real kubectl with nothing but the token (no client cert in play), through lb-0."""
    r = subprocess.run(["kubectl", "--kubeconfig", "/dev/null", "--server", f"https://{LB}:6443",
                        "--certificate-authority", str(env.pki / "ca.pem"), "--token", token,
                        "--request-timeout=10s", "auth", "whoami", "-o", "json"],
                       capture_output=True, text=True, timeout=60)
    if r.returncode == 0:
        return 0, json.loads(r.stdout)["status"]["userInfo"]
    return r.returncode, r.stderr.strip()


def offline_whoami(env, token: str) -> tuple[int, dict | str]:
    res = env.k8sboot("whoami", "-i", env.inventory, "--token", token, "--json")
    if res.exit_code == 0:
        return 0, json.loads(res.stdout)["status"]["userInfo"]
    return res.exit_code, res.output


USER = {"username": "jane@example.com", "uid": "jane-uid",
        "groups": ["oidc:dev", "oidc:ops", "system:authenticated"],
        "extra": {"example.com/tenant": ["t1"]}}

# (case, mint kwargs, expected userInfo, or the fragment of the offline 401 reason)
TABLE = [
    ("good", {}, USER),
    ("one group as a string", {"groups": None, "claims": {"groups": "dev"}},
     {**USER, "groups": ["oidc:dev", "system:authenticated"]}),
    ("no tenant: no extra", {"claims": {"tenant": None}}, {k: v for k, v in USER.items() if k != "extra"}),
    ("wrong audience", {"audiences": ("someone-else",)}, "expected audience"),
    ("expired", {"expired": True}, "token is expired"),
    ("email not verified", {"email_verified": False}, "the email address must be verified"),
    ("wrong hd", {"claims": {"hd": "evil.example"}}, "required claim hd value does not match"),
    ("system: username", {"email": "system:admin@example.com"}, "usernames in system are reserved"),
]


@pytest.mark.parametrize("case,kwargs,want", TABLE, ids=[t[0] for t in TABLE])
def test_offline_whoami_and_kubectl_agree_with_the_docs(env, case, kwargs, want):
    token = mint(env.idp, **dict(kwargs))
    code, got = kubectl_whoami(env, token)
    ocode, ogot = offline_whoami(env, token)
    if isinstance(want, dict):
        assert code == 0, got
        assert got == want
        assert ocode == 0, ogot
        assert ogot == want
    else:
        assert code != 0 and "Unauthorized" in got, got
        assert ocode == 11, ogot
        assert want in ogot, ogot


def main_pids(env) -> dict[str, str]:
    return {h.name: env.ssh(h, f"systemctl show -p MainPID --value {layout.UNIT_NAME}").strip() for h in env.hosts}


class TokenLoop(BackgroundLoop):
    """A bounded client through lb-0: a SelfSubjectReview with an ID token on a new connection
    every 50 ms; each answer that is not 201 for the expected user is a failure."""

    def __init__(self, env, token: str, limit_s: float = 120.0):
        self.ctx = ssl.create_default_context(cafile=str(env.pki / "ca.pem"))
        self.token, self.limit_s = token, limit_s
        self.stop = threading.Event()
        self.results: list = []

    def _run(self):
        body = json.dumps({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1"})
        t_end = time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < t_end:
            try:
                conn = HTTPSConnection(LB, 6443, context=self.ctx, timeout=5)
                try:
                    conn.request("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", body=body,
                                 headers={"Authorization": f"Bearer {self.token}",
                                          "Content-Type": "application/json"})
                    r = conn.getresponse()
                    doc = r.read()
                    user = json.loads(doc)["status"]["userInfo"]["username"] if r.status == 201 else None
                    self.results.append(r.status if user == "jane@example.com" else f"{r.status} {doc[:200]!r}")
                finally:
                    conn.close()
            except Exception as exc:  # noqa: BLE001 - every failure counts
                self.results.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.05)

    def failures(self) -> list:
        return [r for r in self.results if r != 201]


def test_a_change_of_the_section_alone_reloads_without_restart_and_verify_proves_it(env):
    before = main_pids(env)
    token = mint(env.idp, ttl=timedelta(minutes=30))
    assert kubectl_whoami(env, token)[1]["groups"][:2] == ["oidc:dev", "oidc:ops"]
    with TokenLoop(env, token) as loop:
        env.inventory.write_text(env.base_text + section(env.idp, prefix="idp:", audiences=(AUDIENCE, "other")))
        res, doc = env.deploy()
        assert res.exit_code == 0 and doc["ok"], res.output
        assert {h["host"]: (h["outcome"], h["restarted"]) for h in doc["hosts"]} == \
            {h.name: ("deployed", False) for h in env.hosts}, doc
        deadline = time.monotonic() + PICKUP_TIMEOUT
        while True:
            code, got = kubectl_whoami(env, token)
            if code == 0 and got["groups"][:2] == ["idp:dev", "idp:ops"]:
                break
            assert time.monotonic() < deadline, f"the new mappings are not in effect: {got}"
            time.sleep(0.5)
        # every controller, directly: the new prefix (not only the one the LB picked)
        for h in env.hosts:
            deadline = time.monotonic() + PICKUP_TIMEOUT
            while True:
                r = subprocess.run(["kubectl", "--kubeconfig", "/dev/null", "--server", f"https://{h.address}:6443",
                                    "--certificate-authority", str(env.pki / "ca.pem"), "--token", token,
                                    "auth", "whoami", "-o", "json"], capture_output=True, text=True, timeout=60)
                if r.returncode == 0 and json.loads(r.stdout)["status"]["userInfo"]["groups"][0] == "idp:dev":
                    break
                assert time.monotonic() < deadline, (h.name, r.stdout, r.stderr)
                time.sleep(0.5)
        # the second audience is accepted too (MatchAny)
        other = mint(env.idp, audiences=("other",))
        assert kubectl_whoami(env, other)[0] == 0
    assert loop.results and loop.failures() == [], loop.failures()[:5]
    assert main_pids(env) == before                     # never restarted
    want = "sha256:" + hashlib.sha256(env.k8sboot("render-apiserver", "-i", env.inventory,
                                                  "--authentication-config").stdout.encode()).hexdigest()
    for h in env.hosts:
        on_host = env.ssh(h, f"sha256sum {REMOTE}").split()[0]
        assert f"sha256:{on_host}" == want
    res = env.k8sboot("verify", "-i", env.inventory, "--json")
    doc = json.loads(res.stdout)
    checks = [c for host in doc["hosts"] for c in host["checks"] if c["check"] == "authentication config in use"]
    assert len(checks) == len(env.hosts) and all(c["status"] == "OK" for c in checks), checks
    assert res.exit_code == 0, res.output


def test_a_cel_expression_that_does_not_compile_is_refused_and_never_deployed(env):
    shas = {h.name: env.ssh(h, f"sha256sum {REMOTE}").split()[0] for h in env.hosts}
    broken = env.tmp / "lab-oidc-broken.yaml"
    broken.write_text(env.inventory.read_text().replace("username: {claim: email, prefix: \"\"}",
                                                        "username: {expression: \"claim.email\"}"))
    r = subprocess.run([sys.executable, "-m", "k8sboot", "inventory", "check", "-i", str(broken)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "undeclared reference to 'claim.email'" in r.stderr, r.stderr
    assert f"{broken}:" in r.stderr.splitlines()[0]
    res = env.k8sboot("deploy-apiserver", "-i", broken)
    assert res.exit_code == 3
    assert {h.name: env.ssh(h, f"sha256sum {REMOTE}").split()[0] for h in env.hosts} == shas

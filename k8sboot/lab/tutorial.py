"""The tutorial's commands, verbatim, against the lab (`k8sboot lab tutorial`, `make tutorial`).

The article walks one cluster through Stage 1 and into Stage 2: the API server's flags, the admin's
certificate subject, `kubectl auth whoami`, the binding that makes system:masters powerful, a
namespace, a ServiceAccount and a token the API server issues for it, who that token is, its
claims, an anonymous request refused with 403, and RBAC's answer for both identities. This module
runs exactly those commands in one bash, in order, with real `ssh`, `openssl`, `kubectl`, `jq` and
`curl`, and returns each command with its output, as the article prints them.

What the runner arranges first, and says so on stderr (never part of the transcript):

* The tutorial's cluster runs with `--anonymous-auth=true` (that is what makes the anonymous curl a
  403, not a 401). The lab's inventory keeps it off, so controller-0 gets a copy of the lab
  inventory with `anonymous_auth: true` deployed (`deploy-apiserver --hosts controller-0`); the
  lab's own inventory is deployed back to controller-0 afterwards, also when a step fails.
* Every command talks to controller-0, as in the article (its kubeconfig's server is its first
  controller, and only controller-0 runs with --anonymous-auth=true). The objects are in the
  lab's etcd (`k8sboot deploy-etcd`, which `make demo` runs), shared by every controller.
  `kubectl` reads a kubeconfig written for controller-0 by `k8sboot kubeconfig admin --server`;
  `ssh controller-0` uses the lab's key and known_hosts.
* A namespace `authn-demo` left by an interrupted earlier run is deleted before the first step;
  the last step deletes the one this run made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from k8sboot.errors import ExitCode, K8sbootError
from k8sboot.lab import plan

NAMESPACE = "authn-demo"
SERVICE_ACCOUNT = "bot"
_STEP_MARK = "\x1ek8sboot-tutorial-step"
_RC_MARK = "\x1ek8sboot-tutorial-rc"
TOOLS = ("ssh", "openssl", "kubectl", "jq", "curl", "bash")


@dataclass(frozen=True)
class Step:
    """One command of the article; `rc` is the exit status the article's command has (can-i: 1 = no)."""

    command: str
    rc: int = 0


@dataclass(frozen=True)
class Ran:
    command: str
    output: str
    rc: int
    expected_rc: int

    @property
    def ok(self) -> bool:
        return self.rc == self.expected_rc

    def to_dict(self) -> dict:
        return {"command": self.command, "output": self.output, "rc": self.rc, "ok": self.ok}


def steps(controller: str) -> tuple[Step, ...]:
    """The article's commands against the controller at `controller` (an IP), in its order."""
    api = f"https://{controller}:6443"
    as_bot = f'kubectl --kubeconfig=/dev/null --server={api} --certificate-authority=pki/ca.pem --token="$TOK"'
    return (
        Step("ssh controller-0 'grep -oE \"\\-\\-(client-ca-file|service-account-key-file|anonymous-auth)[^ ]*\" "
             "/etc/systemd/system/kube-apiserver.service'"),
        Step("openssl x509 -in pki/admin.pem -noout -subject"),
        Step("kubectl auth whoami"),
        Step("kubectl get clusterrolebinding cluster-admin "
             "-o jsonpath='{.roleRef.kind}/{.roleRef.name} <- {.subjects[0].kind}/{.subjects[0].name}{\"\\n\"}'"),
        Step(f"kubectl create namespace {NAMESPACE}"),
        Step(f"kubectl -n {NAMESPACE} create serviceaccount {SERVICE_ACCOUNT}"),
        Step(f"TOK=$(kubectl -n {NAMESPACE} create token {SERVICE_ACCOUNT} --duration=10m)"),
        Step(f"{as_bot} auth whoami"),
        Step("jq -R 'split(\".\") | .[1] | gsub(\"-\"; \"+\") | gsub(\"_\"; \"/\") | @base64d | fromjson' "
             "<<< \"$TOK\""),
        Step(f"curl -s --cacert pki/ca.pem {api}/api/v1/namespaces/default/pods"),
        Step("kubectl auth can-i list pods"),
        Step(f"{as_bot} auth can-i list pods -n {NAMESPACE}", rc=1),
        Step(f"kubectl delete namespace {NAMESPACE}"),
    )


def script(chosen: tuple[Step, ...]) -> str:
    """One bash program: every step in the same shell (TOK carries over), each fenced by marks; it
    stops at the first step whose exit status is not the article's (the next ones build on it)."""
    lines = ["ssh() { command ssh -F \"$K8SBOOT_TUTORIAL_SSH_CONFIG\" \"$@\"; }"]
    for i, step in enumerate(chosen):
        lines.append(f"printf '{_STEP_MARK} {i}\\n'")
        lines.append(f"{{ {step.command}\n}} 2>&1")
        lines.append(f"rc=$?; printf '\\n{_RC_MARK} %d\\n' $rc; [ $rc -eq {step.rc} ] || exit 1")
    return "\n".join(lines) + "\n"


def parse_transcript(text: str, chosen: tuple[Step, ...]) -> list[Ran]:
    """The output of `script()` cut back into one record per step (a step never reached is absent)."""
    ran = []
    pattern = re.compile(rf"{_STEP_MARK} (\d+)\n(.*?)\n{_RC_MARK} (\d+)\n", re.DOTALL)
    for match in pattern.finditer(text):
        step = chosen[int(match.group(1))]
        ran.append(Ran(step.command, match.group(2).rstrip("\n"), int(match.group(3)), step.rc))
    return ran


def _ssh_config(host: str, address: str) -> str:
    return (f"Host {host}\n  HostName {address}\n  User root\n  IdentityFile {plan.CLIENT_KEY}\n"
            "  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n"
            f"  UserKnownHostsFile {plan.KNOWN_HOSTS}\n  GlobalKnownHostsFile /dev/null\n"
            "  ConnectTimeout 5\n  LogLevel ERROR\n")


def with_anonymous_auth(inventory_text: str) -> str:
    """The lab inventory as the tutorial's cluster runs it: `anonymous_auth: true`."""
    text, n = re.subn(r"(?m)^(  anonymous_auth:) *false *$", r"\1 true", inventory_text)
    if n != 1:
        raise K8sbootError("the lab inventory has no `anonymous_auth: false` line to turn on",
                           hint="bring the lab up again: `k8sboot lab up` rewrites inventory/lab.yaml",
                           code=ExitCode.LAB)
    return text


class Runner:
    """Runs the tutorial in `root` (where inventory/lab.yaml, pki/ and the venv's tools are)."""

    def __init__(self, root: Path, inventory: Path, say=lambda message: None):
        self.root = root
        self.inventory = inventory
        self.say = say
        self.k8sboot = [sys.executable, "-m", "k8sboot"]
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}

    def _k8sboot(self, *args: str) -> None:
        proc = subprocess.run([*self.k8sboot, *args], cwd=self.root, env=self.env, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise K8sbootError(f"tutorial set-up: `k8sboot {' '.join(args)}` failed: {last}",
                               hint="run `make demo` first (lab up, gen-certs, deploy-etcd, deploy-apiserver), "
                                    "then `make tutorial`",
                               code=ExitCode.LAB)

    def _missing_tools(self) -> list[str]:
        return [t for t in TOOLS if shutil.which(t, path=self.env["PATH"]) is None]

    def run(self) -> list[Ran]:
        from k8sboot.inventory import load_inventory

        missing = self._missing_tools()
        if missing:
            raise K8sbootError(f"tutorial: {', '.join(missing)} not found on PATH",
                               hint="`make deps` installs them", code=ExitCode.PREREQ)
        inv = load_inventory(self.inventory)
        controller = inv.controllers[0]
        with tempfile.TemporaryDirectory(prefix="k8sboot-tutorial-") as tmp:
            work = Path(tmp)
            tutorial_inventory = work / "lab-anonymous.yaml"
            tutorial_inventory.write_text(with_anonymous_auth(self.inventory.read_text()))
            kubeconfig = work / "controller-0.kubeconfig"
            (work / "ssh_config").write_text(_ssh_config(controller.name, controller.address))
            env = {**self.env, "KUBECONFIG": str(kubeconfig), "K8SBOOT_TUTORIAL_SSH_CONFIG": str(work / "ssh_config")}
            self.say(f"tutorial: {controller.name} runs with --anonymous-auth=true for the tutorial "
                     f"(deploy-apiserver --hosts {controller.name})")
            self._k8sboot("deploy-apiserver", "-i", str(tutorial_inventory), "--hosts", controller.name)
            try:
                self._k8sboot("kubeconfig", "admin", "-i", str(self.inventory), "--out", str(kubeconfig),
                              "--server", f"https://{controller.address}:6443")
                left = subprocess.run(["kubectl", "get", "namespace", NAMESPACE, "-o", "name"], env=env,
                                      cwd=self.root, capture_output=True, text=True)
                if left.returncode == 0:
                    self.say(f"tutorial: deleting namespace {NAMESPACE} left by an earlier run")
                    subprocess.run(["kubectl", "delete", "namespace", NAMESPACE], env=env, cwd=self.root,
                                   capture_output=True, text=True)
                chosen = steps(controller.address)
                proc = subprocess.run(["bash", "-c", script(chosen)], env=env, cwd=self.root,
                                      capture_output=True, text=True, timeout=300)
                ran = parse_transcript(proc.stdout, chosen)
                if not ran or not ran[-1].ok:
                    subprocess.run(["kubectl", "delete", "namespace", NAMESPACE, "--ignore-not-found"],
                                   env=env, cwd=self.root, capture_output=True, text=True)
                return ran
            finally:
                self.say(f"tutorial: {controller.name} back to the lab inventory ({self.inventory})")
                self._k8sboot("deploy-apiserver", "-i", str(self.inventory), "--hosts", controller.name)


def render(ran: list[Ran]) -> str:
    """As the article prints them: `$ command`, then what it printed."""
    out = []
    for r in ran:
        out.append(f"$ {r.command}")
        if r.output:
            out.append(r.output)
        if not r.ok:
            out.append(f"(exit status {r.rc}, expected {r.expected_rc})")
    return "\n".join(out) + "\n"

"""`k8sboot lab tutorial`'s pure parts: the article's commands, run in one real bash so that TOK
carries from one step to the next, cut back into one record per step, stopped at the first step
whose exit status is not the article's. The lab run itself is tests/lab/test_tutorial.py."""

from __future__ import annotations

import subprocess

import pytest

from k8sboot.errors import K8sbootError
from k8sboot.lab import tutorial
from k8sboot.lab.tutorial import Step


def run_script(chosen):
    proc = subprocess.run(["bash", "-c", tutorial.script(chosen)], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "K8SBOOT_TUTORIAL_SSH_CONFIG": "/dev/null"})
    return tutorial.parse_transcript(proc.stdout, chosen)


def test_steps_share_one_shell_and_each_keeps_its_own_output_and_status():
    chosen = (Step("TOK=$(echo abc.def.ghi)"), Step('echo "token: $TOK"; echo second line'),
              Step("echo to-stderr >&2; false", rc=1), Step("printf 'no newline'"))
    ran = run_script(chosen)
    assert [(r.command, r.output, r.rc, r.ok) for r in ran] == [
        ("TOK=$(echo abc.def.ghi)", "", 0, True),
        ('echo "token: $TOK"; echo second line', "token: abc.def.ghi\nsecond line", 0, True),
        ("echo to-stderr >&2; false", "to-stderr", 1, True),
        ("printf 'no newline'", "no newline", 0, True),
    ]


def test_the_run_stops_at_the_first_step_whose_status_is_not_the_articles():
    ran = run_script((Step("echo one"), Step("sh -c 'echo boom; exit 3'"), Step("echo never")))
    assert [r.output for r in ran] == ["one", "boom"]
    assert not ran[1].ok and ran[1].rc == 3
    assert "(exit status 3, expected 0)" in tutorial.render(ran)


def test_render_prints_each_command_then_its_output_as_the_article_does():
    ran = [tutorial.Ran("kubectl create namespace authn-demo", "namespace/authn-demo created", 0, 0),
           tutorial.Ran("TOK=$(kubectl -n authn-demo create token bot --duration=10m)", "", 0, 0)]
    assert tutorial.render(ran) == ("$ kubectl create namespace authn-demo\nnamespace/authn-demo created\n"
                                    "$ TOK=$(kubectl -n authn-demo create token bot --duration=10m)\n")


def test_the_articles_commands_in_its_order():
    commands = [s.command for s in tutorial.steps("10.240.0.10")]
    assert commands[0].startswith("ssh controller-0 'grep -oE")
    assert "/etc/systemd/system/kube-apiserver.service" in commands[0]
    assert commands[1:3] == ["openssl x509 -in pki/admin.pem -noout -subject", "kubectl auth whoami"]
    assert commands[4:7] == ["kubectl create namespace authn-demo", "kubectl -n authn-demo create serviceaccount bot",
                             "TOK=$(kubectl -n authn-demo create token bot --duration=10m)"]
    assert "--token=\"$TOK\" auth whoami" in commands[7] and "--server=https://10.240.0.10:6443" in commands[7]
    assert commands[-1] == "kubectl delete namespace authn-demo"
    assert [s.rc for s in tutorial.steps("10.240.0.10")].count(1) == 1     # only the bot's can-i is a "no"


def test_the_tutorial_inventory_differs_from_the_labs_only_by_anonymous_auth():
    lab = "apiserver:\n  anonymous_auth: false\n  authorization_mode: [Node, RBAC]\n"
    assert tutorial.with_anonymous_auth(lab) == lab.replace("anonymous_auth: false", "anonymous_auth: true")
    with pytest.raises(K8sbootError, match="no `anonymous_auth: false` line"):
        tutorial.with_anonymous_auth("apiserver:\n  anonymous_auth: true\n")

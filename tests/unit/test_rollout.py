"""Which hosts switch when (k8sboot.rollout), and the roll's wait for the load balancers."""

from __future__ import annotations

import ipaddress

import pytest

from k8sboot import deploy as D
from k8sboot import rollout as R
from k8sboot.errors import RemoteError
from k8sboot.model import Host
from k8sboot.remote import CommandResult


def cand(name, serving=True, takes_down=True):
    return R.Candidate(name, serving, takes_down)


@pytest.mark.parametrize("c,strategy,waits", [
    (cand("a"), None, True),                                 # serving and restarting: a wave
    (cand("a", serving=False), None, False),                 # nothing serves yet: at once
    (cand("a", takes_down=False), None, False),              # a reload, a mode fix, --no-restart
    (cand("a"), R.PARALLEL, False),
    (cand("a", serving=False), R.ROLLING, True),             # asked for: one at a time anyway
    (cand("a", takes_down=False), R.ROLLING, False),
])
def test_which_hosts_wait_for_a_wave(c, strategy, waits):
    assert R.waits_for_wave(c, strategy) is waits


def test_waves_keep_inventory_order_with_idle_hosts_first_and_at_most_max_unavailable():
    cs = [cand("c0"), cand("c1", serving=False), cand("c2"), cand("c3"), cand("c4")]
    assert R.build_waves(cs, 1) == [("c1",), ("c0",), ("c2",), ("c3",), ("c4",)]
    assert R.build_waves(cs, 2) == [("c1",), ("c0", "c2"), ("c3", "c4")]
    assert R.build_waves([], 1) == []
    assert R.build_waves(cs[:1], 0) == [("c0",)]          # never a wave of nothing


def test_an_outage_is_said_before_acting_when_it_cannot_be_avoided():
    assert "one controller" in R.outage_warning(1, 1, None, 1)
    assert "parallel" in R.outage_warning(3, 3, R.PARALLEL, 1)
    assert R.outage_warning(3, 1, R.PARALLEL, 1) is None       # --hosts: the others keep serving
    assert "--max-unavailable 3" in R.outage_warning(3, 3, None, 3)
    assert R.outage_warning(3, 3, None, 2) is None


STATS = ("# pxname,svname,status,check_status,check_code,check_desc,\n"
         "kube-apiserver,FRONTEND,OPEN,,,,\n"
         "kube-apiserver,controller-0,{c0},L7OK,200,Layer7 check passed,\n"
         "kube-apiserver,controller-1,UP,L7OK,200,Layer7 check passed,\n"
         "kube-apiserver,BACKEND,UP,,,,\n")


class StatsRemote:
    def __init__(self, answers):
        self.answers = list(answers)
        self.closed = False

    def exec(self, script, *, what="", timeout=0):
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return CommandResult(0, answer.encode(), b"")

    def close(self):
        self.closed = True


def host(name, ip):
    return Host(name, ip, ipaddress.ip_address(ip))


def test_the_roll_waits_until_the_lb_has_the_host_up_again():
    remote = StatsRemote([STATS.format(c0="DOWN 1/2"), STATS.format(c0="DOWN 1/2"), STATS.format(c0="UP")])
    watch = D.LbWatch([host("lb-0", "10.0.0.5")], lambda h: remote, interval=0)
    assert watch.wait_up(host("controller-0", "10.0.0.10"), timeout=5) is None
    assert remote.answers == [STATS.format(c0="UP")]          # asked until it saw UP
    watch.close()
    assert remote.closed


def test_a_host_the_lb_never_brings_back_fails_the_gate_naming_what_the_lb_sees():
    remote = StatsRemote([STATS.format(c0="DOWN")])
    t = iter(range(100))
    watch = D.LbWatch([host("lb-0", "10.0.0.5")], lambda h: remote, interval=0)
    why = watch.wait_up(host("controller-0", "10.0.0.10"), timeout=3, clock=lambda: next(t), sleep=lambda s: None)
    assert why and "lb-0 sees it DOWN L7OK 200" in why


def test_an_lb_that_does_not_balance_the_host_or_cannot_be_asked_is_not_waited_for():
    remote = StatsRemote([STATS.format(c0="UP")])
    watch = D.LbWatch([host("lb-0", "10.0.0.5")], lambda h: remote, interval=0)
    assert watch.wait_up(host("controller-7", "10.0.0.17"), timeout=1) is None
    broken = StatsRemote([RemoteError("lb-1: reading HAProxy's view of the controllers: timed out")])
    watch = D.LbWatch([host("lb-1", "10.0.0.6")], lambda h: broken, interval=0)
    assert watch.wait_up(host("controller-0", "10.0.0.10"), timeout=1) is None
    assert watch.notes and "the roll did not wait for it" in watch.notes[0]


def test_the_gate_gives_up_at_once_on_an_answer_waiting_cannot_change():
    from k8sboot import health
    from k8sboot.probe import ProbeAnswer

    answers = iter([ProbeAnswer(None, error="ConnectionRefusedError: refused"), ProbeAnswer(500, "[-]shutdown failed"),
                    ProbeAnswer(200, "ok")])
    ready = health.wait_ready(host("c0", "10.0.0.10"), lambda h: next(answers), 30, sleep=lambda s: None)
    assert ready.ready
    bad_san = ProbeAnswer(None, error="TLS verification failed: IP address mismatch, certificate is not valid "
                                      "for '10.0.0.13'.")
    clock = iter(range(1000))
    ready = health.wait_ready(host("c3", "10.0.0.13"), lambda h: bad_san, 120, clock=lambda: next(clock),
                              sleep=lambda s: None)
    assert not ready.ready and ready.seconds < 5 and "IP address mismatch" in ready.detail
    refused = ProbeAnswer(401, '{"kind":"Status","reason":"Unauthorized"}')
    clock = iter(range(1000))
    ready = health.wait_ready(host("c0", "10.0.0.10"), lambda h: refused, 120, clock=lambda: next(clock),
                              sleep=lambda s: None)
    assert not ready.ready and ready.seconds < 5                     # the credential itself: at once
    # a 403 is waited out (a server without its RBAC policy yet), then given up at the timeout
    answers = iter([ProbeAnswer(403, '{"kind":"Status","reason":"Forbidden"}')] * 3 + [ProbeAnswer(200, "ok")])
    assert health.wait_ready(host("c0", "10.0.0.10"), lambda h: next(answers), 30, sleep=lambda s: None).ready


def test_the_gate_says_the_api_server_cannot_read_etcd_when_its_etcd_check_fails():
    """A wrong --etcd-cafile or an etcd that is down: /readyz fails `etcd` (reasons withheld, as
    the real healthz handler writes it); the gate's reason must point at etcd, not at the host."""
    from k8sboot import health
    from k8sboot.probe import ProbeAnswer

    body = ("[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\n[-]etcd-readiness failed: reason withheld\n"
            "[+]informer-sync ok\n[+]shutdown ok\nreadyz check failed\n")
    clock = iter(range(1000))
    ready = health.wait_ready(host("c0", "10.0.0.10"), lambda h: ProbeAnswer(500, body), 5,
                              clock=lambda: next(clock), sleep=lambda s: None)
    assert not ready.ready and ready.status == 500
    assert ready.detail.startswith("HTTP 500: [-]etcd failed: reason withheld; [-]etcd-readiness failed")
    assert "cannot read etcd" in ready.detail
    # an API server that has not read etcd since it started has no RBAC policy: it denies the
    # health identity (403, at once: waiting does not help while etcd stays unreadable)
    denied = ProbeAnswer(403, '{"kind":"Status","message":"forbidden: User \\"system:k8sboot-health\\" cannot '
                              'get path \\"/readyz\\"","reason":"Forbidden","code":403}')
    clock = iter(range(1000))
    ready = health.wait_ready(host("c0", "10.0.0.10"), lambda h: denied, 5, clock=lambda: next(clock),
                              sleep=lambda s: None)
    assert not ready.ready and ready.detail.startswith("HTTP 403: the API server denies the health identity")
    assert "etcd" in ready.detail and "system:masters" in ready.detail

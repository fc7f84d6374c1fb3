"""Delay and loss on the link from the workstation to lab hosts, for the fault tests.

`impair(addresses_and_veths, delay_ms, loss_pct)` is a context manager. Where the kernel has
`sch_netem` it is exactly `tc qdisc replace dev <veth> root netem delay D loss L` on each host's
veth (the bridge side: egress is toward the host). Where it has not (some VM kernels ship
without it), the same thing in user space: an `iptables-legacy` rule sends the workstation's
packets to that host (OUTPUT, out the lab bridge, to that address) to an NFQUEUE, and this file,
run as a separate process, gives each packet its verdict D later, in order, or drops it with
probability L. The rule has --queue-bypass: if this process dies, packets flow again unimpaired.
Either way only packets toward the listed lab hosts are touched, and everything is removed on exit.

    python tests/lab/linkfaults.py QUEUE DELAY_SECONDS LOSS_FRACTION     # the NFQUEUE side
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass

BRIDGE = "k8sb-br0"
QUEUE = 4711

# netlink / nfnetlink_queue constants (linux/netfilter/nfnetlink_queue.h)
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
NLM_F_REQUEST = 1
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQA_CFG_MASK = 4
NFQA_CFG_FLAGS = 5
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP, NF_ACCEPT = 0, 1


@dataclass(frozen=True)
class Link:
    address: str      # the host's lab address
    veth: str         # the workstation side of its veth on the lab bridge


def kernel_has_netem(dev: str) -> bool:
    r = subprocess.run(["tc", "qdisc", "replace", "dev", dev, "root", "netem", "delay", "0ms"],
                       capture_output=True, text=True)
    if r.returncode == 0:
        subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], capture_output=True)
        return True
    return False


@contextmanager
def impair(links: list[Link], delay_ms: int, loss_pct: float = 0.0):
    """Delay (and lose) the workstation's packets toward these hosts; yields "tc netem" or "nfqueue"."""
    if kernel_has_netem(links[0].veth):
        spec = ["delay", f"{delay_ms}ms"] + (["loss", f"{loss_pct:g}%"] if loss_pct else [])
        try:
            for link in links:
                subprocess.run(["tc", "qdisc", "replace", "dev", link.veth, "root", "netem", *spec], check=True,
                               capture_output=True)
            yield "tc netem"
        finally:
            for link in links:
                subprocess.run(["tc", "qdisc", "del", "dev", link.veth, "root"], capture_output=True)
        return
    rules = [["OUTPUT", "-o", BRIDGE, "-d", f"{link.address}/32", "-j", "NFQUEUE", "--queue-num", str(QUEUE),
              "--queue-bypass"] for link in links]
    for stale in leftovers([]):       # a killed run's rules (harmless: bypassed with no worker)
        subprocess.run(["iptables-legacy", "-w", "-D", *stale.split()[1:]], capture_output=True)
    worker = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(QUEUE), str(delay_ms / 1000),
                               str(loss_pct / 100)], stdout=subprocess.PIPE, text=True)
    try:
        ready = worker.stdout.readline().strip()
        if ready != "bound":
            raise RuntimeError(f"the NFQUEUE worker did not bind queue {QUEUE}: {ready!r}")
        for rule in rules:
            subprocess.run(["iptables-legacy", "-w", "-I", *rule], check=True, capture_output=True)
        yield "nfqueue"
    finally:
        for rule in rules:
            subprocess.run(["iptables-legacy", "-w", "-D", *rule], capture_output=True)
        worker.terminate()
        try:
            worker.wait(5)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def leftovers(links: list[Link]) -> list[str]:
    """Anything `impair` left behind: a netem qdisc or one of our iptables rules."""
    found = []
    for link in links:
        out = subprocess.run(["tc", "qdisc", "show", "dev", link.veth], capture_output=True, text=True).stdout
        if "netem" in out:
            found.append(f"{link.veth}: {out.strip()}")
    r = subprocess.run(["iptables-legacy", "-w", "-S", "OUTPUT"], capture_output=True, text=True)
    found += [line for line in r.stdout.splitlines() if f"--queue-num {QUEUE}" in line]
    return found


# --- the NFQUEUE side (this file as a program) --------------------------------------------------


def _attr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _message(msg: int, queue: int, attrs: bytes, family: int = socket.AF_UNSPEC) -> bytes:
    body = struct.pack("=BBH", family, 0, socket.htons(queue)) + attrs
    return struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | msg, NLM_F_REQUEST, 0, 0) + body


def _packet_ids(data: bytes):
    offset = 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        if length < 16:
            return
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
            pos = offset + 16 + 4                   # nlmsghdr + nfgenmsg
            while pos + 4 <= offset + length:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4:
                    break
                if atype & 0x7FFF == NFQA_PACKET_HDR:
                    yield struct.unpack_from("!I", data, pos + 4)[0]
                    break
                pos += (alen + 3) & ~3
        offset += (length + 3) & ~3


def serve(queue: int, delay: float, loss: float) -> None:
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG: die with the test
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    sock.bind((0, 0))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_CMD, struct.pack("!BxH", NFQNL_CFG_CMD_BIND,
                                                                                  socket.AF_INET))))
    sock.send(_message(NFQNL_MSG_CONFIG, queue, _attr(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
                       + _attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", 65536))
                       + _attr(NFQA_CFG_MASK, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))
                       + _attr(NFQA_CFG_FLAGS, struct.pack("!I", NFQA_CFG_F_FAIL_OPEN))))
    pending: deque[tuple[float, int, int]] = deque()
    ready = threading.Condition()

    def give_verdicts() -> None:
        while True:
            with ready:
                while not pending:
                    ready.wait()
                due, packet, verdict = pending[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with ready:
                pending.popleft()
            sock.send(_message(NFQNL_MSG_VERDICT, queue, _attr(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet))))

    threading.Thread(target=give_verdicts, daemon=True).start()
    print("bound", flush=True)
    while True:
        data = sock.recv(1 << 20)
        now = time.monotonic()
        with ready:
            for packet in _packet_ids(data):
                pending.append((now + delay, packet, NF_DROP if random.random() < loss else NF_ACCEPT))
            ready.notify()


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]))

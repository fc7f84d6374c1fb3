"""Which hosts switch when: the strategy of a deploy and its waves (pure).

A deploy stages new files on every host at once; what it then does to a running control plane is
decided here. `parallel` switches every host as soon as its files are staged (a first deploy:
nothing serves yet, so nothing can be kept up). `rolling` switches the hosts whose change takes
a *serving* process down in waves of at most `max_unavailable`, each wave gated (new process,
rendered argv, `/readyz` 200) before the next starts; hosts that do not serve yet, and changes
that take nothing down (a reload, a mode fix, `--no-restart`), go at once. The default is
`rolling` whenever some host that serves needs a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ROLLING = "rolling"
PARALLEL = "parallel"
STRATEGIES = (ROLLING, PARALLEL)


@dataclass(frozen=True)
class Candidate:
    """One host after its facts and plan: does its change take a serving process down?"""

    name: str
    serving: bool            # the unit was active before the deploy
    takes_down: bool         # the plan restarts it (not a reload, not --no-restart)


def waits_for_wave(c: Candidate, strategy: str | None) -> bool:
    """Whether a host's switch waits for a wave (True) or happens as soon as it is staged.

    Explicit `rolling`: every host whose change restarts it waits (even one not serving yet: the
    user asked for one at a time). Default: only those that serve now. `parallel`: none.
    """
    if strategy == PARALLEL or not c.takes_down:
        return False
    if strategy == ROLLING:
        return True
    return c.serving


def build_waves(candidates: Sequence[Candidate], max_unavailable: int) -> list[tuple[str, ...]]:
    """The waiting hosts in inventory order, in waves of at most `max_unavailable`; hosts that do
    not serve yet go first, together (taking them down costs nothing)."""
    size = max(1, max_unavailable)
    idle = tuple(c.name for c in candidates if not c.serving)
    serving = [c.name for c in candidates if c.serving]
    waves = [idle] if idle else []
    waves.extend(tuple(serving[i:i + size]) for i in range(0, len(serving), size))
    return waves


def outage_warning(n_controllers: int, n_selected: int, strategy: str | None, max_unavailable: int) -> str | None:
    """What to say before acting when the change can take the whole API down, or None.

    Known before any host is dialled: one controller; `--max-unavailable` at least the number of
    controllers; `--strategy parallel` on every controller.
    """
    if n_controllers <= 1:
        return ("there is one controller: the API is unavailable while kube-apiserver restarts on it "
                "(add controllers behind a load balancer to keep it up)")
    if strategy == PARALLEL and n_selected >= n_controllers:
        return ("--strategy parallel restarts every controller that needs it at the same time: the API is "
                "unavailable until one of them is ready again")
    if strategy != PARALLEL and max_unavailable >= n_controllers:
        return (f"--max-unavailable {max_unavailable} >= {n_controllers} controllers: a wave may restart every "
                "controller at once, and the API is unavailable until one of them is ready again")
    return None

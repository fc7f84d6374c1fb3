"""One exception tree and one table of exit codes.

Every user-facing failure is a `K8sbootError` subclass carrying its exit code and an optional
hint. Third-party exceptions are translated where the library is imported and chained with
`from`; the CLI boundary prints `k8sboot: error: <what>: <why>` plus `  hint: ...` and exits
with the code. A bug (any other exception) keeps its traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes are a product: scripts branch on them. Never renumber one."""

    OK = 0
    FAILURE = 1            # generic: a check found something (see the specific codes first)
    USAGE = 2              # bad command line (Typer/Click's own code)
    INVENTORY = 3          # the inventory file is missing or invalid
    PKI = 4                # an existing PKI file is unusable, or a cert cannot be issued
    TEMPLATE = 5           # a unit template is missing or broken
    CONNECT = 6            # SSH connection failed (refused, timed out, auth failed)
    HOST_KEY = 7           # unknown or changed SSH host key
    REMOTE = 8             # a command on a host failed
    DEPLOY = 9             # deploy finished, but not every host ended active and as intended
    DRIFT = 10             # verify: a host differs from what render/gen-certs give
    UNAUTHORIZED = 11      # whoami: the API server would answer 401
    TOKEN = 12             # a token given to `token decode` cannot be read at all
    EXPIRING = 13          # certs check-expiration --fail-under: a cert is below the threshold
    AUDIT = 14             # audit: at least one FAIL
    LAB = 15               # the lab cannot be brought up, down or reset
    PREREQ = 16            # a required tool or privilege is missing on this machine
    LOCKED = 17            # another k8sboot run holds the lock
    OBJECTS = 18           # can-i -f: a file of RBAC objects cannot be read or holds a bad object
    ETCD_UNAVAILABLE = 19  # deploy-apiserver refused before any change: its etcd has no healthy quorum
    ETCD_FOREIGN_DATA = 20  # deploy-etcd refused before any change: a member's data dir is another cluster's
    ROTATION = 21          # rotate: the phase cannot run now (another rotation, wrong order, too early)
    INTERNAL = 70          # a bug: printed with a traceback
    INTERRUPTED = 130      # SIGINT
    TERMINATED = 143       # SIGTERM


class K8sbootError(Exception):
    """Base of every error a user can cause or meet; `what` is what we were doing."""

    code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None, code: ExitCode | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class InventoryError(K8sbootError):
    code = ExitCode.INVENTORY


class PkiError(K8sbootError):
    code = ExitCode.PKI


class TemplateError(K8sbootError):
    code = ExitCode.TEMPLATE


class ConnectError(K8sbootError):
    code = ExitCode.CONNECT


class HostKeyError(ConnectError):
    code = ExitCode.HOST_KEY


class RemoteError(K8sbootError):
    code = ExitCode.REMOTE


class TokenError(K8sbootError):
    code = ExitCode.TOKEN


class LabError(K8sbootError):
    code = ExitCode.LAB


class PrereqError(K8sbootError):
    code = ExitCode.PREREQ


class LockedError(K8sbootError):
    code = ExitCode.LOCKED


class Interrupted(K8sbootError):
    """Raised by our signal handlers so that `finally` blocks clean temp files on the way out."""

    code = ExitCode.INTERRUPTED

    def __init__(self, signum: int):
        import signal

        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}",
                         code=ExitCode.TERMINATED if name == "SIGTERM" else ExitCode.INTERRUPTED)
        self.signum = signum

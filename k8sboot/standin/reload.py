"""The serving certificate and the client CA, read again from disk while the server runs, as the
real server's dynamic certificate controllers do (k8s.io/apiserver/pkg/server/dynamiccertificates):
--tls-cert-file/--tls-private-key-file and --client-ca-file are looked at every minute; a change
that loads is used from the next connection on (connections already open keep theirs), one that
does not load is logged and the files in use are kept. So a renewed serving cert, or a client CA
bundle for a CA rotation, needs no restart.

`K8SBOOT_STANDIN_RELOAD_INTERVAL=<seconds>` sets another interval. `k8sboot lab up` gives every lab
controller 2 s, through a lab-only drop-in (k8sboot/lab/plan.py RELOAD_INTERVAL_DROPIN) that no
rendered unit holds: in the lab a renewed serving cert is presented seconds after the deploy.
"""

from __future__ import annotations

import hashlib
import threading

from k8sboot.standin.log import log, quote

RELOAD_INTERVAL_ENV = "K8SBOOT_STANDIN_RELOAD_INTERVAL"
DEFAULT_INTERVAL = 60.0           # the real controllers' resync: every minute


def parse_interval(raw: str | None) -> float:
    """K8SBOOT_STANDIN_RELOAD_INTERVAL: seconds, more than 0 (default one minute); ValueError."""
    if raw is None or raw.strip() == "":
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < float("inf"):
        raise ValueError(f"{RELOAD_INTERVAL_ENV}={quote(raw)}: want a number of seconds, more than 0 "
                         "(how often the serving cert and client CA files are read again)")
    return value


def _digest(*paths: str | None) -> str:
    h = hashlib.sha256()
    for path in paths:
        if not path:
            continue
        try:
            with open(path, "rb") as f:
                h.update(f.read())
        except OSError as exc:
            h.update(f"unreadable: {exc}".encode())
        h.update(b"\0")
    return h.hexdigest()


class Reloader:
    """One look at the files per `check()`; `start()` runs it every `interval` seconds until the
    server is closed."""

    def __init__(self, server, flags, interval: float = DEFAULT_INTERVAL):
        self.server, self.flags, self.interval = server, flags, interval
        self.cert, self.key = flags.get("tls-cert-file"), flags.get("tls-private-key-file")
        self.client_ca = flags.get("client-ca-file")
        self._serving = _digest(self.cert, self.key)
        self._ca = _digest(self.client_ca)

    def check(self) -> list[str]:
        """Load what changed; returns what was loaded ("serving-cert", "client-ca")."""
        import dataclasses

        from k8sboot import authn
        from k8sboot.standin.server import load_flag_config
        from k8sboot.standin.tls import make_tls

        loaded = []
        serving, ca = _digest(self.cert, self.key), _digest(self.client_ca)
        if serving != self._serving or ca != self._ca:
            backend = "pyopenssl" if self.server.tls.name == "pyopenssl" else "ssl"
            try:
                tls = make_tls(self.cert, self.key, self.client_ca, backend)
            except Exception as exc:        # noqa: BLE001 - ssl and pyOpenSSL raise their own kinds
                log(f'"Failed to load the serving cert/key pair or client CA; keeping the ones in use" '
                    f'name="serving-cert::{self.cert}::{self.key}" err={quote(str(exc) or type(exc).__name__)}',
                    level="E")
                return loaded
            if ca != self._ca:
                try:
                    config = load_flag_config(self.flags)
                except authn.AuthnConfigError as exc:
                    log(f'"Failed to load the client CA; keeping the one in use" '
                        f'name="client-ca-bundle::{self.client_ca}" err={quote(str(exc))}', level="E")
                    return loaded
                old = self.server.config          # --authentication-config's part is its own (authconfig)
                self.server.config = dataclasses.replace(config, jwt=old.jwt, jwt_keys=old.jwt_keys,
                                                         anonymous_auth=old.anonymous_auth,
                                                         anonymous_paths=old.anonymous_paths)
                loaded.append("client-ca")
                log(f'"Loaded a new CA Bundle and Verifier" name="client-ca-bundle::{self.client_ca}"')
            self.server.tls = tls
            if serving != self._serving:
                loaded.append("serving-cert")
                log(f'"Loaded a new cert/key pair" name="serving-cert::{self.cert}::{self.key}"')
            self._serving, self._ca = serving, ca
        return loaded

    def start(self) -> threading.Thread:
        closed = self.server.lifecycle.closed

        def loop():
            while not closed.wait(self.interval):
                self.check()

        thread = threading.Thread(target=loop, name="dynamic-certificates", daemon=True)
        thread.start()
        return thread

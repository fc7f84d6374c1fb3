"""--authentication-config: kube-apiserver's structured authentication configuration in the stand-in.

The file (an AuthenticationConfiguration, JSON as k8sboot renders it) is read at start with
k8sboot.authn.oidc, the same reading as `k8sboot whoami` and the inventory: a file that does not
load or validate stops the start with the real server's error, as does the file beside any
`--oidc-*` flag (flags.validate_flags) or beside an explicit `--anonymous-auth` when the file has an
`anonymous` block. Its JWT authenticators (CEL compiled once per load) are tried after the
ServiceAccount authenticator; the anonymous block's `enabled` and `conditions` replace
--anonymous-auth.

Keys (`KeySets`): one JWKS per issuer, fetched in the background at start (discovery document, then
jwks_uri, HTTPS trusting the issuer's certificateAuthority; each fetch bounded by FETCH_TIMEOUT),
retried every KEY_INTERVAL seconds until it succeeds, as the real authenticator retries its
initialisation. A token arriving before that is a 401 at once, naming the issuer whose keys are not
fetched yet (the real one: `oidc: authenticator not initialized`). A token whose `kid` is not in
the cached set fetches the set again before it is checked (the IdP rotated its key), at most once
per KEY_INTERVAL per issuer; concurrent requests wait for that one fetch. Otherwise a request
never fetches: the warm path is a dictionary lookup.

Reload (`Watcher`), as the real server's authentication config controller
(pkg/kubeapiserver/options/authentication.go): the file is read every reload interval (reload.py's,
K8SBOOT_STANDIN_RELOAD_INTERVAL); when its bytes differ from the last ones tracked, a file that does
not load (`failed to load authentication config`) or validate (`failed to validate authentication
config`, also when its anonymous block differs from the one the server started with) is logged,
counted as a failure and tracked (not retried until it changes again); a file whose new issuers'
keys cannot be fetched is `failed to update authentication config`, counted, and retried. A file
that loads replaces the authenticators for the next request (`reloaded authentication config`,
with its hash) and is counted as a success.

Metrics (`Metrics`), upstream's names, types, help and labels
(k8s.io/apiserver/pkg/server/options/authenticationconfig/metrics): reloads_total and
reload_last_timestamp_seconds by status, and last_config_info{hash="sha256:<hex of the file's
bytes>"} 1 for the config in use (from the start). apiserver_id_hash is the sha256 of the server's
identity, `apiserver-<uuid from the hostname>` as k8s.io/apiserver's APIServerID.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

from k8sboot.authn import oidc
from k8sboot.authn.config import AuthenticatorConfig
from k8sboot.standin.log import log, quote

FLAG = "authentication-config"
FETCH_TIMEOUT = 5.0        # seconds for one discovery + JWKS fetch
KEY_INTERVAL = 10.0        # seconds: the initialisation retry, and at most one kid-miss refetch per issuer


class StartError(Exception):
    """The file stops the start (printed `Error: <message>`, exit 1)."""


class LoadError(Exception):
    """The file does not load (`kind` "load") or does not validate (`kind` "validate")."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def sha256_label(data: bytes | str) -> str:
    """upstream's getHash: `sha256:<hex>` ("" for empty data)."""
    if isinstance(data, str):
        data = data.encode()
    return f"sha256:{hashlib.sha256(data).hexdigest()}" if data else ""


def apiserver_id(hostname: str | None = None) -> str:
    """k8s.io/apiserver's APIServerID: "apiserver-" + uuid.NewHash(sha256, uuid.Nil, hostname, 5)."""
    digest = bytearray(hashlib.sha256(bytes(16) + (hostname or socket.gethostname()).encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"apiserver-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# --- loading ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Loaded:
    data: bytes
    hash: str
    config: oidc.AuthenticationConfig
    compiled: tuple


_ROOT = "AuthenticationConfiguration"


def _field_error(exc: oidc.ConfigError) -> str:
    """`jwt[0].issuer.url: <why>`, as field.ErrorList names the field (no root)."""
    key = exc.key_path
    if key == _ROOT:
        return exc.message
    if key.startswith(_ROOT + "."):
        key = key[len(_ROOT) + 1:]
    return f"{key}: {exc.message}"


def parse_file(data: bytes, service_account_issuers: Sequence[str] = ()) -> Loaded:
    """The file's bytes -> Loaded; LoadError("load"|"validate", message)."""
    if not data:
        raise LoadError("load", "empty config data")
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise LoadError("load", f"not the JSON k8sboot renders (the stand-in reads no YAML): {exc}") from None
    if not isinstance(doc, dict):
        raise LoadError("load", "the document is not an object")
    try:
        # oidc.load_document's reading, with the server's --service-account-issuer (no JWT issuer may be one)
        config = oidc.parse(doc, root=_ROOT, inventory_form=False, service_account_issuers=service_account_issuers)
        compiled = oidc.compile_config(config)
    except oidc.ConfigError as exc:
        raise LoadError("validate", _field_error(exc)) from None
    except Exception as exc:       # noqa: BLE001 - a CEL library error: never a half-loaded config
        raise LoadError("validate", f"{type(exc).__name__}: {exc}") from None
    return Loaded(data, sha256_label(data), config, compiled)


def _has_anonymous_block(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("anonymous") is not None


# --- keys -----------------------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("issuer", "keys", "kids", "error", "attempted", "lock", "initializing")

    def __init__(self, issuer: oidc.Issuer):
        self.issuer = issuer
        self.keys: dict | None = None
        self.kids: frozenset = frozenset()
        self.error = ""
        self.attempted = float("-inf")
        self.lock = threading.Lock()
        self.initializing = False


class KeySets:
    """Per-issuer JWKS cache; callable as oidc.KeysFor (authn's `jwt_keys`)."""

    def __init__(self, fetch: Callable[[oidc.Issuer, float], dict] = oidc.fetch_jwks,
                 timeout: float = FETCH_TIMEOUT, interval: float = KEY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, stop: threading.Event | None = None):
        self._fetch, self.timeout, self.interval, self.clock = fetch, timeout, interval, clock
        self.stop = stop or threading.Event()
        self._entries: dict[tuple, _Entry] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(issuer: oidc.Issuer) -> tuple:
        return issuer.url, issuer.discovery_url, issuer.certificate_authority

    def _entry(self, issuer: oidc.Issuer) -> _Entry:
        key = self._key(issuer)
        entry = self._entries.get(key)
        if entry is None:
            with self._lock:
                entry = self._entries.setdefault(key, _Entry(issuer))
        return entry

    def __call__(self, authenticator: oidc.Compiled) -> dict:
        entry = self._entries.get(self._key(authenticator.spec.issuer))
        if entry is None or entry.keys is None:
            why = f"; last attempt: {entry.error}" if entry is not None and entry.error else ""
            raise oidc.JwksError(f"authenticator not initialized: the keys of issuer {authenticator.issuer} "
                                 f"have not been fetched yet{why}")
        return entry.keys

    def has_keys(self, issuer: oidc.Issuer) -> bool:
        entry = self._entries.get(self._key(issuer))
        return entry is not None and entry.keys is not None

    def refresh(self, issuer: oidc.Issuer, *, force: bool = False) -> bool:
        """Fetch the issuer's keys now (at most once per interval unless `force`; a fetch already
        running is waited for, not repeated). True when keys are cached afterwards."""
        entry = self._entry(issuer)
        if not entry.lock.acquire(timeout=self.timeout + 1.0):
            return entry.keys is not None
        try:
            if not force and self.clock() - entry.attempted < self.interval:
                return entry.keys is not None
            entry.attempted = self.clock()
            try:
                keys = self._fetch(issuer, self.timeout)
            except oidc.JwksError as exc:
                entry.error = str(exc)
                log(f'"Failed to fetch the issuer\'s keys" issuer={quote(issuer.url)} err={quote(exc)}', level="E")
                return entry.keys is not None
            kids = frozenset(k.get("kid") for k in keys.get("keys", []) if isinstance(k, dict))
            if entry.keys is None or kids != entry.kids:
                log(f'"Fetched the issuer\'s keys (JWKS)" issuer={quote(issuer.url)} keys={len(keys["keys"])} '
                    f'kids={json.dumps(sorted(str(k) for k in kids))}')
            entry.keys, entry.kids, entry.error = keys, kids, ""
            return True
        finally:
            entry.lock.release()

    def start(self, authenticators: Sequence[oidc.Compiled]) -> None:
        """Background fetches for issuers without keys, retried every interval until they succeed
        (or the server closes)."""
        for a in authenticators:
            entry = self._entry(a.spec.issuer)
            with self._lock:
                if entry.keys is not None or entry.initializing:
                    continue
                entry.initializing = True

            def init(issuer=a.spec.issuer, entry=entry):
                try:
                    while not self.stop.is_set():
                        if self.refresh(issuer, force=True):
                            return
                        if self.stop.wait(self.interval):
                            return
                finally:
                    entry.initializing = False

            threading.Thread(target=init, name=f"jwks {a.issuer}", daemon=True).start()

    def before(self, token: str, authenticators: Sequence[oidc.Compiled]) -> None:
        """Called before authenticating a bearer token: when it names one of the issuers and a
        `kid` that is not in that issuer's cached set, fetch the set again (rate-limited)."""
        def part(s: str) -> Any:
            return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

        try:
            header_b64, payload_b64, _ = token.split(".")
            kid = part(header_b64).get("kid")
            if kid is None:
                return
            iss = part(payload_b64).get("iss")
        except (ValueError, AttributeError, TypeError):
            return                                  # authn says what is wrong with it
        for a in authenticators:
            if a.issuer == iss:
                entry = self._entries.get(self._key(a.spec.issuer))
                if entry is not None and entry.keys is not None and kid not in entry.kids:
                    self.refresh(a.spec.issuer)
                return


# --- metrics ------------------------------------------------------------------------------------------

PREFIX = "apiserver_authentication_config_controller_"
RELOADS = PREFIX + "automatic_reloads_total"
LAST_TIMESTAMP = PREFIX + "automatic_reload_last_timestamp_seconds"
LAST_CONFIG = PREFIX + "last_config_info"
_HELP = {
    RELOADS: "[BETA] Total number of automatic reloads of authentication configuration split by status and "
             "apiserver identity.",
    LAST_TIMESTAMP: "[BETA] Timestamp of the last automatic reload of authentication configuration split by "
                    "status and apiserver identity.",
    LAST_CONFIG: "[ALPHA] Information about the last applied authentication configuration with hash as label, "
                 "split by apiserver identity.",
}


def go_float(value: float) -> str:
    """strconv.FormatFloat(v, 'g', -1, 64), as the Prometheus text encoder writes a sample: the
    shortest digits, exponent form when the exponent is < -4 or >= 6 (`1.689101941e+09`)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(float(value))).normalize().as_tuple()
    ds = "".join(map(str, digits))
    dp = len(ds) + exponent                # digits before the decimal point
    neg = "-" if sign else ""
    exp = dp - 1
    if exp < -4 or exp >= 6:
        mant = ds[0] + ("." + ds[1:] if len(ds) > 1 else "")
        return f"{neg}{mant}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    if dp <= 0:
        return f"{neg}0.{'0' * -dp}{ds}"
    if dp >= len(ds):
        return neg + ds + "0" * (dp - len(ds))
    return f"{neg}{ds[:dp]}.{ds[dp:]}"


class Metrics:
    def __init__(self, server_id: str, clock: Callable[[], float] = time.time):
        self.id_hash = sha256_label(server_id)
        self.clock = clock
        self._lock = threading.Lock()
        self._reloads: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._config_hash = ""

    def config_info(self, config_hash: str) -> None:
        with self._lock:
            self._config_hash = config_hash

    def success(self, config_hash: str) -> None:
        with self._lock:
            self._reloads["success"] = self._reloads.get("success", 0) + 1
            self._last["success"] = self.clock()
            self._config_hash = config_hash

    def failure(self) -> None:
        with self._lock:
            self._reloads["failure"] = self._reloads.get("failure", 0) + 1
            self._last["failure"] = self.clock()

    def text(self) -> str:
        """The families that have samples, in the Prometheus text format (sorted by name, as
        client_golang's gatherer writes them; labels sorted by name)."""
        with self._lock:
            families = {}
            if self._reloads:
                families[RELOADS] = ("counter", [(f'apiserver_id_hash="{self.id_hash}",status="{s}"', float(n))
                                                 for s, n in sorted(self._reloads.items())])
            if self._last:
                families[LAST_TIMESTAMP] = ("gauge", [(f'apiserver_id_hash="{self.id_hash}",status="{s}"', t)
                                                      for s, t in sorted(self._last.items())])
            if self._config_hash:
                families[LAST_CONFIG] = ("gauge", [(f'apiserver_id_hash="{self.id_hash}",'
                                                    f'hash="{self._config_hash}"', 1.0)])
        out = []
        for name in sorted(families):
            kind, samples = families[name]
            out.append(f"# HELP {name} {_HELP[name]}\n# TYPE {name} {kind}\n")
            out.extend(f"{name}{{{labels}}} {go_float(v)}\n" for labels, v in samples)
        return "".join(out)


# --- the controller -------------------------------------------------------------------------------------


class Controller:
    """The file, what was loaded from it, the keys and the metrics of one server."""

    def __init__(self, path: str, service_account_issuers: Sequence[str], anonymous_flag_given: bool,
                 server_id: str | None = None, keys: KeySets | None = None):
        self.path = path
        self.service_account_issuers = tuple(service_account_issuers)
        self.anonymous_flag_given = anonymous_flag_given
        self.server_id = server_id or apiserver_id()
        self.keys = keys or KeySets()
        self.keys.controller = self
        self.metrics = Metrics(self.server_id)
        self.loaded: Loaded | None = None
        self.tracked = b""
        self._retry_at = float("-inf")
        self._lock = threading.Lock()

    def load_at_start(self) -> Loaded:
        """The file at start; StartError with the real server's message."""
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise StartError(f'failed to load authentication configuration from file "{self.path}": '
                             f"open {self.path}: {(exc.strerror or str(exc)).lower()}") from None
        if self.anonymous_flag_given and _has_anonymous_block(data):
            raise StartError("anonymous: Forbidden: --anonymous-auth flag cannot be set when anonymous field is "
                             "configured in authentication configuration file")
        try:
            loaded = parse_file(data, self.service_account_issuers)
        except LoadError as exc:
            if exc.kind == "load":
                raise StartError(f'failed to load authentication configuration from file "{self.path}": '
                                 f"{exc}") from None
            raise StartError(f"invalid authentication configuration: {exc}") from None
        self.loaded, self.tracked = loaded, data
        self.metrics.config_info(loaded.hash)
        log(f'"Loaded the authentication config" path={quote(self.path)} hash={quote(loaded.hash)} '
            f'apiVersion={quote(loaded.config.api_version)} jwt={json.dumps(list(loaded.config.issuers))} '
            f'anonymous={_anonymous_text(loaded.config)}')
        return loaded

    def apply(self, config: AuthenticatorConfig, loaded: Loaded | None = None) -> AuthenticatorConfig:
        """`config` (from the flags) with the file's authenticators, keys and anonymous block."""
        loaded = loaded or self.loaded
        anon = loaded.config.anonymous
        return dataclasses.replace(
            config, jwt=loaded.compiled, jwt_keys=self.keys,
            anonymous_auth=anon.enabled if anon is not None else config.anonymous_auth,
            anonymous_paths=anon.paths if anon is not None else ())

    def check(self, server) -> str | None:
        """One look at the file: "success", "failure" or None (unchanged, or waiting to retry)."""
        with self._lock:
            try:
                with open(self.path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                log(f'"failed to read authentication config file" err={quote(exc)}', level="E")
                self.metrics.failure()
                return "failure"
            if data == self.tracked:
                return None
            try:
                loaded = parse_file(data, self.service_account_issuers)
                if loaded.config.anonymous != self.loaded.config.anonymous:
                    raise LoadError("validate", "anonymous: Forbidden: changed from initial configuration file")
            except LoadError as exc:
                log(f'"failed to {exc.kind} authentication config" path={quote(self.path)} '
                    f'hash={quote(sha256_label(data))} err={quote(exc)}', level="E")
                self.metrics.failure()
                self.tracked = data          # never valid: not retried until the file changes again
                return "failure"
            if self.keys.clock() < self._retry_at:
                return None
            missing = [a.spec.issuer for a in loaded.compiled if not self.keys.has_keys(a.spec.issuer)]
            failed = [i.url for i in missing if not self.keys.refresh(i, force=True)]
            if failed:
                log(f'"failed to update authentication config" path={quote(self.path)} '
                    f'hash={quote(loaded.hash)} err={quote("the keys of " + ", ".join(failed) + " cannot be fetched")}',
                    level="E")
                self.metrics.failure()
                self._retry_at = self.keys.clock() + self.keys.interval
                return "failure"
            server.config = self.apply(server.config, loaded)
            self.loaded, self.tracked = loaded, data
            self.metrics.success(loaded.hash)
            log(f'"reloaded authentication config" path={quote(self.path)} hash={quote(loaded.hash)} '
                f'jwt={json.dumps(list(loaded.config.issuers))}')
            return "success"

    def start_watching(self, server, interval: float) -> threading.Thread:
        closed = server.lifecycle.closed

        def loop():
            while not closed.wait(interval):
                try:
                    self.check(server)
                except Exception as exc:     # noqa: BLE001 - the watcher must outlive any one look
                    log(f'"watching authentication config file" err={quote(exc)}', level="E")

        thread = threading.Thread(target=loop, name="authentication-config", daemon=True)
        thread.start()
        return thread


def _anonymous_text(config: oidc.AuthenticationConfig) -> str:
    if config.anonymous is None:
        return '"from --anonymous-auth"'
    return quote(f"enabled={str(config.anonymous.enabled).lower()} paths={list(config.anonymous.paths)}")


def controller_of(config: AuthenticatorConfig) -> Controller | None:
    return getattr(config.jwt_keys, "controller", None)

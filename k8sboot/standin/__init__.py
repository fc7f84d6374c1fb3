"""A kube-apiserver STAND-IN for the k8sboot lab. It is NOT Kubernetes.

No real kube-apiserver binary can be downloaded where the lab runs, so `k8sboot lab up` installs
this package on every lab host, launched by `/usr/local/bin/kube-apiserver`. It does what the
tutorial needs a server to do (authentication, a few stored kinds, TokenRequest, RBAC) the way
the real binary does it, and answers everything else as the real server answers what it does
not serve. It runs no controllers, no admission chain beyond namespace existence and no watch; it
keeps its objects in etcd, as the real server does. Exactly:

* It parses the real binary's flags (pflag rules: `--flag=value` and `--flag value`; bools as
  `--anonymous-auth` or `--anonymous-auth=false`, never consuming the next argument; repeatable
  `--service-account-issuer` and `--service-account-key-file`; comma lists such as
  `--api-audiences`); an unknown flag is `Error: unknown flag: --x`, exit 1, like cobra.
* It refuses to start, exit 1, with the real messages: `--etcd-servers must be specified`;
  without `--service-account-issuer`:
  `Error: [service-account-issuer is a required flag, --service-account-signing-key-file and --service-account-issuer are required flags]`;
  without only the signing key, the second message alone; and when a file named by a flag cannot
  be read (the message names the flag and the path, Go-style `open <path>: <why>`).
* It serves HTTPS on `--bind-address`:`--secure-port` with `--tls-cert-file`/`--tls-private-key-file`
  and authenticates every request with `k8sboot.authn` (the same code as `k8sboot whoami`) per
  `--client-ca-file`, `--service-account-key-file`, `--service-account-issuer`, `--api-audiences`
  (default: the issuers) and `--anonymous-auth` (default true, like the real binary).
* `--authentication-config=FILE` (authconfig.py), as kube-apiserver 1.30+: the
  AuthenticationConfiguration (JSON, as k8sboot renders it) read with k8sboot.authn.oidc; its JWT
  authenticators (CEL compiled once per load) come after the ServiceAccount one, its anonymous
  block replaces --anonymous-auth. A file that does not load or validate, the file beside any
  `--oidc-*` flag, or `--anonymous-auth` beside an anonymous block stops the start with the real
  messages. The issuers' JWKS are fetched in the background at start (discovery, then jwks_uri,
  over HTTPS trusting the issuer's certificateAuthority, 5 s per fetch, retried every 10 s); a
  token before that is a 401 naming the issuer (`authenticator not initialized`), a token with a
  `kid` not in the cached set makes one refetch, at most every 10 s per issuer. The file is read
  again at the reload interval: one that loads replaces the authenticators (`"reloaded
  authentication config" hash="sha256:..."`), one that does not is logged and the one in use is
  kept. `GET /metrics` (authorized like any non-resource URL: system:masters or
  system:monitoring, not anonymous) serves upstream's
  `apiserver_authentication_config_controller_{automatic_reloads_total,
  automatic_reload_last_timestamp_seconds,last_config_info}` (the hash label is the sha256 of the
  file's bytes in use) and nothing else of the real server's metrics.
* Impersonation (`kubectl --as`, `--as-group`): each Impersonate-* header must be allowed
  (verb `impersonate`) like k8s.io/apiserver's filter, else a 403 naming what was refused.
* Stage 2 follows --authorization-mode (authorization.py: AlwaysAllow, the real default, AlwaysDeny,
  Node, RBAC; ABAC and Webhook refuse the start). RBAC is k8sboot.rbac (the same code as
  `k8sboot can-i`): system:masters first, then RBAC
  over the stored ClusterRoles, Roles and their bindings (User, Group and ServiceAccount
  subjects; verbs, apiGroups, resources/subresources, resourceNames, nonResourceURLs); a denial
  is a 403 with the API server's Status JSON (`pods is forbidden: User "system:anonymous" cannot
  list resource "pods" in API group "" in the namespace "default"`). A 401 carries Status reason
  Unauthorized. Writes of RBAC objects pass RBAC's escalation check (k8sboot.rbac.escalation: a
  user grants only what they hold, unless `escalate`/`bind` or system:masters), and are
  validated as pkg/apis/rbac/validation does.
* Stored objects in etcd (etcdstore.py: --etcd-servers, tried in order with failover, over
  HTTPS with --etcd-cafile and the --etcd-certfile/--etcd-keyfile client pair, under
  --etcd-prefix with upstream's keys, resourceVersion = etcd's mod_revision, every write one
  Txn); a storage failure is the real 500 `Internal error occurred: ...` naming the server.
  Authentication's ServiceAccount lookup and RBAC read a cache that is read again whenever
  etcd's revision has moved (one round trip per request), and serve what was last read while
  etcd is down, as the real server's informers do; before
  anything was ever read (started with etcd unreachable, or a wrong --etcd-cafile) there is no
  policy, so only system:masters is authorized (a 403 for everyone else, /readyz included). With `K8SBOOT_STANDIN_DATA_DIR` (tests) the
  objects go to a local file store instead (storage.py, 0700, atomic writes) and no etcd is
  dialled. The kinds: Namespaces, ServiceAccounts,
  ClusterRoles, ClusterRoleBindings, Roles, RoleBindings, with create, get, list (label and
  metadata.name/namespace field selectors; the Table kubectl asks for), update (PUT, with
  resourceVersion conflicts), patch (merge and strategic merge patch: `kubectl apply`) and
  delete; JSON or protobuf bodies (kubectl 1.32 sends protobuf); fieldValidation Strict/Warn/
  Ignore. At start, as a real control plane has them: the namespaces default, kube-system,
  kube-public and kube-node-lease, a `default` ServiceAccount in every namespace (also made
  when a namespace is created), and the bootstrap RBAC policy (k8sboot.rbac.bootstrap_policy).
  Deleting a namespace answers the Namespace, phase Terminating, and deletes what is in it and
  then it, at once. Names, uids, resourceVersions, creationTimestamps and the Status errors
  (AlreadyExists 409, NotFound 404, Invalid 422 with apimachinery's messages, Conflict 409) are
  the real server's, so kubectl prints what it prints against Kubernetes.
* TokenRequest (`kubectl create token`): signed with --service-account-signing-key-file (RS256;
  ES256/384/512 for P-256/384/521), iss the first --service-account-issuer, aud the request's or
  --api-audiences, expirationSeconds 3600 by default, at least 600, shortened to
  --service-account-max-token-expiration; the ServiceAccount must exist (404). A token is then
  accepted only while its ServiceAccount exists with the uid it names (authn's lookup).
* Served besides: `POST .../selfsubjectreviews` (`kubectl auth whoami`), selfsubjectaccessreviews
  and selfsubjectrulesreviews (`kubectl auth can-i`, `--list`), `/version` (gitVersion
  `v0.0.0-k8sboot-standin`), `/livez`, `/readyz`, `/healthz`, discovery listing exactly what is
  implemented with the verbs implemented, and the smallest OpenAPI v3 kubectl needs (openapi.py).
  Anything else gets the real server's answer for what it does not serve: a 404 Status `the
  server could not find the requested resource` (or a 405 `the server does not allow this method
  on the requested resource` for a served resource and a verb the stand-in does not implement:
  watch, deletecollection), with a cause naming the stand-in; `?dryRun` is a 400 naming the
  stand-in; never a Success for something not done.
* Every request is logged to stderr (the journal) with its identity and decision.
* Health and graceful restarts, as the real server (k8s.io/apiserver's healthz handler and
  lifecycle signals). `/livez`, `/healthz`, `/readyz` answer `ok`; `?verbose` lists the real 1.32
  check names (`[+]ping ok`, `[+]log ok`, `[+]etcd ok`, `[+]etcd-readiness ok` (readyz only) ...
  `readyz check passed`; no etcd checks on a file store). The etcd check reads `<prefix>/health`
  within --etcd-healthcheck-timeout, at most once per half that time (upstream's rate limit).
  While etcd cannot take the objects a control plane starts with, the server still starts and
  `poststarthook/start-system-namespaces-controller` and `poststarthook/rbac/bootstrap-roles`
  fail every health endpoint until a retry (every second) succeeds (the real server's hook gives
  up and exits after a while; the stand-in keeps trying). A failing
  endpoint always lists them, `[-]<check> failed: reason withheld`, then `readyz check failed`, HTTP
  500 (the reasons go to the journal at --v=2). On SIGTERM or SIGINT: /readyz fails at once
  (`[-]shutdown failed`) while /livez stays ok and every request is still served for
  `--shutdown-delay-duration` (Go duration, default 0s); then, with `--shutdown-send-retry-after`,
  new requests other than health probes get 429, `Retry-After: 5`, `Connection: close` and `The
  apiserver is shutting down, please try again later.` while requests in flight drain, then the
  port closes; without it the port closes at once and requests in flight drain. The drain is
  bounded by `--request-timeout` (default 1m0s); then exit 0. A second signal exits 1 at once.
  Start-up: `K8SBOOT_STANDIN_READY_DELAY=<seconds>` (a lab-only systemd drop-in sets it) keeps
  /readyz failing that long after the port opens, naming unfinished post-start hooks
  (`[-]poststarthook/rbac/bootstrap-roles failed: reason withheld`), as a real server does while
  it fills its caches; /livez stays ok meanwhile (the real one also lists those hooks in /livez
  unless --livez-grace-period covers them).

Certificates on disk are read again while it runs (reload.py), as the real server's dynamic
certificate controllers do: --tls-cert-file/--tls-private-key-file and --client-ca-file every minute
(`K8SBOOT_STANDIN_RELOAD_INTERVAL` sets another interval: 2 s on the lab's controllers); a change that loads is used from the next
connection on, one that does not is logged and the files in use are kept. A renewed serving cert or
a client CA bundle needs no restart.

TLS and client certificates. Go's server (the real one) asks for a client certificate without
verifying it in the handshake and leaves the decision to the x509 authenticator, so a certificate
from an unknown CA gets an HTTP 401. Python's `ssl` cannot do that (it verifies whatever it
requests). When pyOpenSSL is importable (Debian's python3-openssl, in the lab's root) the stand-in
uses it the same way as Go: it requests a certificate naming the --client-ca-file CAs, accepts any
in the handshake, and authn decides (exact 401). Without pyOpenSSL it falls back to `ssl` with
CERT_OPTIONAL and the client CA: a certificate that does not verify then fails the TLS handshake
instead of getting a 401 (the one observable difference). Both hand authn the intermediates the
client sent (Python 3.11's ssl through its C object's `get_unverified_chain()`, see tls.py).
Request bodies are framed as Go's net/http frames them: a Content-Length that is not a decimal
number (negative, signed, hex, repeated with another value) is Go's plain `400 Bad Request`, a
transfer coding other than chunked a 501, and a body over the API server's 3 MiB (by its
Content-Length, or by a chunk's declared size) its 413 Status, all before the body is read. `K8SBOOT_STANDIN_TLS=ssl|pyopenssl`
forces a backend. A server certificate is required (the real binary would self-sign one).

Modules: `flags` (the command line and its validation), `tls` (the two TLS backends), `http`
(HTTP/1.1 as Go's net/http reads it), `lifecycle` (health checks, ready delay, graceful
termination), `api` (routing, discovery and the handlers), `resources` (the stored kinds: names,
defaults, errors, patches, tables), `storage` (the store interface and the file store), `etcdstore` (the store on etcd),
`bootstrap` (what exists at start; the RBAC source over the store), `authorization` (the modes),
`tokenrequest`, `impersonation`, `reload` (certificates read again), `authconfig` (--authentication-config:
its keys, reload and metrics), `protobuf` (request bodies), `openapi`, `server` (one connection's request loop:
admit, authenticate, impersonate, authorize, answer, log), `log`, and `main` (`kube-apiserver`'s
entry point; also `python3 -m k8sboot.standin`).

Runs on Debian bookworm's python3 with python3-cryptography 38 and python3-jwt 2.6 (no PyYAML):
it imports the standard library, the packages `k8sboot.authn` and `k8sboot.rbac`, `k8sboot.tokens`
(key ids), `k8sboot.errors` and (optionally) OpenSSL only; the lab copies exactly those
(k8sboot/lab/plan.py STANDIN_MODULES, STANDIN_PACKAGES).
"""

from __future__ import annotations


from __future__ import annotations

from k8sboot.standin.api import BANNER, GIT_VERSION, VERSION_INFO, Api, Answer, Request, discovery_document
from k8sboot.standin.flags import (FLAG_TYPES, FlagError, Flags, check_files, check_signing_key, parse_flags,
                                   parse_go_duration, render_errors, validate_flags)
from k8sboot.standin.http import BadRequest, Headers, read_request_head
from k8sboot.standin.lifecycle import (HEALTH_CHECKS, READY_DELAY_ENV, STARTING_HOOKS, Lifecycle,
                                       begin_graceful_shutdown, health_answer, parse_ready_delay)
from k8sboot.standin.log import log, new_audit_id
from k8sboot.standin.main import USAGE, main
from k8sboot.standin.server import StandinServer, StartupError, build_server, load_config
from k8sboot.standin.storage import FileStore, open_store
from k8sboot.standin.tls import make_tls

__all__ = [
    "BANNER", "GIT_VERSION", "VERSION_INFO", "Api", "Answer", "Request", "discovery_document", "FLAG_TYPES", "FlagError", "Flags", "check_files", "check_signing_key",
    "parse_flags", "parse_go_duration", "render_errors", "validate_flags", "BadRequest", "Headers",
    "read_request_head", "HEALTH_CHECKS", "READY_DELAY_ENV", "STARTING_HOOKS", "Lifecycle",
    "begin_graceful_shutdown", "health_answer", "parse_ready_delay", "log", "new_audit_id", "USAGE", "main",
    "StandinServer", "StartupError", "build_server", "load_config", "make_tls", "FileStore", "open_store",
]

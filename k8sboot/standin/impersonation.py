"""`Impersonate-*` headers (`kubectl --as`, `--as-group`, `--as-uid`) as k8s.io/apiserver's
WithImpersonation filter decides them: each requested attribute must be allowed by the
authorizer (verb `impersonate` on users / serviceaccounts / groups / uids / userextras), else
the 403 names the first one refused; then the request goes on as the impersonated user (a
ServiceAccount user gets its groups when none are asked for; system:authenticated is added for
a non-anonymous user unless system:authenticated or system:unauthenticated is asked for). Pure.
"""

from __future__ import annotations

from typing import Any, Sequence

from k8sboot import authn, rbac
from k8sboot.standin.resources import bad_request

SA_PREFIX = "system:serviceaccount:"


def requested(headers: Any) -> bool:
    return any(headers.get(h) is not None for h in ("Impersonate-User", "Impersonate-Uid")) or \
        bool(headers.get_all("Impersonate-Group")) or any(n.startswith("impersonate-extra-") for n in headers.names())


def impersonate(user: authn.UserInfo, headers: Any, authorizer: Any) -> authn.UserInfo | tuple[int, dict]:
    """The impersonated user, or (code, Status) for a refused or malformed request."""
    username = headers.get("Impersonate-User")
    groups: list[str] = list(headers.get_all("Impersonate-Group"))
    uid = headers.get("Impersonate-Uid") or ""
    extra: dict[str, list[str]] = {}
    for name in headers.names():
        if name.startswith("impersonate-extra-"):
            key = _unescape(name[len("impersonate-extra-"):])
            extra.setdefault(key, []).extend(headers.get_all(name))
    if not username:
        asked = (["groups"] if groups else []) + (["extra"] if extra else []) + (["uid"] if uid else [])
        return 400, bad_request(f"requested [{' '.join(asked)}] without impersonating a user")
    checks: list[rbac.Attributes] = []
    if username.startswith(SA_PREFIX) and username.count(":") == 3:
        namespace, name = username[len(SA_PREFIX):].split(":", 1)
        checks.append(rbac.Attributes(verb="impersonate", is_resource=True, namespace=namespace,
                                      resource="serviceaccounts", name=name))
        if not groups:
            groups = [authn.GROUP_SERVICE_ACCOUNTS, f"{authn.GROUP_SERVICE_ACCOUNTS}:{namespace}"]
            implied_groups = True
        else:
            implied_groups = False
    else:
        checks.append(rbac.Attributes(verb="impersonate", is_resource=True, resource="users", name=username))
        implied_groups = False
    if not implied_groups:
        checks.extend(rbac.Attributes(verb="impersonate", is_resource=True, resource="groups", name=g) for g in groups)
    if uid:
        checks.append(rbac.Attributes(verb="impersonate", is_resource=True, resource="uids", name=uid))
    for key, values in extra.items():
        checks.extend(rbac.Attributes(verb="impersonate", is_resource=True, api_group="authentication.k8s.io",
                                      resource="userextras", subresource=key, name=v) for v in values)
    for attrs in checks:
        decision = authorizer.authorize(user, attrs)
        if not decision.allowed:
            return 403, rbac.forbidden_status(user, attrs, decision.reason)
    return authn.UserInfo(username, uid=uid, groups=tuple(_with_default_group(username, groups)),
                          extra={k: tuple(v) for k, v in extra.items()})


def _with_default_group(username: str, groups: Sequence[str]) -> list[str]:
    out = list(groups)
    if username != authn.USER_ANONYMOUS:
        if authn.GROUP_AUTHENTICATED not in out and authn.GROUP_UNAUTHENTICATED not in out:
            out.append(authn.GROUP_AUTHENTICATED)
    elif authn.GROUP_UNAUTHENTICATED not in out:
        out.append(authn.GROUP_UNAUTHENTICATED)
    return out


def _unescape(key: str) -> str:
    """Impersonate-Extra-<key>: the key is percent-encoded in the header name."""
    from urllib.parse import unquote

    return unquote(key)

"""Name constraints of the CAs in a verified chain over the SANs below them (DNS, IP, email, URI),
as Go's crypto/x509 constraints.go checks them, with Go's error text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509

# Go's %q and the extension lookup, shared with x509.py.


def _go_quote(text: str) -> str:
    """Go's %q for printable text."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _extension(cert: x509.Certificate, kind: type) -> Any:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


# --- name constraints (Go's constraints.go) -------------------------------------------------------


def _domain_name_valid(name: str, constraint: bool = False) -> bool:
    if not name:
        return True
    if name.endswith("."):
        return False
    if constraint and name.startswith("."):
        name = name[1:]
    return all(label and all(33 <= ord(c) <= 126 for c in label) for label in name.split("."))


def _dns_has_suffix(constraint: str, name: str) -> bool:
    """dnsHasSuffix: `constraint` is a label suffix of `name` (ASCII case-insensitively); a
    leading-period constraint needs at least one more label."""
    if len(constraint) > len(name) or not name.lower().endswith(constraint.lower()):
        return False
    return constraint.startswith(".") or len(name) == len(constraint) or \
        name[len(name) - len(constraint) - 1] == "."


def _trim_first_label(name: str) -> str:
    dot = name.find(".")
    return "" if dot < 0 else name[dot:]


def _dns_query(constraints: Sequence[str], name: str, *, permitted: bool) -> str | None:
    """The constraint that matches `name`, or None (an empty constraint matches everything)."""
    if any(c == "" for c in constraints):
        return ""
    for constraint in constraints:
        if _dns_has_suffix(constraint, name):
            return constraint
    if not permitted and name.startswith("*"):          # *.example.com vs excluded a.example.com
        parent = _trim_first_label(name.lower())
        for constraint in constraints:
            if parent and _trim_first_label(constraint.lower()) == parent:
                return constraint
    return None


def _mailbox(address: str) -> tuple[str, str] | None:
    local, at, domain = address.rpartition("@")
    return (local, domain.lower()) if at and local and domain else None


def _email_query(constraints: Sequence[str], mailbox: tuple[str, str], *, permitted: bool) -> str | None:
    for constraint in constraints:
        if "@" in constraint and _mailbox(constraint) == mailbox:
            return f"{mailbox[0]}@{mailbox[1]}"
    domains = [c for c in constraints if "@" not in c]
    return _dns_query(domains, mailbox[1], permitted=permitted) if domains else None


def _uri_host(uri: str) -> tuple[str | None, str | None]:
    """(host, None) or (None, error) as Go's parseURIs gives them."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(uri).netloc.rpartition("@")[2].lower()
    if not host:
        return None, f"URI with empty host ({_go_quote(uri)}) cannot be matched against constraints"
    if ":" in host and not host.endswith("]"):
        host = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        is_ip = True
    except ValueError:
        is_ip = host.startswith("[") and host.endswith("]")
    if is_ip:
        return None, f"URI with IP ({_go_quote(uri)}) cannot be matched against constraints"
    return host, None


def _constraint_problem(nc: x509.NameConstraints, dns: Sequence[str], uris: Sequence[tuple[str, str]],
                        emails: Sequence[tuple[str, str]], ips: Sequence[Any]) -> str | None:
    def names(subtrees: Any, kind: type) -> list[Any]:
        return [s.value for s in (subtrees or ()) if isinstance(s, kind)]

    def check(kind: str, shown: str, permitted: list, excluded: list, query) -> str | None:
        if permitted and query(permitted, True) is None:
            return f"{kind} {_go_quote(shown)} is not permitted by any constraint"
        if excluded:
            constraint = query(excluded, False)
            if constraint is not None:
                return f"{kind} {_go_quote(shown)} is excluded by constraint {_go_quote(str(constraint))}"
        return None

    for ip in ips:
        def ip_query(nets: list, _permitted: bool, ip=ip) -> Any:
            same = [n for n in nets if n.version == ip.version]
            return next((n for n in same if ip in n), None)
        problem = check("IP address", str(ip), names(nc.permitted_subtrees, x509.IPAddress),
                        names(nc.excluded_subtrees, x509.IPAddress), ip_query)
        if problem:
            return problem
    for name in dns:
        if not _domain_name_valid(name):
            return f"x509: cannot parse dnsName {_go_quote(name)}"
        problem = check("DNS name", name, names(nc.permitted_subtrees, x509.DNSName),
                        names(nc.excluded_subtrees, x509.DNSName),
                        lambda cs, p, name=name: _dns_query(cs, name, permitted=p))
        if problem:
            return problem
    for uri, host in uris:
        if not _domain_name_valid(host):
            return f"x509: internal error: URI SAN {_go_quote(uri)} failed to parse"
        problem = check("URI", uri, names(nc.permitted_subtrees, x509.UniformResourceIdentifier),
                        names(nc.excluded_subtrees, x509.UniformResourceIdentifier),
                        lambda cs, p, host=host: _dns_query(cs, host, permitted=p))
        if problem:
            return problem
    for mailbox in emails:
        shown = f"{mailbox[0]}@{mailbox[1]}"
        if not _domain_name_valid(mailbox[1]):
            return f"x509: cannot parse rfc822Name {_go_quote(shown)}"
        problem = check("email address", shown, names(nc.permitted_subtrees, x509.RFC822Name),
                        names(nc.excluded_subtrees, x509.RFC822Name),
                        lambda cs, p, mailbox=mailbox: _email_query(cs, mailbox, permitted=p))
        if problem:
            return problem
    return None


def _chain_constraints_problem(chain: Sequence[x509.Certificate]) -> str | None:
    """Go's checkChainConstraints: each CA's name constraints bind the SANs of the certs below."""
    constrained = [(i, nc) for i, c in enumerate(chain)
                   for nc in (_extension(c, x509.NameConstraints),) if nc is not None]
    if not constrained:
        return None
    for i, cert in enumerate(chain):
        san = _extension(cert, x509.SubjectAlternativeName)
        if san is None:
            continue
        above = [nc for j, nc in constrained if j > i]
        if not above:
            return None
        uris: list[tuple[str, str]] = []
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            host, error = _uri_host(uri)
            if error:
                return error
            uris.append((uri, host or ""))
        emails = []
        for address in san.get_values_for_type(x509.RFC822Name):
            mailbox = _mailbox(address)
            if mailbox is None:
                return f"cannot parse rfc822Name {_go_quote(address)}"
            emails.append(mailbox)
        for nc in above:
            problem = _constraint_problem(nc, san.get_values_for_type(x509.DNSName), uris, emails,
                                          san.get_values_for_type(x509.IPAddress))
            if problem:
                return problem
    return None

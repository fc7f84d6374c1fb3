"""`k8sboot can-i`: Stage 2 of the API server, offline — `kubectl auth can-i` without a server.

Thin shell: authentication as `whoami` does it (k8sboot.authn, via auth_cmds' helpers), then the
decision by `k8sboot.rbac` — the code the lab's kube-apiserver stand-in runs — over the bootstrap
policy plus the RBAC objects of the files given with -f. YAML is read here; k8sboot.rbac stays stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from k8sboot.cli.options import inventory_option
from k8sboot.errors import ExitCode, K8sbootError

if TYPE_CHECKING:
    from k8sboot import rbac
    from k8sboot.authn import UserInfo

CAN_I_EPILOG = """\
\b
Examples:
  k8sboot can-i --cert pki/admin.pem list pods                  yes (system:masters)
  k8sboot can-i --token "$TOK" list pods -n authn-demo          no: a fresh ServiceAccount
  k8sboot can-i --token "$TOK" create selfsubjectaccessreviews  yes: system:basic-user
  k8sboot can-i --anonymous get /version                        yes: system:public-info-viewer
  k8sboot can-i --anonymous get /api                            no
  k8sboot can-i --token "$TOK" get pods/web -n dev -f rbac/dev-readers.yaml
      with a Role and RoleBinding of yours (the form kubectl apply -f takes)
  k8sboot can-i --cert pki/jane.pem get pods --subresource log -n dev -f rbac.yaml
  k8sboot can-i --cert pki/jane.pem create deployments.apps -n dev -f rbac.yaml
  k8sboot can-i --token "$TOK" --list -n authn-demo             like kubectl auth can-i --list

\b
RESOURCE is a plural name (pods), a short name (po, deploy), RESOURCE.GROUP (widgets.example.com)
or '*'; RESOURCE/NAME asks about one object; a path starting with / asks about a non-resource URL.
The answer uses the API server's bootstrap policy (cluster-admin <- system:masters, system:basic-user,
system:discovery, system:public-info-viewer, view, edit, admin, ...) plus the -f files. A live
server may hold more bindings than these: ask it with `kubectl auth can-i` for the final word.

\b
Exit codes: 0 yes; 1 no; 11 the API server would answer 401 (the reason on stderr);
2 bad usage or an unusable -f file; 4 a PKI file is missing or unreadable; 3 bad inventory.
"""

# kubectl auth can-i's known verbs (it only warns about others, and so do we)
RESOURCE_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "use", "bind",
                  "impersonate", "*", "approve", "sign", "escalate", "attest")
NON_RESOURCE_VERBS = ("get", "put", "post", "head", "options", "delete", "patch", "*")

# The resources kubectl's discovery would map a name to: (plural, group, namespaced, other names).
# A short table of what users ask about; anything else is RESOURCE.GROUP.
RESOURCES = (
    ("pods", "", True, ("pod", "po")),
    ("services", "", True, ("service", "svc")),
    ("configmaps", "", True, ("configmap", "cm")),
    ("secrets", "", True, ("secret",)),
    ("serviceaccounts", "", True, ("serviceaccount", "sa")),
    ("endpoints", "", True, ("ep",)),
    ("events", "", True, ("event", "ev")),
    ("persistentvolumeclaims", "", True, ("persistentvolumeclaim", "pvc")),
    ("replicationcontrollers", "", True, ("replicationcontroller", "rc")),
    ("limitranges", "", True, ("limitrange", "limits")),
    ("resourcequotas", "", True, ("resourcequota", "quota")),
    ("podtemplates", "", True, ("podtemplate",)),
    ("namespaces", "", False, ("namespace", "ns")),
    ("nodes", "", False, ("node", "no")),
    ("persistentvolumes", "", False, ("persistentvolume", "pv")),
    ("users", "", False, ()),           # impersonate only; no discovery entry (kubectl knows them too)
    ("groups", "", False, ()),
    ("deployments", "apps", True, ("deployment", "deploy")),
    ("replicasets", "apps", True, ("replicaset", "rs")),
    ("statefulsets", "apps", True, ("statefulset", "sts")),
    ("daemonsets", "apps", True, ("daemonset", "ds")),
    ("controllerrevisions", "apps", True, ("controllerrevision",)),
    ("jobs", "batch", True, ("job",)),
    ("cronjobs", "batch", True, ("cronjob", "cj")),
    ("horizontalpodautoscalers", "autoscaling", True, ("horizontalpodautoscaler", "hpa")),
    ("poddisruptionbudgets", "policy", True, ("poddisruptionbudget", "pdb")),
    ("ingresses", "networking.k8s.io", True, ("ingress", "ing")),
    ("networkpolicies", "networking.k8s.io", True, ("networkpolicy", "netpol")),
    ("ingressclasses", "networking.k8s.io", False, ("ingressclass",)),
    ("endpointslices", "discovery.k8s.io", True, ("endpointslice",)),
    ("leases", "coordination.k8s.io", True, ("lease",)),
    ("roles", "rbac.authorization.k8s.io", True, ("role",)),
    ("rolebindings", "rbac.authorization.k8s.io", True, ("rolebinding",)),
    ("clusterroles", "rbac.authorization.k8s.io", False, ("clusterrole",)),
    ("clusterrolebindings", "rbac.authorization.k8s.io", False, ("clusterrolebinding",)),
    ("selfsubjectaccessreviews", "authorization.k8s.io", False, ("selfsubjectaccessreview",)),
    ("selfsubjectrulesreviews", "authorization.k8s.io", False, ("selfsubjectrulesreview",)),
    ("subjectaccessreviews", "authorization.k8s.io", False, ("subjectaccessreview",)),
    ("localsubjectaccessreviews", "authorization.k8s.io", True, ("localsubjectaccessreview",)),
    ("selfsubjectreviews", "authentication.k8s.io", False, ("selfsubjectreview",)),
    ("tokenreviews", "authentication.k8s.io", False, ("tokenreview",)),
    ("certificatesigningrequests", "certificates.k8s.io", False, ("certificatesigningrequest", "csr")),
    ("storageclasses", "storage.k8s.io", False, ("storageclass", "sc")),
    ("volumeattachments", "storage.k8s.io", False, ("volumeattachment",)),
    ("csidrivers", "storage.k8s.io", False, ("csidriver",)),
    ("csinodes", "storage.k8s.io", False, ("csinode",)),
    ("customresourcedefinitions", "apiextensions.k8s.io", False, ("customresourcedefinition", "crd", "crds")),
    ("priorityclasses", "scheduling.k8s.io", False, ("priorityclass", "pc")),
    ("runtimeclasses", "node.k8s.io", False, ("runtimeclass",)),
    ("mutatingwebhookconfigurations", "admissionregistration.k8s.io", False, ("mutatingwebhookconfiguration",)),
    ("validatingwebhookconfigurations", "admissionregistration.k8s.io", False, ("validatingwebhookconfiguration",)),
)


class RbacFileError(K8sbootError):
    """An -f file that cannot be read, parsed, or holds an unusable RBAC object."""

    code = ExitCode.OBJECTS


def resolve_resource(arg: str) -> tuple[str, str, bool | None]:
    """RESOURCE or RESOURCE.GROUP → (resource, group, namespaced or None when unknown).
    Raises ValueError for a bare name the table does not know."""
    arg = arg.lower()
    if arg == "*":
        return "*", "", None
    for plural, group, namespaced, others in RESOURCES:
        if arg == plural or arg in others:
            return plural, group, namespaced
    resource, dot, group = arg.partition(".")
    if dot and resource and group:
        for plural, known_group, namespaced, others in RESOURCES:
            if known_group == group and (resource == plural or resource in others):
                return plural, group, namespaced
        return resource, group, None
    raise ValueError(f"unknown resource {arg!r}: k8sboot knows the common built-in resources only "
                     f"(pods, deployments, clusterrolebindings, ...); name others with their API group, "
                     f"RESOURCE.GROUP, e.g. {arg}.example.com, or {arg}.apps")


def parse_target(target: str) -> tuple[str, str, str, bool | None, bool]:
    """kubectl's second argument → (resource, group, name, namespaced, is_url); for a URL the path
    is returned as `resource`."""
    if target.startswith("/"):
        return target, "", "", None, True
    token, _, name = target.partition("/")
    resource, group, namespaced = resolve_resource(token)
    return resource, group, name, namespaced, False


# --- what kubectl prints (pure; kubectl's client side, so not in k8sboot.rbac) ----------------


def render_can_i(decision: rbac.Decision) -> str:
    """`kubectl auth can-i`'s line: "yes", or "no" with " - reason" and " - evaluationError"."""
    if decision.allowed:
        return "yes\n"
    return "no" + (f" - {decision.reason}" if decision.reason else "") + (
        f" - {decision.evaluation_error}" if decision.evaluation_error else "") + "\n"


def _go_list(values: Sequence[str]) -> str:
    return "[" + " ".join(values) + "]"


def _breakdown(rule: Mapping[str, Any]) -> list[dict]:
    """rbacutil.BreakdownRule: one verb, one group, one resource, at most one name per rule."""
    out: list[dict] = []
    verbs = list(rule.get("verbs") or [])
    names = list(rule.get("resourceNames") or [])
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in verbs:
                for name in names or [None]:
                    out.append({"verbs": [verb], "apiGroups": [group], "resources": [resource],
                                "resourceNames": [name] if name is not None else []})
    for url in rule.get("nonResourceURLs") or []:
        for verb in verbs:
            out.append({"verbs": [verb], "nonResourceURLs": [url]})
    return out


def _compact(rules: Sequence[dict]) -> list[dict]:
    """rbacutil.CompactRules: simple rules that differ only by verb become one."""
    compacted: list[dict] = []
    simple: dict[tuple, dict] = {}
    for rule in rules:
        names = rule.get("resourceNames") or []
        if (len(names) <= 1 and not rule.get("nonResourceURLs") and len(rule.get("apiGroups") or []) == 1
                and len(rule.get("resources") or []) == 1):
            key = (rule["apiGroups"][0], rule["resources"][0], bool(names), names[0] if names else "")
            if key in simple:
                for verb in rule.get("verbs") or []:
                    if verb not in simple[key]["verbs"]:
                        simple[key]["verbs"].append(verb)
            else:
                simple[key] = {k: list(v) for k, v in rule.items()}
        else:
            compacted.append(rule)
    return compacted + list(simple.values())


def _go_rule_string(rule: Mapping[str, Any]) -> str:
    """PolicyRule.String() (gogo-protobuf), the key kubectl sorts the list by."""
    return ("&PolicyRule{" + "".join(f"{field}:{_go_list(rule.get(key) or [])}," for field, key in (
        ("Verbs", "verbs"), ("APIGroups", "apiGroups"), ("Resources", "resources"),
        ("ResourceNames", "resourceNames"), ("NonResourceURLs", "nonResourceURLs"))) + "}")


def _combine_resource_group(resources: Sequence[str], groups: Sequence[str]) -> str:
    """describe.CombineResourceGroup: pods, deployments.apps, pods/log, deployments.apps/scale."""
    if not resources:
        return ""
    resource, _, sub = resources[0].partition("/")
    combined = resource + (f".{groups[0]}" if groups and groups[0] else "")
    return combined + (f"/{sub}" if "/" in resources[0] else "")


def _go_tabwriter(rows: Sequence[Sequence[str]], minwidth: int = 6, padding: int = 3) -> str:
    """Go's text/tabwriter as kubectl's printers.GetNewTabWriter sets it up (every cell but the
    last of a row padded to its column's width)."""
    columns = max(len(r) for r in rows) - 1
    widths = [max([minwidth] + [len(r[i]) + padding for r in rows if len(r) > i + 1]) for i in range(columns)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def render_rules_table(result: rbac.RulesResult, *, headers: bool = True) -> str:
    """`kubectl auth can-i --list`'s table for a rules review's status."""
    rules: list[dict] = []
    for rule in [*result.resource_rules, *result.non_resource_rules]:
        rules.extend(_breakdown(rule))
    compacted = sorted(_compact(rules), key=_go_rule_string)
    rows = [["Resources", "Non-Resource URLs", "Resource Names", "Verbs"]] if headers else []
    for rule in compacted:
        rows.append([_combine_resource_group(rule.get("resources") or [], rule.get("apiGroups") or []),
                     _go_list(rule.get("nonResourceURLs") or []), _go_list(rule.get("resourceNames") or []),
                     _go_list(rule.get("verbs") or [])])
    return _go_tabwriter(rows) if rows else ""


# --- the RBAC files -------------------------------------------------------------------------------


def _yaml_documents(path: Path) -> list:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RbacFileError(f"reading RBAC objects from {path}: no such file",
                            hint="pass an existing YAML file with -f, e.g. -f rbac.yaml") from None
    except IsADirectoryError:
        raise RbacFileError(f"reading RBAC objects from {path}: is a directory",
                            hint="pass each YAML file with its own -f") from None
    except UnicodeDecodeError:
        raise RbacFileError(f"reading RBAC objects from {path}: not UTF-8 text",
                            hint="pass a YAML file of Roles, ClusterRoles and their bindings") from None
    except OSError as exc:
        raise RbacFileError(f"reading RBAC objects from {path}: {exc.strerror}") from exc
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RbacFileError(f"reading RBAC objects from {where}: {problem}",
                            hint="fix the YAML; it is what `kubectl apply -f` would read") from exc


def load_rbac_objects(paths: list[Path], default_namespace: str) -> tuple[list[dict], list[str]]:
    """The Roles, ClusterRoles and bindings of the files (List objects unwrapped), Roles and
    RoleBindings without a namespace put in `default_namespace` as kubectl apply -f does; and a
    note per file for the objects of other kinds, which are skipped."""
    from k8sboot import rbac

    objects: list[dict] = []
    notes: list[str] = []
    for path in paths:
        skipped: list[str] = []
        docs = _yaml_documents(path)
        items: list = []
        for doc in docs:
            if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
                items.extend(doc["items"])
            else:
                items.append(doc)
        for index, obj in enumerate(items):
            kind = obj.get("kind") if isinstance(obj, dict) else None
            if isinstance(obj, dict) and kind not in rbac.RBAC_KINDS and isinstance(kind, str):
                skipped.append(kind)
                continue
            problems = rbac.check_object(obj)
            if problems:
                name = (obj.get("metadata") or {}).get("name") if isinstance(obj, dict) and isinstance(
                    obj.get("metadata"), dict) else None
                what = f"{kind} {name!r}" if kind and name else f"object {index + 1}"
                raise RbacFileError(f"reading RBAC objects from {path}: {what}: {problems[0]}",
                                    hint="each object needs kind, metadata.name, and rules (roles) or "
                                         "roleRef and subjects (bindings), as kubectl apply -f takes them")
            if kind in ("Role", "RoleBinding") and not obj["metadata"].get("namespace"):
                obj = {**obj, "metadata": {**obj["metadata"], "namespace": default_namespace}}
            objects.append(obj)
        if skipped:
            notes.append(f"note: {path}: skipped {len(skipped)} object(s) that RBAC does not read "
                         f"({', '.join(sorted(set(skipped)))})")
    return objects, notes


# --- the command ----------------------------------------------------------------------------------


def _note_if_kubectl_could_not_ask(user: UserInfo, authorizer, review: str) -> None:
    """kubectl asks by creating a review; a user RBAC does not allow that (system:anonymous: only
    system:authenticated has system:basic-user) gets a 403 from a real server instead of an answer."""
    from k8sboot import console, rbac

    attrs = rbac.Attributes(verb="create", is_resource=True, api_group=rbac.AUTHORIZATION_GROUP,
                            api_version="v1", resource=review)
    decision = authorizer.authorize(user, attrs)
    if not decision.allowed:
        console.info(f"note: kubectl auth can-i cannot ask this for {user.username}: the server answers "
                     f"403 ({rbac.forbidden_status(user, attrs, decision.reason)['message']})")


def can_i(
    verb: Optional[str] = typer.Argument(None, metavar="VERB", show_default=False,
                                         help="get, list, watch, create, update, patch, delete, ..., or '*'."),
    target: Optional[str] = typer.Argument(None, metavar="RESOURCE[/NAME] | /URL", show_default=False,
                                           help="pods, deployments.apps, pods/web, '*', or a path like /healthz."),
    cert: Optional[Path] = typer.Option(None, "--cert", metavar="FILE",
                                        help="A client certificate (PEM), checked against <pki.dir>/ca.pem."),
    key: Optional[Path] = typer.Option(None, "--key", metavar="FILE",
                                       help="The cert's private key: checked to match the cert."),
    token: Optional[str] = typer.Option(None, "--token", metavar="TOKEN",
                                        help="A ServiceAccount JWT, or '-' to read it from stdin."),
    anonymous: bool = typer.Option(False, "--anonymous", help="No credential at all (system:anonymous)."),
    namespace: str = typer.Option("default", "-n", "--namespace", metavar="NS",
                                  help="The namespace asked about (kubectl's default: default)."),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces",
                                        help="Ask about every namespace (cluster-wide bindings only)."),
    subresource: str = typer.Option("", "--subresource", metavar="SUB", help="A subresource: log, status, scale..."),
    files: Optional[list[Path]] = typer.Option(None, "-f", "--filename", metavar="FILE",
                                               help="YAML with Roles, ClusterRoles, RoleBindings, "
                                                    "ClusterRoleBindings (repeatable)."),
    list_all: bool = typer.Option(False, "--list", help="Print every allowed action in the namespace."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print nothing; answer with the exit code."),
    inventory: Path = inventory_option,
    as_json: bool = typer.Option(False, "--json",
                                 help="Print the SelfSubjectAccessReview (or RulesReview) the server would return."),
) -> None:
    """Whether kube-apiserver's RBAC would allow an action, offline: like `kubectl auth can-i`.

    Authenticates the credential as `whoami` does (401: exit 11), then decides with the API server's
    RBAC rules over its bootstrap policy and the -f files. Prints yes or no, exit 0 or 1.
    """
    given = [n for n, present in (("--cert", cert is not None), ("--token", token is not None),
                                  ("--anonymous", anonymous)) if present]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --cert FILE, --token TOKEN or --anonymous"
                                 + (f" (got {' and '.join(given)})" if given else ""),
                                 param_hint="'--cert' / '--token' / '--anonymous'")
    if key is not None and cert is None:
        raise typer.BadParameter("--key goes with --cert", param_hint="'--key'")
    if list_all:
        if verb is not None or target is not None:
            raise typer.BadParameter("--list takes no VERB or RESOURCE", param_hint="'--list'")
        if all_namespaces or subresource or quiet:
            raise typer.BadParameter("--list cannot be combined with --all-namespaces, --subresource or "
                                     "--quiet", param_hint="'--list'")
    elif verb is None or target is None:
        raise typer.BadParameter("give VERB and RESOURCE[/NAME] (or a /URL), e.g. `list pods` or "
                                 "`get /healthz`; or --list", param_hint="'VERB RESOURCE'")
    resource = group = name = ""
    namespaced: bool | None = None
    is_url = False
    if not list_all:
        try:
            resource, group, name, namespaced, is_url = parse_target(target)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'RESOURCE'") from None
        if is_url and (subresource or all_namespaces):
            raise typer.BadParameter("a non-resource URL takes no --subresource or --all-namespaces",
                                     param_hint="'/URL'")
    from k8sboot.cli.auth_cmds import authenticate_offline, token_argument

    token = token_argument(token)

    from k8sboot import console, rbac

    objects, notes = load_rbac_objects(list(files or []), namespace)   # before authenticating: validate first
    user = authenticate_offline(inventory, cert, key, token, as_json)[0].user
    for note in notes:
        console.info(note)
    authorizer = rbac.Authorizer(rbac.StaticSource(rbac.bootstrap_policy() + objects))
    _note_if_kubectl_could_not_ask(user, authorizer, "selfsubjectrulesreviews" if list_all else "selfsubjectaccessreviews")

    if list_all:
        review = rbac.self_subject_rules_review(user, {"spec": {"namespace": namespace}}, authorizer)
        if as_json:
            console.json_out(review)
            return
        status = review["status"]
        if status["incomplete"]:
            console.info(f"Warning: the list may be incomplete: {status.get('evaluationError', '')}")
        elif status.get("evaluationError"):
            console.info(f"note: {status['evaluationError']}")
        console.data(render_rules_table(rbac.RulesResult(
            tuple(status["resourceRules"]), tuple(status["nonResourceRules"]), status["incomplete"],
            status.get("evaluationError", ""))).rstrip("\n"))
        return

    if is_url:
        if verb not in NON_RESOURCE_VERBS:
            console.info(f"Warning: verb '{verb}' is not a known verb")
        spec = {"nonResourceAttributes": {"path": resource, "verb": verb}}
    else:
        if namespaced is False and not all_namespaces:
            console.info(f"Warning: resource '{resource}' is not namespace scoped"
                         + (f" in group '{group}'" if group else ""))
        if verb not in RESOURCE_VERBS:
            console.info(f"Warning: verb '{verb}' is not a known verb")
        spec = {"resourceAttributes": {"namespace": "" if all_namespaces else namespace, "verb": verb,
                                       "group": group, "resource": resource, "subresource": subresource,
                                       "name": name}}
    review = rbac.self_subject_access_review(user, {"spec": spec}, authorizer)
    status = review["status"]
    if as_json:
        console.json_out(review)
    elif not quiet:
        console.data(render_can_i(rbac.Decision(status["allowed"], status.get("reason", ""),
                                                     evaluation_error=status.get("evaluationError", ""))))
    if not status["allowed"]:
        raise typer.Exit(int(ExitCode.FAILURE))


def register(app: typer.Typer) -> None:
    app.command("can-i", epilog=CAN_I_EPILOG)(can_i)

"""CEL for the JWT authenticators (`--authentication-config`): compile with the checker, evaluate.

kube-apiserver compiles every expression of an AuthenticationConfiguration with cel-go when it
loads the file and refuses the file on any error: a syntax error, an undeclared reference
(`claim.sub` for `claims.sub`), an overload that does not exist (`1 + 'a'`), or an output type the
field cannot take (a username expression that is a bool). This module does the same with the
official CEL C++ implementation (`cel-expr-python`), so those errors are found offline, at
`k8sboot inventory check`, not when users get 401.

Variables, as upstream declares them: `claims` (claim rules and mappings: the token's claims, a
`map(string, dyn)`) and `user` (userValidationRules: the mapped user, `username`, `uid`, `groups`,
`extra`). The strings and optional-types extensions are on, as in the API server's environment
(`claims.?email_verified.orValue(true)`, `claims.roles.split(',')`). Claims are JSON: a number is a
double, as Go's encoding/json gives it, so `claims.exp > 0` means the same thing here and there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CLAIMS = "claims"
USER = "user"

# what each field must evaluate to (upstream: the compiler's expected output types; dyn passes the
# check and is checked again on every evaluation)
BOOL = ("bool",)
STRING = ("string",)
STRING_OR_LIST = ("string", "list(string)")


class CelUnavailable(RuntimeError):
    """The CEL library is not installed here."""


class CelError(ValueError):
    """An expression does not compile, or its type is not what the field takes."""


class CelEvalError(ValueError):
    """An evaluation failed (a missing claim, a wrong runtime type)."""


_ENVS: dict[str, Any] = {}


def _cel():
    try:
        from cel_expr_python import cel
        from cel_expr_python.ext import ext_optional, ext_strings
    except ImportError as exc:          # pragma: no cover - a broken install
        raise CelUnavailable("the CEL library (cel-expr-python) is not installed: "
                             f"{exc}") from exc
    return cel, ext_strings, ext_optional


def _env(variable: str):
    env = _ENVS.get(variable)
    if env is None:
        cel, ext_strings, ext_optional = _cel()
        env = cel.NewEnv(variables={variable: cel.Type.Map(cel.Type.STRING, cel.Type.DYN)},
                         extensions=[ext_strings.ExtStrings(), ext_optional.ExtOptional()])
        _ENVS[variable] = env
    return env


def _type_ok(type_name: str, want: Sequence[str]) -> bool:
    name = type_name.lower().replace(" ", "")
    if name == "dyn":
        return True
    for w in want:
        if w == "bool" and name == "bool":
            return True
        if w == "string" and name == "string":
            return True
        if w == "list(string)" and name in ("list<string>", "list<dyn>"):
            return True
    return False


def _shown(want: Sequence[str]) -> str:
    return " or ".join(want)


def _clean(message: str) -> str:
    """cel-cpp's multi-line error as one line: `ERROR: <input>:1:6: undeclared reference to 'x'`."""
    text = message.replace("INVALID_ARGUMENT: ", "").strip()
    first = text.splitlines()[0] if text else "does not compile"
    return first.replace("ERROR: <input>:", "at ").replace(" (in container '')", "")


@dataclass(frozen=True)
class Program:
    """A compiled, checked expression and what its field takes."""

    source: str
    variable: str
    want: tuple[str, ...]
    _compiled: Any = None

    def evaluate(self, value: Mapping[str, Any]) -> Any:
        """The plain Python result, checked against `want`; CelEvalError otherwise."""
        try:
            result = self._compiled.eval(data={self.variable: _as_json(value)})
        except Exception as exc:        # cel-cpp raises RuntimeError for evaluation failures
            raise CelEvalError(_clean(str(exc))) from None
        if result.type().name().upper() == "ERROR":
            raise CelEvalError(_clean(str(result.value())))
        plain = result.plain_value()
        return _check_runtime(plain, self.want, self.source)


def _as_json(value: Any) -> Any:
    """Numbers as doubles (Go's encoding/json), recursively; bools stay bools."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def _check_runtime(plain: Any, want: Sequence[str], source: str) -> Any:
    if "bool" in want:
        if isinstance(plain, bool):
            return plain
    if "string" in want and isinstance(plain, str):
        return plain
    if "list(string)" in want and isinstance(plain, list) and all(isinstance(x, str) for x in plain):
        return plain
    kind = type(plain).__name__ if not isinstance(plain, list) else "list"
    raise CelEvalError(f"expression '{source}' evaluated to {kind}, the field needs {_shown(want)}")


def compile_expression(source: str, variable: str, want: Sequence[str]) -> Program:
    """Parse and type-check `source` with `variable` declared; CelError naming the column."""
    if not isinstance(source, str) or not source.strip():
        raise CelError("the expression is empty")
    env = _env(variable)
    try:
        compiled = env.compile(source)
    except Exception as exc:            # cel-cpp: RuntimeError("INVALID_ARGUMENT: ERROR: <input>:1:6: ...")
        raise CelError(f"compilation failed: {_clean(str(exc))}") from None
    type_name = compiled.return_type().name()
    if not _type_ok(type_name, want):
        raise CelError(f"must evaluate to {_shown(want)}, but its type is {type_name.lower()}")
    return Program(source, variable, tuple(want), compiled)


def references(source: str, name: str) -> bool:
    """Whether `source` mentions `claims.<name>` (or `claims.?name`, `claims['name']`): upstream's
    check that a username built from claims.email also looks at claims.email_verified."""
    import re

    return re.search(rf"\bclaims\s*(\.\??\s*{re.escape(name)}\b|\[\s*['\"]{re.escape(name)}['\"]\s*\])",
                     source) is not None

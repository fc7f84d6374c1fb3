"""Render the kube-apiserver unit from a Jinja template (pure: reads templates, writes nothing).

The template receives values computed in Python (`k8sboot.flags`, `k8sboot.layout`) and only
formats them. Jinja runs with StrictUndefined; any template problem becomes a `TemplateError`
naming `file:line`. A user's own copy is used when `--templates DIR` or the inventory's
`apiserver.templates` points at a directory; otherwise the packaged `templates/` (found next to
the package when installed, or at the top of a checkout).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from pathlib import Path

from k8sboot import flags as flagmod
from k8sboot import layout
from k8sboot.errors import TemplateError
from k8sboot.model import Host, Inventory

UNIT_TEMPLATE = "kube-apiserver.service.j2"


def template_dir_with(template: str, override: Path | None = None) -> Path:
    """A user's template dir (`--templates`) holding `template`, else the packaged one; a missing
    dir or template is one TemplateError with the hint to copy the packaged file there."""
    directory = Path(override).expanduser() if override is not None else packaged_templates_dir()
    if override is not None and not directory.is_dir():
        raise TemplateError(f"--templates: {directory} is not a directory")
    if not (directory / template).is_file():
        packaged = packaged_templates_dir() / template
        raise TemplateError(f"--templates: {directory} has no {template}" if override is not None
                            else f"the packaged template {template} is missing from {directory}",
                            hint=f"copy {packaged} there and edit it" if override is not None
                            else "reinstall k8sboot, or pass --templates DIR with your own copy")
    return directory


def packaged_templates_dir() -> Path:
    """`k8sboot/templates` when installed with package data, else `<checkout>/templates`."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "templates", here.parent / "templates"):
        if (candidate / UNIT_TEMPLATE).is_file():
            return candidate
    raise TemplateError(
        f"the packaged template {UNIT_TEMPLATE} is missing (looked in {here / 'templates'} and "
        f"{here.parent / 'templates'})",
        hint="reinstall k8sboot, or pass --templates DIR with your own copy")


def templates_dir_for(inventory: Inventory | None, override: Path | None = None) -> Path:
    """Which template directory wins: --templates, then the inventory, then the packaged one."""
    if override is not None:
        return _user_dir(Path(override), "--templates")
    if inventory is not None and inventory.apiserver.templates is not None:
        return _user_dir(inventory.apiserver.templates, f"{inventory.where('apiserver.templates')}: "
                                                        "apiserver.templates")
    return packaged_templates_dir()


def _user_dir(path: Path, origin: str) -> Path:
    path = path.expanduser()
    if not path.is_dir():
        raise TemplateError(f"{origin}: {path} is not a directory",
                            hint=f"create it with a copy of {packaged_templates_dir() / UNIT_TEMPLATE}")
    if not (path / UNIT_TEMPLATE).is_file():
        raise TemplateError(f"{origin}: {path} has no {UNIT_TEMPLATE}",
                            hint=f"copy {packaged_templates_dir() / UNIT_TEMPLATE} there and edit it")
    return path


@dataclass(frozen=True)
class RenderedUnit:
    host: Host
    flags: flagmod.Flags
    text: str
    template: Path


def unit_context(inventory: Inventory, host: Host, flags: flagmod.Flags) -> dict:
    """Everything the unit template may use; a template that asks for more fails (StrictUndefined)."""
    return {
        "host": {"name": host.name, "address": host.address, "internal_ip": str(host.internal_ip)},
        "cluster_name": inventory.cluster.name,
        "binary_path": layout.BINARY_PATH,
        "flags": list(flags),
        "exec_args": [flagmod.systemd_escape_arg(a) for a in flagmod.flags_to_argv(flags)],
    }


def render_unit(inventory: Inventory, host: Host, templates_dir: Path | None = None) -> RenderedUnit:
    """The unit text for one controller. InventoryError for bad extra_flags, TemplateError for templates."""
    flags = flagmod.build_apiserver_flags(inventory, host)
    directory = templates_dir or templates_dir_for(inventory)
    text = render_template(directory, UNIT_TEMPLATE, unit_context(inventory, host, flags))
    return RenderedUnit(host=host, flags=flags, text=text, template=directory / UNIT_TEMPLATE)


def render_all(inventory: Inventory, templates_dir: Path | None = None,
               hosts: tuple[Host, ...] | None = None) -> list[RenderedUnit]:
    directory = templates_dir or templates_dir_for(inventory)
    return [render_unit(inventory, h, directory) for h in (hosts or inventory.controllers)]


_environments: dict[Path, object] = {}


def _environment(directory: Path):
    import jinja2

    env = _environments.get(directory)
    if env is None:
        env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(directory)),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            autoescape=False,
        )
        _environments[directory] = env
    return env


def render_template(directory: Path, name: str, context: dict) -> str:
    """Render `directory/name`; every Jinja failure becomes TemplateError with file:line."""
    import jinja2

    path = directory / name
    try:
        template = _environment(directory).get_template(name)
        text = template.render(**context)
    except jinja2.TemplateSyntaxError as exc:
        where = f"{exc.filename or path}:{exc.lineno}"
        raise TemplateError(f"{where}: template syntax error: {exc.message}",
                            hint="fix the template, or remove --templates to use the packaged one") from exc
    except jinja2.TemplateNotFound as exc:
        # an {% include %} / {% extends %} of a missing template: name it, and where it was asked for
        missing = exc.name if exc.name and exc.name != path.name else None
        if missing:
            raise TemplateError(f"{_where_in_template(exc, path)}: template {missing!r} not found",
                                hint=f"put {missing} in {path.parent}, or remove the include") from exc
        raise TemplateError(f"{path}: template not found") from exc
    except jinja2.UndefinedError as exc:
        raise TemplateError(f"{_where_in_template(exc, path)}: {exc.message}",
                            hint="templates receive: " + ", ".join(sorted(context))) from exc
    except Exception as exc:  # noqa: BLE001 - an error raised while a template runs is the template's
        raise TemplateError(f"{_where_in_template(exc, path)}: template failed: "
                            f"{type(exc).__name__}: {exc}") from exc
    if not text.endswith("\n"):
        text += "\n"
    return text


def _where_in_template(exc: BaseException, path: Path) -> str:
    """file:line of the innermost template frame in the traceback (Jinja rewrites them)."""
    line = None
    target = str(path.resolve())
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        filename = frame.f_code.co_filename
        try:
            if str(Path(filename).resolve()) == target:
                line = lineno
        except (OSError, ValueError):
            continue
    return f"{path}:{line}" if line else str(path)

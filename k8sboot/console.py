"""The only printer. Data (tables, JSON, tokens, units) goes to stdout; messages to stderr.

Rich is imported lazily so that `k8sboot --help` and `whoami` start fast. Nothing secret is
ever passed here: callers print names, subjects, fingerprints and paths, never key material.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

_stderr_console = None
_stdout_console = None


def _err():
    global _stderr_console
    if _stderr_console is None:
        from rich.console import Console

        _stderr_console = Console(stderr=True, highlight=False, soft_wrap=True)
    return _stderr_console


def _out():
    global _stdout_console
    if _stdout_console is None:
        from rich.console import Console

        # piped output (scripts, CI logs) gets room for whole rows instead of rich's 80 columns
        width = None if sys.stdout.isatty() else 240
        _stdout_console = Console(highlight=False, soft_wrap=False, width=width)
    return _stdout_console


def data(text: str) -> None:
    """Raw data to stdout, exactly as given (a token, a unit file, a JSON document)."""
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def json_out(obj: Any) -> None:
    data(json.dumps(obj, indent=2, sort_keys=False, default=str))


def info(message: str) -> None:
    """A progress or outcome message for people (stderr). Plain text when stderr is not a
    terminal: no styling to do, and rich's first print costs ~20 ms of start-up on the way."""
    if _stderr_console is None and not sys.stderr.isatty():
        sys.stderr.write(message + "\n")
        sys.stderr.flush()
        return
    _err().print(message, markup=False)


def warn(message: str) -> None:
    _err().print(f"k8sboot: warning: {message}", style="yellow", markup=False)


def error(message: str, hint: str | None = None) -> None:
    """`k8sboot: error: <what failed>: <why>` and `  hint: <what to do>` on stderr."""
    _err().print(f"k8sboot: error: {message}", style="bold red", markup=False)
    if hint:
        _err().print(f"  hint: {hint}", markup=False)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None,
          styles: dict[str, str] | None = None) -> None:
    """A result table on stdout. `styles` maps a cell value (e.g. "FAIL") to a rich style."""
    from rich.table import Table
    from rich.text import Text

    out = _out()
    if title and not out.is_terminal:
        # a table title is padded to the console width; a plain line reads better in logs and pipes
        out.print(title, markup=False)
        title = None
    t = Table(title=title, title_justify="left", header_style="bold")
    for col in columns:
        t.add_column(col, overflow="fold")
    styles = styles or {}
    for row in rows:
        t.add_row(*(Text(str(cell), style=styles.get(str(cell), "")) for cell in row))
    out.print(t)


def status(message: str):
    """A live spinner on stderr for long work; a no-op context when stderr is not a terminal."""
    if not sys.stderr.isatty():
        import contextlib

        info(message)
        return contextlib.nullcontext()
    return _err().status(message)


def progress_console():
    """The stderr console, for rich.progress / rich.live users (lab, deploy)."""
    return _err()

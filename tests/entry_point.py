"""The installed `k8sboot` console script the subprocess tests run: the one beside the interpreter
running pytest, so the suite works from any virtualenv (not only the repository's `.venv`). A
missing script is a failure of the test that runs it, never a skip."""

from __future__ import annotations

import sys
from pathlib import Path

K8SBOOT = Path(sys.executable).with_name("k8sboot")

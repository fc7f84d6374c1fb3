"""klog-like lines on stderr (the unit's journal) and the Audit-Id of each request."""

from __future__ import annotations

import json
import os
import sys
import threading
from datetime import datetime

_log_lock = threading.Lock()


def new_audit_id() -> str:
    """A random (version 4) UUID for the Audit-Id header, without importing `uuid` (~3 ms of
    start-up on every lab host)."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def log(message: str, level: str = "I", stream=None) -> None:
    now = datetime.now()
    line = f"{level}{now:%m%d %H:%M:%S.%f} {os.getpid():7d} standin.py] {message}\n"
    out = stream or sys.stderr
    with _log_lock:
        out.write(line)
        out.flush()


def quote(s: object) -> str:
    return json.dumps(str(s))



"""HTTP/1.1 as Go's net/http (the real server's) speaks it, reduced to what the stand-in needs."""

from __future__ import annotations

import io
import socketserver
import time

# What the stand-in needs of HTTP/1.1, answered as Go's net/http (the real server's) answers: a
# request line and a header block within size limits; a body by Content-Length or chunked;
# keep-alive unless `Connection: close` or HTTP/1.0; `100 Continue` for `Expect: 100-continue`;
# and for a request it cannot read, Go's plain-text "400 Bad Request" (431, 505) and a close.
# Python's http.server would cost every lab host ~13 ms of imports at each start (http.client,
# the email package, html, mimetypes), and its error pages are not the API server's.

MAX_LINE = 65536              # bytes in a request line or a header line
MAX_HEADER_LINES = 100
REASONS = {100: "Continue", 200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Request Entity Too Large",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def http_date(when: float | None = None) -> str:
    """The Date header: `Sat, 28 Nov 2026 23:37:09 GMT`."""
    t = time.gmtime(when)
    return (f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
            f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT")


class Headers:
    """A request's header fields; `get` is case-insensitive and gives a repeated field's first
    value, as Go's Header.Get does."""

    def __init__(self):
        self._fields: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self._fields.setdefault(name.lower(), value)

    def get(self, name: str, default=None):
        return self._fields.get(name.lower(), default)


class BadRequest(Exception):
    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code


def read_request_head(rfile) -> tuple[str, str, str, Headers] | None:
    """(method, target, version, headers) of the next request; None when the client closed the
    connection between requests. BadRequest for what cannot be read."""
    line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE:
        raise BadRequest(431, "request line too long")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0]) <= _TOKEN or not parts[1]:
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not version.startswith("HTTP/"):
        raise BadRequest(400, "malformed HTTP version")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        raise BadRequest(505, "unsupported protocol version")
    headers = Headers()
    for _ in range(MAX_HEADER_LINES):
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise BadRequest(431, "header line too long")
        if line in (b"\r\n", b"\n"):
            return method, target, version, headers
        if not line:
            raise BadRequest(400, "the header block ended early")
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or not set(name) <= _TOKEN:
            raise BadRequest(400, "malformed header line")
        headers.add(name, value.strip(" \t\r\n"))
    raise BadRequest(431, "too many header lines")


class HTTPHandler(socketserver.BaseRequestHandler):
    """One connection: requests one after another, each dispatched to `do_<METHOD>`, which
    answers with send_response / send_header / end_headers and writes the body to wfile."""

    rfile: io.BufferedReader
    wfile: io.BufferedWriter

    def handle(self) -> None:
        self.close_connection = False
        while not self.close_connection:
            self.handle_one_request()

    def handle_one_request(self) -> None:
        self._head: list[str] = []
        try:
            head = read_request_head(self.rfile)
        except BadRequest as exc:
            self.close_connection = True
            body = f"{exc.code} {REASONS[exc.code]}"
            self.wfile.write(f"HTTP/1.1 {body}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             f"Connection: close\r\n\r\n{body}".encode())
            self.wfile.flush()
            return
        if head is None:
            self.close_connection = True
            return
        self.command, self.path, self.request_version, self.headers = head
        connection = (self.headers.get("Connection") or "").lower()
        self.close_connection = connection == "close" or (self.request_version == "HTTP/1.0"
                                                          and connection != "keep-alive")
        if (self.headers.get("Expect") or "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        method = getattr(self, "do_" + self.command, None)
        if method is None:
            self.close_connection = True
            self.send_response(405)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "18")
            self.end_headers()
            self.wfile.write(b"Method Not Allowed")
            self.wfile.flush()
            return
        method()

    def send_response(self, code: int) -> None:
        self._head = [f"HTTP/1.1 {code} {REASONS.get(code, 'Status')}", f"Date: {http_date()}"]

    def send_header(self, name: str, value: str) -> None:
        self._head.append(f"{name}: {value}")

    def end_headers(self) -> None:
        if self.close_connection:
            self._head.append("Connection: close")
        self.wfile.write(("\r\n".join(self._head) + "\r\n\r\n").encode("latin-1"))
        self._head = []



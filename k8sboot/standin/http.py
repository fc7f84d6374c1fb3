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
MAX_CHUNK_LINE = 4096         # Go's chunked reader: a chunk-size line longer than this is an error
REASONS = {100: "Continue", 200: "OK", 201: "Created", 400: "Bad Request", 401: "Unauthorized",
           403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Request Entity Too Large",
           429: "Too Many Requests", 501: "Not Implemented", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
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
        self._fields: dict[str, list[str]] = {}

    def add(self, name: str, value: str) -> None:
        self._fields.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default=None):
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        return list(self._fields.get(name.lower(), ()))

    def names(self) -> list[str]:
        """The field names present, lower-cased."""
        return list(self._fields)


class BadRequest(Exception):
    """A request Go's net/http refuses before any handler runs: `<code> <reason>` as plain text
    (501: `Unsupported transfer encoding`), then the connection is closed."""

    def __init__(self, code: int, why: str):
        super().__init__(why)
        self.code = code

    @property
    def body(self) -> str:
        return "Unsupported transfer encoding" if self.code == 501 else f"{self.code} {REASONS[self.code]}"


class BodyTooLarge(Exception):
    """A body longer than the API server reads (its 413 Status), known before it is read."""

    def __init__(self, limit: int):
        super().__init__(f"limit is {limit}")
        self.limit = limit


def body_framing(headers: Headers) -> int | None:
    """How the request's body is framed, by Go's readTransfer rules, decided before any of it is
    read: its Content-Length (0 when there is none), or None for `Transfer-Encoding: chunked`.
    BadRequest(501) for another transfer coding; BadRequest(400) for a Content-Length that is not
    a decimal number below 2^63 (negative, `+1`, `0x10`, empty, repeated with other values): Go
    answers those with its plain `400 Bad Request` and closes."""
    codings = headers.get_all("Transfer-Encoding")
    if codings:
        if len(codings) != 1 or codings[0].strip().lower() != "chunked":
            raise BadRequest(501, "unsupported transfer encoding")
        return None                                   # Go ignores Content-Length beside chunked
    lengths = [v.strip(" \t") for v in headers.get_all("Content-Length")]
    if not lengths:
        return 0
    if any(v != lengths[0] for v in lengths):
        raise BadRequest(400, "message cannot contain multiple Content-Length headers")
    text = lengths[0]
    if not text or not text.isascii() or not text.isdigit() or int(text) >= 1 << 63:
        raise BadRequest(400, f"bad Content-Length {text!r}")
    return int(text)


def read_chunked_body(rfile, limit: int) -> bytes:
    """A chunked body (RFC 9112 7.1) of at most `limit` bytes. Each chunk's size is checked before
    its data is read: BodyTooLarge as soon as the declared sizes pass `limit`, BadRequest(400)
    for a size that is not hex (at most 16 digits, as Go's chunked reader), a size line over 4 KiB
    or a chunk not ended by CRLF; ConnectionError when the client stops sending."""
    body = bytearray()
    while True:
        line = rfile.readline(MAX_CHUNK_LINE + 1)
        if not line:
            raise ConnectionError("the client closed the connection inside a chunked body")
        if len(line) > MAX_CHUNK_LINE or not line.endswith(b"\n"):
            raise BadRequest(400, "chunk size line too long")
        size_text = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not size_text or len(size_text) > 16 or not all(c in b"0123456789abcdefABCDEF" for c in size_text):
            raise BadRequest(400, "invalid byte in chunk length")
        size = int(size_text, 16)
        if size == 0:
            while True:                               # trailer fields, then the empty line
                trailer = rfile.readline(MAX_CHUNK_LINE + 1)
                if trailer in (b"\r\n", b"\n", b""):
                    return bytes(body)
                if len(trailer) > MAX_CHUNK_LINE:
                    raise BadRequest(400, "trailer line too long")
        if len(body) + size > limit:
            raise BodyTooLarge(limit)
        data = rfile.read(size)
        if len(data) < size:
            raise ConnectionError("the client closed the connection inside a chunk")
        body += data
        if rfile.read(2) != b"\r\n":
            raise BadRequest(400, "malformed chunked encoding")


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
            if head is not None:
                self.content_length = body_framing(head[3])
        except BadRequest as exc:
            self.close_connection = True
            self.wfile.write(f"HTTP/1.1 {exc.code} {REASONS[exc.code]}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                             f"Connection: close\r\n\r\n{exc.body}".encode())
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



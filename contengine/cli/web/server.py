"""The dashboard's HTTP server (the standard library's, one thread per request): routes,
the token every request but the static files needs, and the checks around them."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ...engine.engine import Engine
from ...errors import DatabaseError
from ..metrics import CONTENT_TYPE as METRICS_TYPE
from .actions import Answer, act
from .assets import DASHBOARD_SCRIPT, DASHBOARD_STYLE
from .pages import BadRequest, parse_query, run_fragment, run_page, runs_fragment, runs_page

log = logging.getLogger("contengine")

COOKIE = "contengine_token"
TOKEN_HEADER = "X-Contengine-Token"
MAX_BODY = 128 * 1024
LOOPBACK_NAMES = frozenset(("localhost", "127.0.0.1", "::1"))
# No inline script, no framing (a confirmation cannot be clicked through another site).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
Metrics = Callable[[Engine], str]


def is_loopback(host: str) -> bool:
    """True if host names this machine only (so no one else can reach what binds it)."""
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cookie_values(headers: Any, name: str) -> list[str]:
    """Every value the request's cookies give name. Read by hand: other programs on this
    machine's names set cookies too, and the standard parser stops at the first one it
    finds malformed, which would hide the token behind another program's cookie."""
    found = []
    for header in headers.get_all("Cookie") or ():
        for part in header.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                found.append(value.strip().strip('"'))
    return found


def run_id_in(text: str) -> str:
    """The run id a page's address names; LookupError if it can name none (not UTF-8, a
    NUL: no run has such an id, and a server would refuse the text itself)."""
    try:
        run_id = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise LookupError("no run with that id: it is not UTF-8") from None
    if "\x00" in run_id:
        raise LookupError("no run with an id holding a NUL character")
    return run_id


def new_token() -> str:
    """A token no one can guess, for a dashboard started without one."""
    return secrets.token_urlsafe(24)


class Dashboard(ThreadingHTTPServer):
    """The dashboard over one engine, bound to (host, port)."""

    daemon_threads = True
    # Each connection is a thread: a bound on them, so clients that open connections and
    # send nothing cannot grow the process without limit (the rest are closed at once).
    max_connections = 64

    def __init__(
        self,
        engine: Engine,
        host: str,
        port: int,
        token: str,
        read_only: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.token = token
        self.read_only = read_only
        self.metrics = metrics
        self.loopback = is_loopback(host)
        self.actions_lock = threading.Lock()  # one action at a time: each is a write
        self.connections = threading.BoundedSemaphore(self.max_connections)
        bare = host.strip("[]")
        if ":" in bare:
            self.address_family = socket.AF_INET6
        super().__init__((bare, port), Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection in a thread of its own, unless too many are open."""
        if not self.connections.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread; it gives its place back when done."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (a client gone, a timeout): one debug line, not a
        traceback on stderr per connection."""
        log.debug("dashboard: a connection from %s failed", client_address, exc_info=True)

    @property
    def url(self) -> str:
        """The address the dashboard answers at, without its token."""
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


class Handler(BaseHTTPRequestHandler):
    """One request to the dashboard."""

    server: Dashboard
    server_version = "contengine"
    timeout = 30.0  # seconds a connection may stay silent before it is closed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("dashboard: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        """Pages, fragments, metrics and static files."""
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        """Actions: /api/runs/ID/ACTION, with the token in a header."""
        self._guarded(self._post)

    def _guarded(self, handle: Callable[[], None]) -> None:
        try:
            if not self._host_allowed():
                self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", b"unknown host name\n")
                return
            handle()
        except BadRequest as exc:
            self._fail(HTTPStatus.BAD_REQUEST, str(exc))
        except LookupError as exc:
            self._fail(HTTPStatus.NOT_FOUND, str(exc.args[0]))
        except DatabaseError as exc:
            self._fail(HTTPStatus.SERVICE_UNAVAILABLE, f"the database could not be read: {exc}")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client went away, or sent nothing in time
        except Exception:
            log.exception("the dashboard failed to answer %s %s", self.command, self.path)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, "the dashboard failed; its log says why")

    def _fail(self, status: HTTPStatus, message: str) -> None:
        # An action's answer is JSON, as the page's script reads it; a page's is text.
        if self.command == "POST":
            self._send(status, "application/json", Answer(status, message).json())
        else:
            self._send(status, "text/plain; charset=utf-8", f"{message}\n".encode())

    def _host_allowed(self) -> bool:
        # A page on another site whose name resolves to 127.0.0.1 (DNS rebinding) sends
        # its own name as Host: refuse it, so only this machine's names reach a loopback
        # dashboard.
        if not self.server.loopback:
            return True
        host = urlsplit("//" + (self.headers.get("Host") or "")).hostname or ""
        return is_loopback(host)

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path, params = parts.path, dict(parse_qsl(parts.query, keep_blank_values=True))
        if path == "/static/style.css":
            from ..timeline import STYLE

            self._send(HTTPStatus.OK, "text/css", (STYLE + DASHBOARD_STYLE).encode())
            return
        if path == "/static/app.js":
            self._send(HTTPStatus.OK, "text/javascript", DASHBOARD_SCRIPT.encode())
            return
        if "token" in params and self._token_ok(params["token"]):
            # Trade the token in the address for a cookie, and drop it from the address
            # (it would stay in the history and in copied links).
            del params["token"]
            address = path + ("?" + urlencode(params) if params else "")
            cookie = f"{COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(HTTPStatus.SEE_OTHER, "text/plain", b"", Location=address, Cookie=cookie)
            return
        if not self._authorized(header_only=False):
            self._send(HTTPStatus.UNAUTHORIZED, "text/plain", _NEEDS_TOKEN)
            return
        engine, token = self.server.engine, self.server.token
        if path == "/":
            self._html(runs_page(engine, params, token))
        elif path == "/fragment/runs":
            kept = {k: v for k, v in params.items() if v}
            query = parse_query(params, engine.clock.now())
            self._html(runs_fragment(engine, query, kept, engine.clock.now()))
        elif path.startswith("/runs/"):
            self._html(run_page(engine, run_id_in(path.removeprefix("/runs/")), token))
        elif path.startswith("/fragment/runs/"):
            self._html(run_fragment(engine, run_id_in(path.removeprefix("/fragment/runs/"))))
        elif path == "/metrics" and self.server.metrics is not None:
            text = self.server.metrics(engine)
            self._send(HTTPStatus.OK, METRICS_TYPE, text.encode())
        else:
            raise LookupError(f"nothing at {path}")

    def _post(self) -> None:
        if not self._authorized(header_only=True):
            answer = Answer(HTTPStatus.FORBIDDEN, f"an action needs the token in {TOKEN_HEADER}")
        elif self.server.read_only:
            answer = Answer(HTTPStatus.FORBIDDEN, "this dashboard was started with --read-only")
        else:
            answer = self._action()
        self._send(answer.status, "application/json", answer.json())

    def _action(self) -> Answer:
        path = urlsplit(self.path).path
        parts = path.split("/")
        if len(parts) != 5 or parts[:3] != ["", "api", "runs"]:
            return Answer(HTTPStatus.NOT_FOUND, f"no action at {path}")
        given = self.headers.get("Content-Length") or "0"
        if not given.isdigit() or not given.isascii():
            return Answer(HTTPStatus.BAD_REQUEST, f"bad Content-Length {given[:40]!r}")
        length = int(given)
        if length > MAX_BODY:
            return Answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request is too large")
        try:
            form = dict(
                parse_qsl(
                    self.rfile.read(length).decode(),
                    keep_blank_values=True,
                    errors="strict",
                    strict_parsing=False,
                )
            )
        except UnicodeDecodeError:
            return Answer(HTTPStatus.BAD_REQUEST, "the form is not UTF-8")
        try:
            run_id, action = unquote(parts[3], errors="strict"), parts[4]
        except UnicodeDecodeError:
            return Answer(HTTPStatus.NOT_FOUND, "no run with that id (it is not UTF-8)")
        if "\x00" in run_id or any("\x00" in v for v in form.values()):
            return Answer(HTTPStatus.BAD_REQUEST, "a NUL character is in the request")
        with self.server.actions_lock:
            answer = act(self.server.engine, run_id, action, form)
        log.info("dashboard: %s of run %s: %s", action, run_id, answer.message)
        return answer

    def _token_ok(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.server.token.encode())

    def _authorized(self, header_only: bool) -> bool:
        """The token came with the request: in the header (what the page's script and an
        API client send), as a bearer token (a metrics scraper), or, for a read, as the
        cookie the first visit set."""
        if self._token_ok(self.headers.get(TOKEN_HEADER)):
            return True
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Bearer ") and self._token_ok(auth.removeprefix("Bearer ")):
            return True
        if header_only:
            return False  # a cookie alone is what a forged cross-site request would carry
        return any(self._token_ok(value) for value in cookie_values(self.headers, COOKIE))

    def _html(self, text: str) -> None:
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", text.encode())

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        Location: str | None = None,  # noqa: N803 (named as the header is)
        Cookie: str | None = None,  # noqa: N803
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if Location is not None:
            self.send_header("Location", Location)
        if Cookie is not None:
            self.send_header("Set-Cookie", Cookie)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


_NEEDS_TOKEN = (
    b"This dashboard needs its token: open the address `contengine serve` printed (it "
    b"carries ?token=...), or send the token in the X-Contengine-Token header or as a "
    b"bearer token.\n"
)

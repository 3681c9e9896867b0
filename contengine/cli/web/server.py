"""The dashboard's HTTP server (the standard library's, one thread per request): routes,
the token every request but the static files needs, and the checks around them."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.cookies import SimpleCookie
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
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A token no one can guess, for a dashboard started without one."""
    return secrets.token_urlsafe(24)


class Dashboard(ThreadingHTTPServer):
    """The dashboard over one engine, bound to (host, port)."""

    daemon_threads = True

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
        super().__init__((host, port), Handler)

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

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("dashboard: " + format, *args)

    def do_GET(self) -> None:  # noqa: N802 (the base class's name)
        """Pages, fragments, metrics and static files."""
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        """Actions: /api/runs/ID/ACTION, with the token in a header."""
        self._guarded(self._post)

    def _guarded(self, handle: Callable[[], None]) -> None:
        if not self._host_allowed():
            self._send(HTTPStatus.MISDIRECTED_REQUEST, "text/plain", b"unknown host name\n")
            return
        try:
            handle()
        except BadRequest as exc:
            self._send(HTTPStatus.BAD_REQUEST, "text/plain", f"{exc}\n".encode())
        except LookupError as exc:
            self._send(HTTPStatus.NOT_FOUND, "text/plain", f"{exc.args[0]}\n".encode())
        except DatabaseError as exc:
            text = f"the database could not be read: {exc}\n"
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", text.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away
        except Exception:
            log.exception("the dashboard failed to answer %s %s", self.command, self.path)
            failed = b"the dashboard failed; its log says why\n"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain", failed)

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
            self._html(run_page(engine, unquote(path.removeprefix("/runs/")), token))
        elif path.startswith("/fragment/runs/"):
            self._html(run_fragment(engine, unquote(path.removeprefix("/fragment/runs/"))))
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
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= MAX_BODY:
            return Answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "the request is too large")
        body = self.rfile.read(length).decode("utf-8", "replace")
        form = dict(parse_qsl(body, keep_blank_values=True))
        run_id, action = unquote(parts[3]), parts[4]
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
        cookie = SimpleCookie(self.headers.get("Cookie") or "")
        return COOKIE in cookie and self._token_ok(cookie[COOKIE].value)

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

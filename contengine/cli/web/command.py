"""The `contengine serve` command: its options, its checks, and serving until stopped."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from ...testing.imports import add_import_option, import_modules
from ..common import CommandError, open_engine

if TYPE_CHECKING:
    from .server import Dashboard

DEFAULT_PORT = 8765
# A token goes into a cookie and an address as it is: only characters safe in both.
TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]{16,}")


def add_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the serve command to the subcommand parsers."""
    serve: argparse.ArgumentParser = sub.add_parser(
        "serve",
        parents=parents,
        help="a live web dashboard: runs, timelines, errors; cancel, retry, fork, signal",
    )
    add_import_option(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port ({DEFAULT_PORT}; 0: any free one)"
    )
    serve.add_argument(
        "--token",
        default=None,
        help="the token every request needs (default: $CONTENGINE_TOKEN, else a new one, "
        "printed in the address); required to bind beyond this machine",
    )
    serve.add_argument(
        "--read-only",
        action="store_true",
        help="open the database read-only and refuse every action (a pulled copy, a replica)",
    )


def main(args: argparse.Namespace) -> int:
    """Serve the dashboard over args.db until SIGINT or SIGTERM."""
    # Imported here: `contengine --help` needs no server.
    from .server import is_loopback, new_token

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be between 0 and 65535, not {args.port}", 2)
    token = args.token or os.environ.get("CONTENGINE_TOKEN") or None
    if token is not None and not TOKEN_CHARS.fullmatch(token):
        raise CommandError(
            "the token must be at least 16 characters of A-Z, a-z, 0-9, '.', '_', '~', '-' "
            "(e.g. from `python3 -c 'import secrets; print(secrets.token_urlsafe(24))'`)",
            2,
        )
    if token is None and not is_loopback(args.host):
        raise CommandError(
            f"binding {args.host} lets other machines reach the dashboard, its runs' data "
            "and its actions: give --token (or set CONTENGINE_TOKEN) to bind beyond this "
            "machine",
            2,
        )
    import_modules(args.imports)  # so errors decode into their own classes
    printed_token = token is None
    token = token or new_token()
    engine = open_engine(args.db, readonly=args.read_only)
    try:
        dashboard = _bind(engine, args, token)
        address = dashboard.url + (f"?token={token}" if printed_token else "")
        print(f"contengine: dashboard at {address} (Ctrl-C stops it)", flush=True)
        _serve_until_stopped(dashboard)
    finally:
        engine.close()
    return 0


def _bind(engine: Any, args: argparse.Namespace, token: str) -> Dashboard:
    from ..metrics import prometheus_text
    from .server import Dashboard

    try:
        return Dashboard(
            engine, args.host, args.port, token, args.read_only, metrics=prometheus_text
        )
    except OSError as exc:
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc} "
            "(another program there? choose another --port)"
        ) from None


def _serve_until_stopped(dashboard: Dashboard) -> None:
    stopping = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        threading.Thread(target=dashboard.shutdown, daemon=True).start()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        dashboard.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        dashboard.server_close()
        print("contengine: dashboard stopped", file=sys.stderr, flush=True)

"""PostgreSQL URLs: which targets are one, the schema in them, and how they are shown.

No psycopg here: the engine asks whether a target is a URL before the driver loads.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "contengine"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def is_postgres_url(target: object) -> bool:
    """Whether target names a PostgreSQL server (postgresql:// or postgres://)."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def _params(query: str) -> list[tuple[str, str]]:
    """The query's parameters as written (name, raw value): libpq decodes %XX but
    not "+", so values are passed on untouched rather than decoded and encoded again
    (urlencode would turn the space of "options=-c%20x%3Dy" into a "+")."""
    pairs = [part.partition("=") for part in query.split("&") if part]
    return [(unquote(name), value) for name, _, value in pairs]


def _joined(params: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(name)}={value}" for name, value in params)


def split_url(url: str, schema: str | None) -> tuple[str, str]:
    """The libpq URL (without contengine's ?schema=) and the schema to use.

    schema= given both ways must agree; the name must be a plain identifier."""
    parts = urlsplit(url)
    query = _params(parts.query)
    in_url = [unquote(v) for k, v in query if k == "schema"]
    if not in_url and schema is None:
        return url, DEFAULT_SCHEMA
    rest = [(k, v) for k, v in query if k != "schema"]
    if in_url and schema is not None and in_url[-1] != schema:
        raise ValueError(
            f"the schema is given twice and differently: schema={schema!r} and "
            f"?schema={in_url[-1]} in the URL; give it once"
        )
    chosen = schema if schema is not None else in_url[-1]
    if not _NAME.fullmatch(chosen):
        raise ValueError(
            f"schema must be a plain PostgreSQL name (letters, digits, _ and $, not "
            f"starting with a digit, at most 63 characters), not {chosen!r}"
        )
    return urlunsplit(parts._replace(query=_joined(rest))), chosen


def with_schema(url: str, schema: str) -> str:
    """The URL naming schema in its query (?schema=), whatever it named before."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in _params(parts.query) if k != "schema"]
    return urlunsplit(parts._replace(query=_joined([*query, ("schema", quote(schema))])))


def redacted(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for messages: the one after
    the user name, and libpq's ?password= parameter."""
    parts = urlsplit(url)
    query = _params(parts.query)
    in_query = any(k == "password" for k, _ in query)
    if parts.password is None and not in_query:
        return url
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    if in_query:
        parts = parts._replace(
            query=_joined([(k, "***" if k == "password" else v) for k, v in query])
        )
    return urlunsplit(parts)

"""PostgreSQL URLs: which targets are one, the schema in them, and how they are shown.

No psycopg here: the engine asks whether a target is a URL before the driver loads.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit, urlunsplit

SCHEMES = ("postgresql://", "postgres://")
DEFAULT_SCHEMA = "contengine"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")
# libpq's parameters that hold a secret: their values are never shown.
SECRET_PARAMS = ("password", "sslpassword")
# A user name and password as both libpq and urllib read them alike: no "@", "/", "?"
# or "#" (libpq ends them at the first "@" or "/", urllib at the last "@" before the
# first "/", "?" or "#"), and every "%" an escape.
_USERINFO = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# Any other URL (sqlite://, postgresql+psycopg://, POSTGRESQL://): not a file name.
_OTHER_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def is_postgres_url(target: object) -> bool:
    """Whether target names a PostgreSQL server (postgresql:// or postgres://)."""
    return isinstance(target, str) and target.startswith(SCHEMES)


def looks_like_url(target: object) -> bool:
    """Whether target is a URL of any scheme (then never an SQLite file name)."""
    return isinstance(target, str) and _OTHER_URL.match(target) is not None


def other_url_error(target: str) -> ValueError:
    """The error for a URL that is not a PostgreSQL one (its password not shown)."""
    scheme = target.split("://", 1)[0]
    return ValueError(
        f"{redacted(target)} is a URL contengine does not know (scheme {scheme!r}): give "
        f"a postgresql:// (or postgres://) URL, or the path of an SQLite database file"
    )


def check_url(url: str) -> None:
    """ValueError, never showing a password, for a URL that libpq would read otherwise
    than it reads here: then its messages, and ours, could show part of the password."""
    rest = url.split("://", 1)[1]
    at = rest.rfind("@")
    if at >= 0 and not _USERINFO.fullmatch(rest[:at]):
        raise ValueError(
            f"the user name or password in the PostgreSQL URL {redacted(url)} has a "
            f"character that must be percent-encoded: write '@' as %40, '/' as %2F, "
            f"'?' as %3F, '#' as %23 and '%' as %25 (urllib.parse.quote(password, "
            f"safe='') does it)"
        )
    if _BAD_ESCAPE.search(rest):
        raise ValueError(
            f"the PostgreSQL URL {redacted(url)} has a '%' that is not followed by two "
            f"hex digits: write a '%' in a password or parameter as %25"
        )


def secrets(url: str) -> list[str]:
    """The password(s) in url, as written and decoded (the longest first), to keep out
    of messages that quote what libpq said."""
    rest = url.split("://", 1)[-1]
    at = rest.rfind("@")
    found: list[str] = []
    if at >= 0:
        found.append(rest[:at].partition(":")[2])
    query = rest[at + 1 :].partition("?")[2]
    found += [v for k, v in _params(query) if k in SECRET_PARAMS]
    forms = {form for raw in found for form in (raw, unquote(raw)) if len(form) >= 3}
    return sorted(forms, key=len, reverse=True)


def scrubbed(text: str, url: str) -> str:
    """text with every form of url's password(s) replaced by ***."""
    for secret in secrets(url):
        text = text.replace(secret, "***")
    return text


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

    schema= given both ways must agree; the name must be a plain identifier. ValueError
    for a URL whose password would be misread (check_url)."""
    check_url(url)
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
    the user name, and libpq's ?password= and ?sslpassword= parameters.

    Read as written, without urllib: a password with an "@", "/", "?" or "#" not
    percent-encoded (which check_url refuses) is hidden whole all the same, with
    everything up to the URL's last "@"."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    shown_user = ""
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        if not _USERINFO.fullmatch(userinfo):
            shown_user = "***@"
        elif ":" in userinfo:
            shown_user = f"{userinfo.partition(':')[0]}:***@"
        else:
            shown_user = f"{userinfo}@"
    place, question, query = rest.partition("?")
    if question:
        parts = [part.partition("=") for part in query.split("&")]
        query = "&".join(
            f"{k}=***" if unquote(k) in SECRET_PARAMS else f"{k}{eq}{v}" for k, eq, v in parts
        )
    return f"{scheme}://{shown_user}{place}{question}{query}"

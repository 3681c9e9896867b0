"""What the dashboard's buttons do to a run: cancel, retry, fork and signal, with the
engine's own checks; each answer says in words what happened or why nothing did."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from ...engine.engine import Engine
from ...errors import ContengineError, RunNotFound
from .pages import run_link

ACTIONS = ("cancel", "retry", "fork", "signal")
# A signal's payload is typed into a form field; a bound keeps a request small.
MAX_PAYLOAD = 64 * 1024


@dataclass(frozen=True)
class Answer:
    """An action's outcome: the HTTP status, a sentence, and a page to go to, if any."""

    status: HTTPStatus
    message: str
    go: str | None = None

    def json(self) -> bytes:
        """The answer as the page's script reads it."""
        return json.dumps({"message": self.message, "go": self.go}).encode()


def act(engine: Engine, run_id: str, action: str, form: Mapping[str, str]) -> Answer:
    """Do action to run_id with the form's fields; a refusal is an Answer, not an error."""
    if action not in ACTIONS:
        return Answer(HTTPStatus.NOT_FOUND, f"no action {action!r}; actions: {', '.join(ACTIONS)}")
    if engine.store.get_run(run_id) is None:
        return Answer(HTTPStatus.NOT_FOUND, f"no run with id {run_id!r} in this database")
    try:
        if action == "cancel":
            if engine.cancel(run_id):
                return Answer(HTTPStatus.OK, f"cancel of run {run_id} requested")
            return Answer(HTTPStatus.CONFLICT, f"run {run_id} has already ended")
        if action == "retry":
            engine.retry(run_id)
            return Answer(HTTPStatus.OK, f"run {run_id} will run again from its failed request")
        if action == "fork":
            at = _position(form.get("at", ""))
            new = engine.fork(run_id, at)
            return Answer(HTTPStatus.OK, f"forked as run {new.id}", go=run_link(new.id))
        name = form.get("name", "").strip()
        if not name:
            return Answer(HTTPStatus.BAD_REQUEST, "a signal needs a name")
        engine.signal(run_id, name, _payload(form.get("payload", "")))
        return Answer(HTTPStatus.OK, f"signal {name!r} sent to run {run_id}")
    except _Refused as exc:
        return Answer(HTTPStatus.BAD_REQUEST, str(exc))
    except RunNotFound as exc:
        return Answer(HTTPStatus.NOT_FOUND, str(exc))
    except (ContengineError, ValueError) as exc:
        # The engine's refusals (retry of a run that did not fail, fork past the log...)
        # say why in their message: pass it on, nothing was changed.
        return Answer(HTTPStatus.CONFLICT, str(exc))


class _Refused(ValueError):
    """A form field the action cannot use."""


def _position(text: str) -> int:
    text = text.strip()
    if text.startswith("-") and text[1:].isascii() and text[1:].isdigit():
        raise _Refused(f"fork needs a position of 0 or more, not {text}")
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise _Refused(f"fork needs a position, a whole number, not {text[:20]!r}")
    return int(text)


def _payload(text: str) -> object:
    if len(text) > MAX_PAYLOAD:
        raise _Refused(f"the payload is over {MAX_PAYLOAD // 1024} KB; send a smaller one")
    if not text.strip():
        return None
    try:
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise _Refused(f'the payload is not JSON ({exc}); e.g. true, 3, "yes" or {{}}') from None


def _no_constant(name: str) -> object:
    raise _Refused(f"the payload is not JSON: {name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _Refused(f"the payload is not JSON that fits a float: {text[:20]}")
    return value

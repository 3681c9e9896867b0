"""Moving runs (fork, export, import) and checking what callers name runs and tag them with."""

from __future__ import annotations

import base64
import dataclasses
import math
import uuid
from collections.abc import Iterable
from typing import Any

from ..core.ids import checked_ref, is_child_id, refuse_nul
from ..errors import (
    ContengineError,
)
from ..store.base import (
    A_CRASHED,
    A_FAILED,
    A_STARTED,
    E_COMPLETED,
    E_FAILED,
    E_RETRYING,
    E_RUNNING,
    FINISHED,
    PENDING,
    RUN_STATUSES,
    AttemptRow,
    EntryRow,
    RunRow,
    Signal,
    Store,
)

EXPORT_FORMAT = "contengine-run"
EXPORT_VERSION = 1
# Kinds of entries that start or join child runs, which fork and export do not copy.
CHILD_KINDS = frozenset({"child", "start_child", "join"})


def checked_id(run_id: Any) -> str:
    """run_id if it can name a new run started from outside (not a child); ValueError if
    not. Every id that does not come from the engine itself passes here: start(), fork(),
    import_run() and the command line."""
    checked_ref(run_id)
    refuse_nul(run_id, "run id")
    if is_child_id(run_id):
        raise ValueError(
            f"run id {run_id!r} contains '/', which is kept for child runs "
            f"(parent/position); choose another id"
        )
    return run_id  # type: ignore[no-any-return]


def _members(entry: EntryRow) -> int:
    # A gather's or race's own entry has its member count as key; its members follow it.
    try:
        return int(entry.key or 0)
    except ValueError:
        return 0


def _check_fork(run_id: str, entries: list[EntryRow], at: Any) -> None:
    """Refuse a fork point that the new run could not replay up to."""
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at <= len(entries):
        raise ContengineError(
            f"cannot fork run {run_id!r} at {at!r}: the position must be a whole number "
            f"from 0 to {len(entries)} (its log has {len(entries)} entries)"
        )
    for e in entries[:at]:
        if e.status not in (E_COMPLETED, E_FAILED):
            raise ContengineError(
                f"cannot fork run {run_id!r} at {at}: entry {e.position} ({e.kind} {e.name}) "
                f"is {e.status}, not finished; fork before it"
            )
        if e.kind in CHILD_KINDS:
            raise ContengineError(
                f"cannot fork run {run_id!r} at {at}: entry {e.position} is a child run "
                f"({e.name}), and child runs are not copied; fork at {e.position} or before"
            )
        if e.kind in ("gather", "race") and e.position < at <= e.position + _members(e):
            raise ContengineError(
                f"cannot fork run {run_id!r} at {at}: that cuts the {e.kind} at positions "
                f"{e.position}..{e.position + _members(e)} in two; fork at {e.position} "
                f"or {e.position + _members(e) + 1}"
            )


def _check_movable(row: RunRow, entries: list[EntryRow]) -> None:
    """Refuse to export an unfinished run that is part of a tree of runs."""
    if row.parent_id is not None:
        raise ContengineError(
            f"run {row.id!r} is an unfinished child of {row.parent_id!r}; a child run "
            f"cannot be moved without its parent"
        )
    for e in entries:
        if e.kind in CHILD_KINDS:
            raise ContengineError(
                f"run {row.id!r} is unfinished and has child runs (entry {e.position}); "
                f"child runs are not exported, so it cannot be moved until it finishes"
            )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_fields(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A RunRow's or EntryRow's fields as JSON values (bytes as base64, infinity as "inf")."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if str(f.type) == "bool":
            value = bool(value)  # SQLite hands booleans back as 0 and 1
        elif isinstance(value, bytes):
            value = _b64(value)
        elif isinstance(value, float) and math.isinf(value):
            value = "inf" if value > 0 else "-inf"
        out[f.name] = value
    return out


def _decode_fields(cls: Any, data: Any, what: str, **given: Any) -> Any:
    """An instance of the dataclass cls from _encode_fields() output, checking each field."""
    if not isinstance(data, dict):
        raise ContengineError(f"{what} must be a JSON object, not {type(data).__name__}")
    values: dict[str, Any] = dict(given)
    for f in dataclasses.fields(cls):
        if f.name in given:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING:
                raise ContengineError(f"{what} has no field {f.name!r}")
            continue
        values[f.name] = _decode_value(data[f.name], str(f.type), f"{what}, field {f.name!r}")
    return cls(**values)


def _decode_value(value: Any, annotation: str, what: str) -> Any:
    """value checked against a field's annotation (str, int, float, bool, bytes, | None)."""
    if value is None and "None" in annotation:
        return None
    kind = annotation.split("|")[0].strip()
    if kind == "bytes" and isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise ContengineError(f"{what} is not valid base64") from None
    if kind == "float" and value in ("inf", "-inf"):
        return float(value)
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if (
        kind == "tuple[str, ...]"
        and isinstance(value, list | tuple)
        and all(isinstance(v, str) for v in value)
    ):
        return tuple(value)
    if kind in ("int", "bool", "str"):
        expected = {"int": int, "bool": bool, "str": str}[kind]
        if isinstance(value, expected) and (kind != "int" or not isinstance(value, bool)):
            return value
    raise ContengineError(f"{what} must be {annotation}, not {value!r}")


def _decode_export(
    data: Any, new_id: str | None
) -> tuple[RunRow, list[EntryRow], list[Signal], dict[str, bytes], list[AttemptRow]]:
    """The run, log, mailbox, published values and attempt rows in export_run() data, all
    checked (an export without attempt rows, of an older contengine, has none)."""
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise ContengineError(
            f'this is not an exported contengine run (no "format": {EXPORT_FORMAT!r})'
        )
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ContengineError(f"the export's version must be a whole number >= 1, not {version!r}")
    if version > EXPORT_VERSION:
        raise ContengineError(
            f"the export is of format version {version}, written by a newer contengine; "
            f"this one reads up to version {EXPORT_VERSION}. Upgrade contengine to import it."
        )
    for key, kind in (("run", dict), ("log", list), ("mailbox", list), ("published", dict)):
        if not isinstance(data.get(key), kind):
            raise ContengineError(f"the export's {key!r} must be a JSON {kind.__name__}")
    row: RunRow = _decode_fields(RunRow, data["run"], "the exported run")
    if new_id is not None:
        row.id = new_id
    try:
        checked_id(row.id)
    except ValueError as exc:
        hint = "" if new_id is not None else "; import it under another id (--id)"
        raise ContengineError(f"the export cannot be imported: {exc}{hint}") from None
    if row.parent_id is not None:
        # Only the engine makes a child run, in the same commit as its parent's entry: an
        # imported one could stand in for another run's child and feed it a forged result.
        raise ContengineError(
            f"the exported run {row.id!r} is a child run (of {row.parent_id!r}); a child "
            f"run cannot be imported on its own, only made by its parent"
        )
    if row.status not in RUN_STATUSES:
        raise ContengineError(f"the exported run has an unknown status {row.status!r}")
    entries = [
        _decode_fields(EntryRow, e, f"log entry {i}", run_id=row.id)
        for i, e in enumerate(data["log"])
    ]
    for i, e in enumerate(entries):
        if e.position != i:
            raise ContengineError(f"log entry {i} has position {e.position}; expected {i}")
        if e.status not in (E_RUNNING, E_RETRYING, E_COMPLETED, E_FAILED):
            raise ContengineError(f"log entry {i} has an unknown status {e.status!r}")
    mailbox = [
        _decode_fields(Signal, m, f"mailbox message {i}", seq=i, run_id=row.id)
        for i, m in enumerate(data["mailbox"])
    ]
    published = {
        str(k): _decode_value(v, "bytes", f"published value {k!r}")
        for k, v in data["published"].items()
    }
    _refuse_nul_names(row, entries, mailbox, published)
    return row, entries, mailbox, published, _decode_attempts(data, row.id, len(entries))


def _decode_attempts(data: dict[str, Any], run_id: str, length: int) -> list[AttemptRow]:
    """The export's attempt rows, each of an entry of its log, checked."""
    listed = data.get("attempts", [])
    if not isinstance(listed, list):
        raise ContengineError("the export's 'attempts' must be a JSON list")
    attempts: list[AttemptRow] = [
        _decode_fields(AttemptRow, a, f"attempt row {i}", run_id=run_id)
        for i, a in enumerate(listed)
    ]
    seen: set[tuple[int, int]] = set()
    for i, a in enumerate(attempts):
        if not 0 <= a.position < length or a.attempt < 1 or (a.position, a.attempt) in seen:
            raise ContengineError(
                f"attempt row {i} (entry {a.position}, attempt {a.attempt}) is of no entry "
                f"of the exported log, or repeats another; the file was changed or damaged"
            )
        if a.outcome not in (A_STARTED, A_FAILED, A_CRASHED):
            raise ContengineError(f"attempt row {i} has an unknown outcome {a.outcome!r}")
        seen.add((a.position, a.attempt))
    return attempts


def _fields(obj: Any) -> list[tuple[str, Any]]:
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)]


# Texts written for people: a store keeps a NUL in them (PostgreSQL as \x00).
_PROSE = ("error_text", "note")


def _refuse_nul_names(
    row: RunRow, entries: list[EntryRow], mailbox: list[Signal], published: dict[str, bytes]
) -> None:
    """ContengineError for a name or text in an export with a NUL character, which no
    run of this engine has (PostgreSQL text refuses it): refused before any write."""
    found = [
        (f"the exported run's {name}", value)
        for name, value in _fields(row)
        if name not in _PROSE
        for value in (value if isinstance(value, tuple) else (value,))
    ]
    for i, e in enumerate(entries):
        found += [(f"log entry {i}'s {k}", v) for k, v in _fields(e) if k not in _PROSE]
    found += [(f"mailbox message {i}'s name", m.name) for i, m in enumerate(mailbox)]
    found += [("a published key", k) for k in published]
    for what, value in found:
        if isinstance(value, str) and "\x00" in value:
            raise ContengineError(
                f"the export cannot be imported: {what} {value!r} contains a NUL "
                f"character (\\x00), which no run has; the file was changed or damaged"
            )


def check_export(data: Any, new_id: str | None = None) -> None:
    """ContengineError unless import_run(data, new_id) could read the data (it may still
    find the id taken)."""
    _decode_export(data, new_id)


def fork_run(store: Store, row: RunRow, at: Any, new_id: str | None, now: float) -> str:
    """Write a new run (new_id, or a fresh id; returned) of row's workflow and arguments,
    with a copy of the first `at` entries of its log and the values they published."""
    entries = store.load_log(row.id)
    _check_fork(row.id, entries, at)
    new_id = checked_id(new_id if new_id is not None else uuid.uuid4().hex)
    copy = RunRow(new_id, row.workflow, row.ref, PENDING, row.args, row.args_key, now, now)
    copy.forked_from = row.id
    kept = [dataclasses.replace(e, run_id=new_id) for e in entries[:at]]
    published = {
        e.name: e.outcome
        for e in kept
        if e.kind == "publish" and e.status == E_COMPLETED and e.outcome is not None
    }
    tried = [
        dataclasses.replace(a, run_id=new_id)
        for a in store.load_attempts(row.id)
        if a.position < at
    ]
    store.insert_run(copy, kept, (), published, tried)
    return new_id


def export_run(store: Store, row: RunRow) -> dict[str, Any]:
    """The run as JSON-ready data (Engine.export_run)."""
    entries = store.load_log(row.id)
    if row.status not in FINISHED:
        _check_movable(row, entries)
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "run": _encode_fields(row),
        "log": [_encode_fields(e, skip=("run_id",)) for e in entries],
        "mailbox": [
            {"name": m.name, "payload": _b64(m.payload), "sent_at": m.sent_at}
            for m in store.mailbox(row.id)
        ],
        "published": {k: _b64(v) for k, v in store.published(row.id).items()},
        # Optional (an importer that predates it ignores it): the steps' attempt history.
        "attempts": [_encode_fields(a, skip=("run_id",)) for a in store.load_attempts(row.id)],
    }


def import_run(store: Store, data: Any, new_id: str | None) -> RunRow:
    """Write the run in export_run() data, under its own id or new_id; its row."""
    row, entries, mailbox, published, attempts = _decode_export(data, new_id)
    store.insert_run(row, entries, mailbox, published, attempts)
    return row


def checked_tags(tags: Iterable[str]) -> tuple[str, ...]:
    """Tags as stored: non-empty strings without commas, each once, in the order given."""
    if isinstance(tags, str):
        raise TypeError(f"tags must be a list of strings, not the string {tags!r}")
    out: list[str] = []
    for tag in tags:
        if not isinstance(tag, str) or not tag or "," in tag:
            raise ValueError(f"a tag must be a non-empty string without commas, not {tag!r}")
        refuse_nul(tag, "the tag")
        if tag not in out:
            out.append(tag)
    return tuple(out)

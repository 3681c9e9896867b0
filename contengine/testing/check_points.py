"""The crash points of ce.testing.check's reference run, each named in words."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..store.base import E_COMPLETED, E_FAILED, E_RETRYING, FINISHED, EntryRow, Progress
from .check_events import AFTER, BEFORE, RAN, RUN_ID, Line, Played, Point

# Kinds of crash points, as the report counts them.
K_BEFORE = "just before a commit"
K_AFTER = "just after a commit"
K_BETWEEN = "between two commits"
K_RAN = "after a step ran, before its outcome was committed"
K_INSIDE = "inside a gather or race"


@dataclass(frozen=True)
class Boundary:
    """A crash point with its description; point None is a run with no crash."""

    point: Point | None
    text: str
    kind: str
    inside: bool = False


class Names:
    """Readable names of log entries and commits, from the reference run's log."""

    def __init__(self, log: list[Line]) -> None:
        self.members: dict[tuple[str, int], tuple[int, str, int]] = {}
        for line in log:
            if line.kind in ("gather", "race") and line.key is not None and line.key.isdigit():
                for i in range(int(line.key)):
                    self.members[(line.run_id, line.position + 1 + i)] = (
                        i + 1, line.kind, line.position,
                    )  # fmt: skip

    def inside(self, run_id: str, position: int) -> bool:
        """Whether the entry is a member of a gather or race."""
        return (run_id, position) in self.members

    def entry(self, run_id: str, position: int, kind: str, name: str) -> str:
        """Such as "step 'charge' at position 2 (member 1 of the gather at position 1)"."""
        text = f"{kind} {name!r}" if name else kind
        text += f" at position {position}"
        member = self.members.get((run_id, position))
        if member is not None:
            text += f" (member {member[0]} of the {member[1]} at position {member[2]})"
        if run_id != RUN_ID:
            text += f" of child run {run_id!r}"
        return text

    def row(self, run_id: str, e: EntryRow) -> str:
        """entry() for a stored row."""
        return self.entry(run_id, e.position, e.kind, e.name)

    def commit(self, p: Progress) -> str:
        """What a commit writes, in words: "records the outcome of ... and logs ..."."""
        parts: list[str] = []
        u = p.update
        if u is not None:
            what = self.row(p.run_id, u)
            if u.status == E_COMPLETED:
                parts.append(f"records the outcome of {what}")
            elif u.status == E_FAILED and (u.error_text or "").startswith("Cancelled"):
                parts.append(f"records that {what} was cancelled")
            elif u.status == E_FAILED:
                parts.append(f"records that {what} failed")
            elif u.status == E_RETRYING and not u.error_text:
                parts.append(f"gives back attempt {u.attempts + 1} of {what} (due again now)")
            elif u.status == E_RETRYING:
                parts.append(f"records that attempt {u.attempts} of {what} failed (a retry is due)")
            else:
                parts.append(f"starts attempt {u.attempts} of {what}")
        parts.extend(self._recorded(p))
        if p.insert is not None:
            parts.append(f"logs {self.row(p.run_id, p.insert)}")
        if p.consume is not None:
            parts.append("takes a signal out of the mailbox")
        parts.extend(f"creates child run {r.id!r}" for r in p.new_runs)
        if p.restart is not None:
            parts.append("starts the run afresh (continue_as_new)")
        run = "the run" if p.run_id == RUN_ID else f"child run {p.run_id!r}"
        if p.run is not None and p.run.status in FINISHED:
            parts.append(f"ends {run} ({p.run.status})")
        elif p.run is not None and not parts:
            parts.append(f"marks {run} {p.run.status}")
        if not parts:
            return f"writes nothing new for {run}"
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]

    def _recorded(self, p: Progress) -> list[str]:
        headers = {e.position: e for e in p.recorded if e.kind in ("gather", "race")}
        parts = []
        for e in p.recorded:
            member = self.members.get((p.run_id, e.position))
            if member is not None and member[2] in headers:
                continue  # told with its gather
            if e.position in headers:
                count = sum(
                    1
                    for m in p.recorded
                    if self.members.get((p.run_id, m.position), (0, "", -1))[2] == e.position
                )
                parts.append(f"logs the {e.kind} at position {e.position} with {count} members")
            elif e.status in (E_COMPLETED, E_FAILED):
                parts.append(f"logs {self.row(p.run_id, e)} with its outcome")
            else:
                parts.append(f"logs {self.row(p.run_id, e)}")
        return parts


def boundaries(reference: Played, names: Names, skip: set[int]) -> list[Boundary]:
    """The crash points of the reference run, in the order it reached them; the first
    is no crash at all. Points that leave the same file and the same side effects are
    tried once: just after a commit and just before the next (nothing ran between), or
    a step's return and the commit of its outcome. Events in `skip` are left out."""
    out = [Boundary(None, "run it again in a fresh engine, with no crash at all", "none")]
    last = ""
    for index, event in enumerate(reference.events):
        if index in skip:
            continue
        p, x = event.progress, event.execution
        if p is not None:
            what = names.commit(p)
            inside = _commit_inside(p, names)
            if last == "commit":
                prev = out[-1]
                out[-1] = replace(
                    prev,
                    text=f"{prev.text}, before the commit that {what}",
                    kind=K_BETWEEN,
                    inside=prev.inside or inside,
                )
            elif last != RAN:
                point = Point(BEFORE, event.key, event.occurrence)
                text = f"crash just before the commit that {what}"
                out.append(Boundary(point, text, K_BEFORE, inside))
            point = Point(AFTER, event.key, event.occurrence)
            out.append(Boundary(point, f"crash just after the commit that {what}", K_AFTER, inside))
            last = "commit"
        elif x is not None:
            step = names.entry(x.run_id, x.position, "step", x.name)
            text = f"crash after {step} ran (try {x.attempt}), before its outcome was committed"
            point = Point(RAN, event.key, event.occurrence)
            out.append(Boundary(point, text, K_RAN, names.inside(x.run_id, x.position)))
            last = RAN
    return out


def _commit_inside(p: Progress, names: Names) -> bool:
    rows = [e for e in (p.update, p.insert, *p.recorded) if e is not None]
    return any(names.inside(p.run_id, e.position) for e in rows)

"""What a drive's next commit writes, gathered in one place with the rule that keeps it safe."""

from __future__ import annotations

from ..store.base import AttemptRow, EntryRow, Progress, RunRow, RunUpdate


class Outbox:
    """Everything written with a drive's next commit (besides that commit's own entry and
    run update): the outcome of the request before, entries complete when first written,
    a signal taken, child runs started, values published, a restart, a cancel delivered.

    The safety rule: an outcome is sent into the generator before it is durable only
    when it sits here, so the very next commit of this drive writes it, and nothing
    outside the drive can act on it before that commit. The workflow's pure code then
    runs up to its next yield, and the outcome is written together with that yield's
    request (one commit per step; a crash leaves the old state or the new one). What
    others could act on first is committed at once instead: a detached child's handle
    (the child must exist), a signal taken (a later wait must not find it again). A
    drive that cannot go on writes what is here before it raises (Drive.has_unwritten),
    so a step's outcome is kept and the step never runs twice. If a commit fails,
    everything stays here for the next one.
    """

    __slots__ = (
        "carry", "fresh", "complete", "consume", "new_runs", "published", "restart", "delivered",
        "tried", "sends",
    )  # fmt: skip

    def __init__(self) -> None:
        # The outcome of a logged entry (the previous request): an update of its row.
        self.carry: EntryRow | None = None
        # The carry is the outcome of a step this drive ran (not a crash loop, a timer, a
        # signal): a cancel found before it is written is raised at that step's yield
        # instead (DriveState.cancel_carried), so the write that carries it reads the
        # run's cancel flag first.
        self.fresh = False
        # Entries complete when first written (now/random/..., a timer already due, a
        # gather's members): inserted, in position order.
        self.complete: list[EntryRow] = []
        self.consume: int | None = None  # a mailbox message taken: deleted with the commit
        self.new_runs: list[RunRow] = []  # child runs started: created with the commit
        self.published: list[tuple[str, bytes]] = []  # ce.publish values: (key, value)
        self.restart: bytes | None = None  # continue_as_new: the new arguments
        # A cancellation was delivered (raised at a yield): the commit clears the row's flag.
        self.delivered = False
        # Attempt rows (an attempt failed, found crashed, or begun after one): history,
        # written with whatever commit comes next.
        self.tried: list[AttemptRow] = []
        # ce.send messages: (target, name, payload, time), written with the entry.
        self.sends: list[tuple[str, str, bytes, float]] = []

    def has_unwritten(self) -> bool:
        """True while an outcome (or a signal taken, a child started) waits for a commit."""
        return (
            self.carry is not None
            or bool(self.complete)
            or self.consume is not None
            or bool(self.new_runs)
        )

    def hold(self, entry: EntryRow, logged: bool) -> None:
        """Keep a finished entry for the next commit: an update if logged, else an insert."""
        if logged:
            self.carry = entry
        else:
            self.complete.append(entry)

    def add(self, entry: EntryRow) -> None:
        """An entry complete when first written, inserted with the next commit."""
        self.complete.append(entry)

    def take_signal(self, seq: int) -> None:
        """The mailbox message seq is taken: deleted in the commit that logs it."""
        self.consume = seq

    def start_run(self, run: RunRow) -> None:
        """A child run, created in the commit that logs its parent's entry."""
        self.new_runs.append(run)

    def publish(self, key: str, data: bytes) -> None:
        """A ce.publish value, written with the entry that records it."""
        self.published.append((key, data))

    def send(self, target: str, name: str, data: bytes, now: float) -> None:
        """A ce.send message, put in the target's mailbox by the commit that logs it."""
        self.sends.append((target, name, data, now))

    def progress(
        self,
        run_id: str,
        update: EntryRow | None,
        insert: EntryRow | None,
        run: RunUpdate | None,
        stored: dict[int, int],
        lease: tuple[str, int] | None,
        unless_cancelled: bool = False,
    ) -> Progress:
        """The commit of everything here, with update/insert/run (stored: the attempts of
        each entry in flight as last committed, which the update must still find;
        unless_cancelled: nothing is written if the run's row asks for a cancel)."""
        # A carried outcome is always flushed by the next commit, and the only
        # writes that update an entry happen when nothing is carried.
        assert self.carry is None or update is None
        entry = update or self.carry
        expect = stored.get(entry.position) if entry is not None else None
        if self.delivered and run is not None:
            run.clear_cancel = True
        # The write of a fresh step's outcome reads the cancel flag first (as a leased
        # write reads it anyway: no statement more), so that a cancel that came before
        # it is raised at that step's yield. Not while a delivered cancel is still to be
        # written: the row's flag is that one.
        unless = (unless_cancelled or self.fresh) and lease is not None and not self.delivered
        p = Progress(
            run_id, entry, insert, run, expect,
            tuple(self.complete) if self.complete else (), self.consume,
            tuple(self.new_runs) if self.new_runs else (),
            tuple(self.published) if self.published else (), self.restart, lease=lease,
            unless_cancelled=unless,
        )  # fmt: skip
        if self.tried:  # rare (an attempt failed or crashed): no keyword on the step path
            p.attempts = tuple(self.tried)
        if self.sends:  # rare too
            p.send = tuple(self.sends)
        return p

    def drop_after_carry(self) -> None:
        """The workflow went past the carried step, whose cancel is raised at its yield
        instead: what it did after that step is dropped (none of it is written yet), the
        carry stays, to be written cancelled."""
        self.fresh = False
        self.complete.clear()
        self.consume = None
        self.new_runs.clear()
        self.published.clear()
        self.sends.clear()
        self.restart = None

    def sent(self, p: Progress) -> None:
        """p is durable: what it wrote is no longer to be written."""
        self.carry = None
        self.fresh = False
        self.consume = None
        self.restart = None
        self.delivered = False
        if p.attempts:
            self.tried.clear()
        if self.new_runs:
            self.new_runs.clear()
        if self.published:
            self.published.clear()
        if p.send:
            self.sends.clear()
        if p.recorded:
            self.complete.clear()

"""Replays of a recorded run in fresh processes: what differs from one process to the next.

Each child process replays the run from a copy of its file with another PYTHONHASHSEED,
and, being a fresh process, has another process id and other memory addresses. It also
runs in another working directory, in another time zone (TZ), and under another
hostname (socket.gethostname, socket.getfqdn, platform.node, platform.uname, os.uname,
getpass.getuser and os.getlogin answer for a made-up host before the workflow's module
is imported). Two of the children share a seed: when they disagree with each other the
cause is the process itself (its id, its addresses), not hash order.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ..core.workflow import Workflow, lookup
from ..engine.engine import Engine
from ..errors import WorkflowNotFound
from .fuzz_replay import (
    CAUSE_HASH,
    CAUSE_PROCESS,
    HINT_HASH,
    HINT_REPLAY,
    RUN_ID,
    FuzzFinding,
    FuzzReport,
    Recording,
    load_arguments,
    replay,
)
from .world import World

HASH_SEEDS = (101, 202, 303, 404)  # three are used: not this process's own
CHILD_TIMEOUT = 120.0  # seconds for a replay in another process
OTHER_HOST = "contengine-fuzz-host"
OTHER_USER = "contengine-fuzz-user"
OTHER_TZ = "FUZ-05:37"  # a time zone no machine is in: UTC+05:37

_CHILD = "from contengine.testing.fuzz_process import replay_in_child; replay_in_child()"

PROBE = "contengine fuzz probe"  # hashed in each process: equal hashes, equal seeds


@dataclass
class Child:
    """A replay running in a fresh process."""

    seed: int
    proc: subprocess.Popen[str]
    control: bool  # started with this process's own seed, to tell hash order from the rest
    twin: bool = False  # started with the same seed as the first child


def hash_seeds() -> tuple[list[int], int | None]:
    """Seeds other than this process's, and this process's own when it is known."""
    mine = os.environ.get("PYTHONHASHSEED", "")
    own = int(mine) if mine.isdigit() and int(mine) < 2**32 else None
    others = [s for s in HASH_SEEDS if s != own][:3]
    return others, own


def start_children(rec: Recording, base: World, tmp: str, report: FuzzReport) -> list[Child]:
    """Start the replays in fresh processes; they run while this process replays too."""
    why = not_importable(rec.workflow)
    if why is not None:
        report.skipped.append(f"PYTHONHASHSEED, process id and host (fresh processes): {why}")
        return []
    others, own = hash_seeds()
    path = [os.getcwd() if p == "" else p for p in sys.path if isinstance(p, str)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "TZ": OTHER_TZ}
    elsewhere = os.path.join(tmp, "elsewhere")  # the children's working directory
    os.makedirs(elsewhere, exist_ok=True)
    spec = {
        "run_id": RUN_ID,
        "workflow": rec.workflow.name,
        "ref": rec.workflow.ref,
        "end": rec.end,
        "world": base.to_json(),
    }
    # (seed, control, twin): the other seeds, the first again, and this process's own.
    plan = [(s, False, False) for s in others] + [(others[0], False, True)]
    if own is not None:
        plan.append((own, True, False))
    children: list[Child] = []
    for number, (seed, control, twin) in enumerate(plan):
        db = os.path.join(tmp, f"replay-{number}.db")
        shutil.copyfile(rec.db, db)  # each process reads a copy of its own
        spec_path = os.path.join(tmp, f"spec-{number}.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump({**spec, "db": db}, f)
        proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, spec_path],
            env={**env, "PYTHONHASHSEED": str(seed)},
            cwd=elsewhere,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        children.append(Child(seed, proc, control, twin))
    return children


def not_importable(workflow: Workflow[Any, Any]) -> str | None:
    module, _, qualname = workflow.ref.partition(":")
    if "<locals>" in qualname:
        return (
            f"{workflow.ref} is defined inside a function, so another process cannot import "
            f"it; define the workflow at module level to replay it in fresh processes"
        )
    if module == "__main__":
        return (
            f"{workflow.ref} is defined in __main__, so another process cannot import it; "
            f"define the workflow in an importable module to replay it in fresh processes"
        )
    return None


def collect_children(children: list[Child], report: FuzzReport) -> None:
    """Wait for the replays in fresh processes and report a divergence with its cause."""
    if children:
        seeds = ", ".join(str(c.seed) for c in children if not c.control and not c.twin)
        report.tried.append(
            f"PYTHONHASHSEED={seeds} (fresh processes, two with {children[0].seed}; another "
            f"process id, working directory, hostname and time zone)"
        )
    answers: list[tuple[Child, dict[str, Any]]] = []
    for child in children:
        answer = read_answer(child, report)
        if answer is not None:
            report.replays += 1
            answers.append((child, answer))
    finding = _classify(answers)
    if finding is not None:
        report.findings.append(finding)


def _classify(answers: list[tuple[Child, dict[str, Any]]]) -> FuzzFinding | None:
    """The finding the children's answers make, with its cause, or None."""
    # A control (this process's own seed, checked by hashing PROBE) tells for sure:
    # if it diverges too, the cause is not hash order.
    own_hash = hash(PROBE)
    controls = [a for c, a in answers if c.control and a.get("probe") == own_hash]
    seeded = [(c, a) for c, a in answers if not (c.control and a.get("probe") == own_hash)]
    diverged = [(c, a) for c, a in seeded if a["status"] == "diverged"]
    if controls and controls[0]["status"] == "diverged":
        what = "a fresh process with this process's own PYTHONHASHSEED"
        control = controls[0]
        return FuzzFinding(what, CAUSE_PROCESS, control["diff"], control["message"], HINT_REPLAY)
    if not diverged:
        return None
    # Two processes with one seed that disagree: the process itself is the cause.
    first = [a for c, a in seeded if c.seed == seeded[0][0].seed]
    if len(first) == 2 and first[0].get("signature", "ok") != first[1].get("signature", "ok"):
        child, answer = diverged[0]
        what = f"two fresh processes with PYTHONHASHSEED={child.seed}, which disagree"
        return FuzzFinding(what, CAUSE_PROCESS, answer["diff"], answer["message"], HINT_REPLAY)
    if controls:
        cause = CAUSE_HASH
    else:
        # The processes differ from each other only in their hash seed: if they
        # disagree, hash order is the cause; if all diverge alike, it may be anything
        # a fresh process does not share with this one.
        signatures = {a.get("signature", "ok") for _, a in seeded}
        cause = CAUSE_HASH if len(signatures) > 1 else CAUSE_PROCESS
    child, answer = diverged[0]
    what = f"PYTHONHASHSEED={child.seed} (a fresh process)"
    hint = HINT_HASH if cause == CAUSE_HASH else f"{HINT_HASH}; {HINT_REPLAY}"
    return FuzzFinding(what, cause, answer["diff"], answer["message"], hint)


def read_answer(child: Child, report: FuzzReport) -> dict[str, Any] | None:
    """The child's answer, or None (with a note in the report) if it has none."""
    name = f"PYTHONHASHSEED={child.seed}"
    try:
        out, err = child.proc.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.communicate()
        report.skipped.append(f"{name}: the replay took over {CHILD_TIMEOUT:g} s")
        return None
    answer = last_json(out)
    if child.proc.returncode != 0 or answer is None:
        tail = " ".join(err.strip().splitlines()[-1:]) or f"exit code {child.proc.returncode}"
        report.skipped.append(f"{name}: the replay process failed: {tail}")
        return None
    if answer["status"] == "unavailable":
        report.skipped.append(f"{name}: {answer['message']}")
        return None
    return answer


def last_json(out: str) -> dict[str, Any] | None:
    for line in reversed(out.strip().splitlines()):
        with contextlib.suppress(ValueError):
            data = json.loads(line)
            if isinstance(data, dict) and "status" in data:
                return data
    return None


def replay_in_child() -> None:
    """Entry point of a replay in a fresh process: prints one line of JSON."""
    with open(sys.argv[1], encoding="utf-8") as f:
        spec = json.load(f)
    pretend_another_host()
    print(json.dumps(child_answer(spec)))


def pretend_another_host() -> None:
    """Make this process answer for another host and user (before the workflow's module is
    imported, so that `from socket import gethostname` binds the stand-in)."""
    real = os.uname()
    uname = os.uname_result((real.sysname, OTHER_HOST, real.release, real.version, real.machine))
    system = platform.uname()
    other = platform.uname_result(
        system.system, OTHER_HOST, system.release, system.version, system.machine
    )
    fqdn = socket.getfqdn

    def getfqdn(name: str = "") -> str:
        return f"{OTHER_HOST}.invalid" if not name else fqdn(name)

    for module, name, value in (
        (socket, "gethostname", lambda: OTHER_HOST),
        (socket, "getfqdn", getfqdn),
        (platform, "node", lambda: OTHER_HOST),
        (platform, "uname", lambda: other),
        (os, "uname", lambda: uname),
        (os, "getlogin", lambda: OTHER_USER),
        (getpass, "getuser", lambda: OTHER_USER),
    ):
        setattr(module, name, value)


def child_answer(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        workflow = lookup(spec["workflow"], spec["ref"], {})
    except WorkflowNotFound as exc:
        return {"status": "unavailable", "message": str(exc)}
    with Engine(spec["db"]) as engine:
        history = engine.history(spec["run_id"])
        row = engine.store.get_run(spec["run_id"])
        assert row is not None
        arguments = load_arguments(engine.serde, row.args)
    rec = Recording(workflow, arguments, history, spec["end"], spec["db"])
    div = replay(rec, World.from_json(spec["world"]))
    if div is None:
        return {"status": "ok", "probe": hash(PROBE)}
    return {
        "status": "diverged",
        "probe": hash(PROBE),
        "message": div.message,
        "diff": div.diff,
        "signature": div.signature,
    }

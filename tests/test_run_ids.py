"""Run ids from outside: only the engine makes child ids (parent/position), and no id holds
a control character; `contengine import` checks what it brings in (guarantee 4)."""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce
from contengine.cli.main import main

pytestmark = pytest.mark.both_stores

priced: list[str] = []


@ce.step(name="run_ids.price")
def price(item: str) -> int:
    priced.append(item)
    return len(item)


@ce.workflow(name="run_ids.child")
def price_child(item: str) -> Generator[Any, Any, int]:
    return (yield from price(item))


@ce.workflow(name="run_ids.parent")
def parent(item: str) -> Generator[Any, Any, int]:
    total = yield price_child(item)
    return int(total) * 100


@ce.workflow(name="run_ids.waits")
def waits() -> Generator[Any, Any, Any]:
    return (yield ce.wait("go"))


def cli(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--db", current().target(db)])
    out, err = capsys.readouterr()
    return code, out, err


def exported(engine: ce.Engine, run_id: str) -> dict[str, Any]:
    """export_run() data as it comes back from a JSON file."""
    return json.loads(json.dumps(engine.export_run(run_id)))  # type: ignore[no-any-return]


def test_import_refuses_a_child_run_that_would_feed_its_parent(tmp_path: Path) -> None:
    """A child run exported from one file (id 'P/0', parent 'P') cannot take the place of
    the child of another file's run 'P'; that run gets the result of its own child."""
    with ce.Engine(tmp_path / "a.db") as a:
        assert a.run(parent, "forged-item", id="P") == 1100
        forged = exported(a, "P/0")
        forged["run"]["result"] = exported(a, "P")["run"]["result"]  # a forged 1100
    with ce.Engine(tmp_path / "b.db") as b:
        b.start(parent, "abc", id="P")  # not driven yet: its child does not exist
        with pytest.raises(ce.ContengineError, match="contains '/'"):
            b.import_run(forged)
        with pytest.raises(ce.ContengineError, match="is a child run \\(of 'P'\\)"):
            b.import_run(forged, id="loose")
        assert [r.id for r in b.runs()] == ["P"]
        priced.clear()
        assert b.run(parent, "abc", id="P") == 300
        assert priced == ["abc"]


def test_import_refuses_an_id_with_a_slash_given_for_it(tmp_path: Path) -> None:
    with ce.Engine(tmp_path / "a.db") as engine:
        engine.start(waits, id="w")
        data = exported(engine, "w")
        with pytest.raises(ce.ContengineError, match="contains '/'"):
            engine.import_run(data, id="other/0")
        assert [r.id for r in engine.runs()] == ["w"]


BAD_IDS = ["a\x00b", "a\nb", "a\rb", "tab\there", "\n"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_with_control_characters_are_refused_everywhere(tmp_path: Path, bad: str) -> None:
    with ce.Engine(tmp_path / "a.db") as engine:
        engine.start(waits, id="w")
        engine.run_until_idle()
        with pytest.raises(ValueError, match="control character"):
            engine.start(waits, id=bad)
        with pytest.raises(ValueError, match="control character"):
            engine.fork("w", 0, new_id=bad)
        with pytest.raises(ce.ContengineError, match="control character"):
            engine.import_run(exported(engine, "w"), id=bad)
        data = exported(engine, "w")
        data["run"]["id"] = bad
        with pytest.raises(ce.ContengineError, match="control character.*another id"):
            engine.import_run(data)
        with pytest.raises(ValueError, match="control character"):
            engine.signal(bad, "go", 1)
        with pytest.raises(ValueError, match="control character"):
            engine.cancel(bad)
        assert [r.id for r in engine.runs()] == ["w"]
        assert engine.store.mailbox("w") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["signal", "a\nb", "go", "1"],
        ["cancel", "a\x00b"],
        ["fork", "w", "--at", "0", "--id", "a\nb"],
        ["retry", "a\nb"],
    ],
)
def test_the_command_line_refuses_ids_with_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    db = tmp_path / "a.db"
    with ce.Engine(db) as engine:
        engine.start(waits, id="w")
    code, _, err = cli(capsys, db, *argv)
    assert code == 2 and "control character" in err
    with ce.Engine(db) as engine:
        assert [r.id for r in engine.runs()] == ["w"]


def test_the_command_line_refuses_to_import_a_child_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ce.Engine(tmp_path / "a.db") as a:
        a.run(parent, "xy", id="P")
        (tmp_path / "child.json").write_text(json.dumps(a.export_run("P/0")))
    db = tmp_path / "b.db"
    with ce.Engine(db):
        pass
    code, _, err = cli(capsys, db, "import", str(tmp_path / "child.json"))
    assert code == 1 and "contains '/'" in err and "--id" in err
    code, _, err = cli(capsys, db, "import", str(tmp_path / "child.json"), "--id", "c")
    assert code == 1 and "is a child run" in err
    code, _, err = cli(capsys, db, "import", str(tmp_path / "child.json"), "--id", "c\n")
    assert code == 2 and "control character" in err
    with ce.Engine(db) as engine:
        assert engine.runs() == []


@pytest.mark.sqlite_only(reason="a database file made, or not, at a path")
def test_import_into_a_path_with_no_database_creates_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ce.Engine(tmp_path / "a.db") as a:
        a.start(waits, id="w")
        a.run_until_idle()
        (tmp_path / "w.json").write_text(json.dumps(a.export_run("w")))
    new = tmp_path / "new.db"
    code, out, _ = cli(capsys, new, "import", str(tmp_path / "w.json"))
    assert code == 0
    assert f"created a new database at {str(new)!r}" in out and "imported run 'w'" in out
    with ce.Engine(new) as engine:
        engine.signal("w", "go", "moved")
        engine.run_until_idle()
        assert engine.get_run("w").result() == "moved"


@pytest.mark.sqlite_only(reason="a database file made, or not, at a path")
def test_a_refused_import_creates_no_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"format": "contengine-run", "version": 99}))
    new = tmp_path / "new.db"
    code, _, err = cli(capsys, new, "import", str(tmp_path / "bad.json"))
    assert code == 1 and "newer contengine" in err
    assert not os.path.exists(new)
    code, _, err = cli(capsys, tmp_path / "no-dir" / "new.db", "import", str(tmp_path / "bad.json"))
    assert code == 1

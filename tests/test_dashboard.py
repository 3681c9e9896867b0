"""`contengine serve` over HTTP, in-process: the token, pages and fragments, filters and
paging without a silent cap, a run's page with its error and children, and the actions
(cancel, retry, fork, signal) with their refusals; on both stores."""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import dashboard_flows as flows
import pytest
from stores import current

import contengine as ce
from contengine.cli.main import main
from contengine.cli.metrics import prometheus_text
from contengine.cli.web.server import COOKIE, TOKEN_HEADER, Dashboard

pytestmark = pytest.mark.both_stores

TOKEN = "test-token-0123456789abcdef"


class Client:
    """Requests to a dashboard on this machine."""

    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        sent = {"Host": f"127.0.0.1:{self.port}", **(headers or {})}
        if token is not None:
            sent[TOKEN_HEADER] = token
        data = urlencode(body).encode() if body is not None else None
        if data is not None:
            sent["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=data, headers=sent)
        r = conn.getresponse()
        text = r.read().decode()
        conn.close()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, text

    def get(self, path: str, **kw: Any) -> tuple[int, str]:
        status, _, text = self.request("GET", path, **kw)
        return status, text

    def act(self, run_id: str, action: str, **form: str) -> tuple[int, dict[str, Any]]:
        status, _, text = self.request("POST", f"/api/runs/{run_id}/{action}", body=form)
        return status, json.loads(text)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[ce.Engine]:
    with ce.Engine(tmp_path / "dash.db") as engine:
        engine.start(flows.order, "ok-1", id="ok-1", tags=["shop"])
        engine.start(flows.order, "bad-1", id="bad-1", tags=["shop"])
        engine.start(flows.order, "wait-1", id="wait-1")
        engine.start(flows.parent, "p", id="parent")
        engine.run_until_idle()
        yield engine


def serve(engine: ce.Engine, read_only: bool = False) -> Iterator[Client]:
    dashboard = Dashboard(
        engine, "127.0.0.1", 0, TOKEN, read_only=read_only, metrics=prometheus_text
    )
    thread = threading.Thread(target=dashboard.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield Client(dashboard.server_address[1])
    finally:
        dashboard.shutdown()
        dashboard.server_close()
        thread.join()


@pytest.fixture
def client(engine: ce.Engine) -> Iterator[Client]:
    yield from serve(engine)


def test_every_page_needs_the_token_and_the_address_token_becomes_a_cookie(
    client: Client,
) -> None:
    for path in ("/", "/runs/ok-1", "/fragment/runs", "/fragment/runs/ok-1"):
        status, text = client.get(path, token=None)
        assert status == 401 and "needs its token" in text
        assert client.get(path, token="wrong-token-0123456789")[0] == 401
    status, headers, _ = client.request("GET", f"/?status=failed&token={TOKEN}", token=None)
    assert status == 303
    assert headers["location"] == "/?status=failed"  # the token leaves the address
    cookie = headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={TOKEN};") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    status, text = client.get("/", token=None, headers={"Cookie": f"{COOKIE}={TOKEN}"})
    assert status == 200 and "bad-1" in text
    # Static files carry nothing of the database.
    assert client.get("/static/app.js", token=None)[0] == 200


def test_a_page_for_another_host_name_is_refused(client: Client) -> None:
    """DNS rebinding: a site whose name resolves to 127.0.0.1 sends its own Host."""
    status, _ = client.get("/", headers={"Host": f"evil.example:{client.port}"})
    assert status == 421
    assert client.get("/", headers={"Host": f"localhost:{client.port}"})[0] == 200


def test_an_action_needs_the_token_in_its_header_not_only_the_cookie(
    client: Client, engine: ce.Engine
) -> None:
    status, _, text = client.request(
        "POST",
        "/api/runs/wait-1/cancel",
        body={},
        token=None,
        headers={"Cookie": f"{COOKIE}={TOKEN}"},
    )
    assert status == 403 and TOKEN_HEADER in json.loads(text)["message"]
    assert engine.store.get_run("wait-1").cancel_requested is False  # type: ignore[union-attr]


def test_the_runs_page_filters_and_links_each_run(client: Client) -> None:
    status, text = client.get("/?status=failed")
    assert status == 200
    assert 'href="/runs/bad-1"' in text and "ok-1" not in text
    assert "CardDeclined: card declined for bad-1" in text
    assert "runs 1–1 of 1" in text
    _, text = client.get("/fragment/runs?tag=shop")
    assert "runs 1–2 of 2" in text and "wait-1" not in text
    _, text = client.get("/fragment/runs?q=DECLINED")
    assert "bad-1" in text and "ok-1" not in text
    _, text = client.get("/fragment/runs?since=1h")
    assert "runs 1–5 of 5" in text  # four runs and the parent's child
    _, text = client.get("/fragment/runs?workflow=no.such")
    assert "No run matches" in text


def test_paging_never_stops_silently(client: Client, engine: ce.Engine) -> None:
    engine.start_many([(flows.order, (f"wait-many-{i}",)) for i in range(120)])
    _, text = client.get("/fragment/runs?limit=50")
    assert "runs 1–50 of 125" in text and "page 1 of 3" in text and "older →" in text
    _, text = client.get("/fragment/runs?limit=50&offset=100")
    assert "runs 101–125 of 125" in text and "← newer" in text and "older →" not in text
    seen: set[str] = set()
    for offset in (0, 50, 100):
        _, text = client.get(f"/fragment/runs?limit=50&offset={offset}")
        seen |= {part.split('"')[0] for part in text.split('data-run="')[1:]}
    assert len(seen) == 125


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("status=done", "status must be one of"),
        ("since=30", "needs a number with a unit"),
        ("limit=0", "bad page"),
        ("offset=x", "bad page"),
        ("colour=red", "unknown filter 'colour'"),
    ],
)
def test_a_bad_filter_is_a_clear_400(client: Client, query: str, says: str) -> None:
    status, text = client.get(f"/?{query}")
    assert status == 400 and says in text


def test_a_failed_runs_page_shows_its_whole_traceback(client: Client) -> None:
    status, text = client.get("/runs/bad-1")
    assert status == 200
    assert "Traceback (most recent call last)" in text
    assert "dashboard_flows.py" in text and "card declined for bad-1" in text
    assert client.get("/runs/no-such-run")[0] == 404


def test_a_run_page_links_parent_and_child_and_shows_published_values(client: Client) -> None:
    _, text = client.get("/runs/parent")
    assert 'href="/runs/parent%2F0"' in text  # its child run
    _, child = client.get("/runs/parent%2F0")
    assert 'class="parent" href="/runs/parent"' in child
    assert "Published values" in child and "charged wait-p" in child


def test_cancel_retry_fork_and_signal(client: Client, engine: ce.Engine) -> None:
    status, answer = client.act("wait-1", "signal", name="approve", payload='"ann"')
    assert status == 200, answer
    engine.run_until_idle()
    assert engine.get_run("wait-1").result(timeout=0) == "charged wait-1, approved by ann"

    status, answer = client.act("parent", "cancel")
    assert status == 200 and "requested" in answer["message"]
    engine.run_until_idle()
    assert engine.get_run("parent").status == "cancelled"
    status, answer = client.act("parent", "cancel")
    assert status == 409 and "already ended" in answer["message"]

    status, answer = client.act("ok-1", "retry")
    assert status == 409 and answer["message"]  # the engine's reason: it did not fail
    status, answer = client.act("bad-1", "retry")
    assert status == 200, answer

    status, answer = client.act("ok-1", "fork", at="1")
    assert status == 200 and answer["go"].startswith("/runs/")
    forked = answer["go"].removeprefix("/runs/")
    engine.run_until_idle()
    assert engine.get_run(forked).result(timeout=0) == "charged ok-1"


@pytest.mark.parametrize(
    ("run_id", "action", "form", "code", "says"),
    [
        ("ok-1", "fork", {"at": "x"}, 400, "whole number"),
        ("ok-1", "fork", {"at": "-1"}, 400, "0 or more"),
        ("ok-1", "fork", {"at": "99"}, 409, ""),
        ("wait-1", "signal", {"name": ""}, 400, "needs a name"),
        ("wait-1", "signal", {"name": "approve", "payload": "{nope"}, 400, "not JSON"),
        ("no-such", "cancel", {}, 404, "no run with id"),
        ("ok-1", "explode", {}, 404, "no action 'explode'"),
    ],
)
def test_a_refused_action_says_why_and_changes_nothing(
    client: Client,
    engine: ce.Engine,
    run_id: str,
    action: str,
    form: dict[str, str],
    code: int,
    says: str,
) -> None:
    before = [(r.id, r.status, r.cancel_requested) for r in engine.store.list_runs()]
    status, answer = client.act(run_id, action, **form)
    assert status == code and says in answer["message"]
    assert [(r.id, r.status, r.cancel_requested) for r in engine.store.list_runs()] == before


def test_a_read_only_dashboard_refuses_every_action(engine: ce.Engine) -> None:
    for client in serve(engine, read_only=True):
        assert client.get("/runs/wait-1")[0] == 200
        status, answer = client.act("wait-1", "cancel")
        assert status == 403 and "--read-only" in answer["message"]
    assert engine.store.get_run("wait-1").cancel_requested is False  # type: ignore[union-attr]


def test_serve_refuses_to_bind_beyond_this_machine_without_a_token(
    engine: ce.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CONTENGINE_TOKEN", raising=False)
    db = current().target(tmp_path / "dash.db")
    assert main(["serve", "--db", db, "--host", "0.0.0.0"]) == 2
    assert "give --token" in capsys.readouterr().err
    assert main(["serve", "--db", db, "--token", "short"]) == 2
    assert "at least 16 characters" in capsys.readouterr().err
    assert main(["serve", "--db", db, "--port", "70000"]) == 2
    assert main(["serve", "--db", str(tmp_path / "missing.db")]) == 1
    assert "no database at" in capsys.readouterr().err or current().postgres


def test_metrics_are_prometheus_text_for_a_bearer_token(client: Client) -> None:
    assert client.get("/metrics", token=None)[0] == 401
    status, headers, text = client.request(
        "GET", "/metrics", token=None, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE contengine_runs gauge" in text
    assert 'contengine_runs{status="failed"} 1' in text


@pytest.mark.sqlite_only(reason="a pulled copy is a file")
def test_serve_read_only_on_a_read_only_copy_shows_it_and_writes_nothing(
    engine: ce.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve --read-only` on a pulled copy (a file that cannot be written): the pages
    read it, actions are refused, and its bytes are the same afterwards."""
    copy = tmp_path / "pulled.db"
    engine.backup(copy)
    copy.chmod(0o444)
    before = copy.read_bytes()
    monkeypatch.setenv("CONTENGINE_TOKEN", TOKEN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    serve = subprocess.Popen(
        [sys.executable, "-m", "contengine", "serve", "--db", str(copy), "--read-only"]
        + ["--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert match, line
        assert "token=" not in line  # a token given is not printed
        client = Client(int(match.group(1)))
        status, text = client.get("/?status=failed")
        assert status == 200 and "bad-1" in text
        status, answer = client.act("wait-1", "cancel")
        assert status == 403 and "--read-only" in answer["message"]
    finally:
        serve.terminate()
        assert serve.wait(timeout=60) == 0
    assert copy.read_bytes() == before


def test_the_token_cookie_is_found_behind_another_programs_malformed_cookie(
    client: Client,
) -> None:
    """Cookies of every program on this machine's names come along; one the standard
    parser dislikes must not hide the token."""
    for other in ('other={"a":1}', "x=a b", 'x="unterminated', "x=é"):
        cookie = f"{other}; {COOKIE}={TOKEN}"
        status, _ = client.get("/", token=None, headers={"Cookie": cookie})
        assert status == 200, other
    bad = f"x=1; {COOKIE}=not-the-token-0123456789"
    assert client.get("/", token=None, headers={"Cookie": bad})[0] == 401


@pytest.mark.parametrize(
    ("path", "code", "says"),
    [
        ("/?offset=99999999999999999999999", 400, "bad page"),
        ("/?offset=%D9%A1", 400, "bad page"),  # a digit of another script
        ("/fragment/runs?q=%00", 400, "NUL"),
        ("/runs/a%00b", 404, "NUL"),
        ("/runs/%FF", 404, "not UTF-8"),
    ],
)
def test_bad_input_in_an_address_is_the_clients_error_not_the_databases(
    client: Client, path: str, code: int, says: str
) -> None:
    status, text = client.get(path)
    assert status == code and says in text


def test_a_bad_action_request_is_answered_in_json_with_the_reason(
    client: Client, engine: ce.Engine
) -> None:
    status, _, text = client.request(
        "POST", "/api/runs/wait-1/cancel", headers={"Content-Length": "abc"}
    )
    assert status == 400 and "Content-Length" in json.loads(text)["message"]
    status, _, text = client.request("POST", "/api/runs/a%00b/cancel", body={})
    assert status == 400 and "NUL" in json.loads(text)["message"]
    for payload in ("NaN", "1e999", "[Infinity]"):
        code, answer = client.act("wait-1", "signal", name="approve", payload=payload)
        assert code == 400 and "not JSON" in answer["message"], payload
    code, answer = client.act("ok-1", "fork", at="\u0661")  # ARABIC-INDIC DIGIT ONE
    assert code == 400 and "whole number" in answer["message"]
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=60)
    body = b"name=%FF%FE"
    conn.request(
        "POST",
        "/api/runs/wait-1/signal",
        body=body,
        headers={
            "Host": f"127.0.0.1:{client.port}",
            TOKEN_HEADER: TOKEN,
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    r = conn.getresponse()
    assert r.status == 400 and "UTF-8" in json.loads(r.read())["message"]
    conn.close()
    assert engine.store.get_run("wait-1").status == "waiting"  # type: ignore[union-attr]


def test_the_confirmation_names_the_run_as_it_is(engine: ce.Engine) -> None:
    engine.start(flows.order, "wait-x", id="a&b<c>")
    for client in serve(engine):
        _, text = client.get("/runs/a%26b%3Cc%3E")
        # The attribute holds the id escaped once: the dialog shows "a&b<c>".
        assert 'data-confirm="Cancel run a&amp;b&lt;c&gt;?"' in text


def test_an_ipv6_loopback_address_is_served(engine: ce.Engine) -> None:
    dashboard = Dashboard(engine, "[::1]", 0, TOKEN)
    thread = threading.Thread(target=dashboard.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        assert dashboard.loopback and dashboard.url.startswith("http://[::1]:")
        conn = http.client.HTTPConnection("::1", dashboard.server_address[1], timeout=60)
        conn.request("GET", "/", headers={"Host": f"[::1]:{dashboard.server_address[1]}"})
        r = conn.getresponse()
        assert r.status == 401  # reached, and still asks for the token
        conn.close()
    finally:
        dashboard.shutdown()
        dashboard.server_close()
        thread.join()

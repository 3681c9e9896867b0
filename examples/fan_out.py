"""Fan-out/fan-in: fetch many pages at once with ce.gather, then reduce them in one step.

What this teaches
-----------------
* ``pages = yield ce.gather(*(fetch_page(url) for url in urls))`` runs the steps
  concurrently (in the engine's thread pool) and hands back their results as a
  list *in argument order*, however the fetches happened to finish. The list then
  goes to an ordinary step -- the fan-in, or reduce.
* Each member of a gather gets its own log entry, at a position fixed by its place
  in the argument list, all written before any fetch starts. Each fetch's result
  is committed the moment it arrives, so a crash in the middle of a fan-out loses
  only the fetches still in flight.
* After a crash, any process with the database file resumes the run: pages
  already in the log are not fetched again; only the one that was in flight is.

Run it::

    python examples/fan_out.py

What to watch for in the output
-------------------------------
* First run: the pages finish in another order than they were asked for, and all
  five take about as long as the slowest one, not the sum of their latencies.
* Its log: the gather's own entry (``5 members``), then one entry per page in the
  order of the URL list, then the reduce step.
* Second run: a process fetching the same pages dies while ``/archive`` is still
  loading. Its log shows four pages ``completed`` and ``/archive`` ``running``.
  This process then resumes the run with a new Engine and fetches ``/archive``
  alone; the word count is the same as the first run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Generator
from typing import Any

import contengine as ce

# A tiny fake web site: path -> (text, seconds it takes to load).
SITE = {
    "/": ("durable execution keeps a log of every step", 0.30),
    "/about": ("the log is the memory of a run", 0.10),
    "/archive": ("old pages load slowly but the log keeps what was fetched", 0.45),
    "/blog": ("a step that finished is never run again", 0.20),
    "/contact": ("write to the log keeper", 0.15),
}
URLS = list(SITE)
STOPWATCH = {"started": time.monotonic()}  # reset at the start of each run
# Set in the process that is to die while fetching this page (see crash_while_fetching).
DOOMED: dict[str, str] = {}


@ce.step
def fetch_page(url: str) -> str:
    """Download one page (here: wait for its latency and return its text)."""
    if url == DOOMED.get("url"):
        crash_while_fetching(url)
    text, latency = SITE[url]
    time.sleep(latency)
    print(f"  t={time.monotonic() - STOPWATCH['started']:.2f}s  fetched {url}", flush=True)
    return text


@ce.step
def count_words(pages: list[str]) -> list[tuple[str, int]]:
    """The fan-in: the three most common words over all pages.

    The pages come in URL order whatever order they loaded in, so ties between
    words break the same way in every run and every replay.
    """
    counts = Counter(word for page in pages for word in page.split())
    return counts.most_common(3)


@ce.workflow(name="word_count")
def word_count(urls: list[str]) -> Generator[Any, Any, list[tuple[str, int]]]:
    """Fetch every page concurrently, then count the words in all of them."""
    pages = yield ce.gather(*(fetch_page(url) for url in urls))
    top: list[tuple[str, int]] = yield count_words(pages)
    return top


def crash_while_fetching(url: str) -> None:
    """Stand-in for a crash: once every other page is in the log, the process dies."""
    run_id = ce.current_step().run_id
    with ce.Engine(DOOMED["db"]) as reader:
        while sum(e.status == "completed" for e in reader.history(run_id)) < len(URLS):
            time.sleep(0.01)  # the gather's own entry and the four other pages
    print(f"  the process dies while fetching {url}", flush=True)
    os._exit(1)  # no cleanup, no exception handler: as abrupt as a power cut


def show_log(engine: ce.Engine, run_id: str) -> None:
    """Print the run's log, one entry per line (long arguments cut short)."""
    for entry in engine.history(run_id):
        what = entry.describe()
        if len(what) > 60:
            what = what[:56] + "...)"
        print(f"    {entry.position}  {what} [{entry.status}]")


def main() -> None:
    """Fan out once without trouble, then again with a crash in the middle."""
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "fan_out.db")

        print(f"First run: {len(URLS)} pages at once")
        with ce.Engine(db) as engine:
            STOPWATCH["started"] = time.monotonic()
            top = engine.run(word_count, URLS, id="count-1")
            took = time.monotonic() - STOPWATCH["started"]
            one_by_one = sum(latency for _, latency in SITE.values())
            print(f"  all pages in {took:.2f} s (one after another: {one_by_one:.2f} s)")
            print(f"  top words: {top}")
            print("  its log:")
            show_log(engine, "count-1")

        print("\nSecond run: a process that dies in the middle of the fan-out")
        child = subprocess.run(
            [sys.executable, __file__, "--die-fetching", "/archive", db],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(child.stdout.rstrip())
        print(f"  (the process exited with code {child.returncode})")
        with ce.Engine(db) as engine:
            print("  the log it left behind:")
            show_log(engine, "count-2")

        print("\nThis process resumes the run with a new Engine")
        with ce.Engine(db) as engine:
            STOPWATCH["started"] = time.monotonic()
            again = engine.run(word_count, URLS, id="count-2")
            print(f"  top words: {again}")
            print(f"  same as the first run: {again == top}")
            print("  the log:")
            show_log(engine, "count-2")


def doomed_process(url: str, db: str) -> None:
    """The second run's first process: start the run and die while fetching url."""
    DOOMED.update(url=url, db=db)
    with ce.Engine(db) as engine:
        engine.run(word_count, URLS, id="count-2")
    print("  (not reached: the process died)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--die-fetching"]:
        doomed_process(sys.argv[2], sys.argv[3])
    else:
        main()

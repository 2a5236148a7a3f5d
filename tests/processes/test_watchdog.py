"""The watchdog (gateway.processes.watchdog): a parent killed outright leaves no child running.

A real parent process with real children stands in for the gateway and vLLM's
engine core: a child with a grandchild (as the engine core has its workers), a
child that ignores SIGTERM (it needs the SIGKILL after the grace) and the
multiprocessing resource tracker (left to stop itself). The engine's own case
is in tests/test_drain.py and tests/processes/test_api_processes.py.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.servers import ended
from tests.sse_client import eventually

# The stand-in gateway: starts its children, then the watchdog, prints their pids, and waits
# for a line on stdin: "close" stops its children and closes the watchdog, as `serve` does.
PARENT = textwrap.dedent(
    """
    import json, multiprocessing.resource_tracker, os, signal, subprocess, sys, time
    from gateway.processes.watchdog import Watchdog

    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    with_grandchild = [sys.executable, "-c",
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']);"
        "print('ready', flush=True); time.sleep(600)"]
    stubborn = [sys.executable, "-c",
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True);"
        "time.sleep(600)"]
    multiprocessing.resource_tracker.ensure_running()
    children = [subprocess.Popen(with_grandchild, stdout=subprocess.PIPE), subprocess.Popen(sleeper)]
    children.append(subprocess.Popen(stubborn, stdout=subprocess.PIPE))
    children[0].stdout.readline()  # its own child runs
    children[-1].stdout.readline()  # its SIGTERM handler is in place
    watchdog = Watchdog.start(grace=float(sys.argv[1]))
    tracker = multiprocessing.resource_tracker._resource_tracker._pid
    print(json.dumps({"children": [c.pid for c in children], "watchdog": watchdog.process.pid,
                      "tracker": tracker}), flush=True)
    if sys.stdin.readline().strip() == "close":
        for child in children:
            child.kill()
            child.wait()
        watchdog.close()
        print(json.dumps({"watchdog_status": watchdog.process.returncode}), flush=True)
    """
)


@dataclass
class Parent:
    process: subprocess.Popen[str]
    own: list[int]  # the pids of its own children
    children: list[psutil.Process]  # those and their descendants
    watchdog: psutil.Process
    tracker: psutil.Process
    log: Path

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[Parent]:
    log = tmp_path / "parent.log"
    with log.open("w") as stderr:
        command = [sys.executable, "-c", PARENT, "1.0"]  # a grace of 1 s
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert process.stdin is not None and process.stdout is not None
    everything: list[psutil.Process] = []
    try:
        started = json.loads(process.stdout.readline())
        children = [psutil.Process(pid) for pid in started["children"]]
        children += [grandchild for child in children for grandchild in child.children(recursive=True)]
        watchdog = psutil.Process(started["watchdog"])
        everything = [*children, watchdog]
        assert len(children) == 4, "the stand-in's children did not all start"
        yield Parent(process, started["children"], children, watchdog, psutil.Process(started["tracker"]), log)
    finally:
        process.kill()
        process.wait(10)
        process.stdin.close()
        process.stdout.close()
        for leftover in everything:
            with contextlib.suppress(psutil.Error):
                leftover.kill()


def ignored_signals(process: psutil.Process) -> set[int]:
    """The signals `process` ignores, from /proc (Linux)."""
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            mask = int(line.split()[1], 16)
            return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    return set()


async def test_a_parent_killed_outright_leaves_no_child_and_no_grandchild_running(parent: Parent) -> None:
    # Ctrl-C or a hang-up sent to the whole group must not stop the watchdog first.
    await eventually(lambda: {signal.SIGINT, signal.SIGTERM, signal.SIGHUP} <= ignored_signals(parent.watchdog))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        parent.watchdog.send_signal(sig)
    parent.kill()
    # The stubborn child ignores SIGTERM: gone only once the SIGKILL after the grace came.
    await eventually(lambda: all(ended(p) for p in [*parent.children, parent.watchdog]))
    log = parent.log.read_text()
    assert "ended without stopping its child processes" in log
    stopped = log.rsplit("stopped", 1)[-1].split()
    assert sorted(map(int, stopped)) == sorted(parent.own)  # what it was given: the direct children
    await eventually(lambda: ended(parent.tracker))  # it stops itself: the watchdog leaves it alone
    assert str(parent.tracker.pid) not in stopped


def test_after_a_graceful_stop_the_watchdog_ends_and_stops_nothing(parent: Parent) -> None:
    assert parent.process.stdin is not None and parent.process.stdout is not None
    parent.process.stdin.write("close\n")
    parent.process.stdin.flush()
    ended = json.loads(parent.process.stdout.readline())
    assert ended["watchdog_status"] == 0
    assert not parent.watchdog.is_running()
    assert "ended without stopping" not in parent.log.read_text()

"""A watchdog that stops the gateway's child processes if the gateway ends without stopping them.

vLLM runs its engine core (and the core its workers) in child processes, and
with `--api-processes N` the front ends are children too. A graceful stop
stops them all; but a gateway killed outright (SIGKILL, the OOM killer, a
crash of the interpreter) leaves them running, reparented to init: the engine
core keeps its memory (on a GPU box the restarted gateway then finds no room
for its model) and orphaned front ends keep accepting connections on the
shared port with no one to answer for them. vLLM 0.32 has no guard against it
(nothing in the engine core watches its parent). systemd's default
`KillMode=control-group` and a container's end clean up after a crash; a
`serve` run under a shell, tmux, supervisord or a cloud-init script does not.

So once its children run, `serve` starts one more small process, this
module, with their pids. It holds the read end of a pipe whose write end only
the gateway holds, so the pipe ends exactly when the gateway does, however it
ends. It then sends SIGTERM to each listed child still alive (each stops its
own children, as on a graceful stop) and SIGKILL, after `grace` seconds, to
whatever is left of them and of their descendants. After a graceful stop it
finds nothing left and exits. It ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C
or a hang-up sent to the whole process group must leave it to do its job
after the gateway's own stop.

    python -P gateway/processes/watchdog.py --parent PID --grace S PID:START_TIME ...
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Sequence

import psutil  # type: ignore[import-untyped]

logger = logging.getLogger("gateway.processes.watchdog")  # the same name when run as a file

GRACE = 10.0  # seconds between SIGTERM and SIGKILL: vLLM's engine core stops its workers in a few
_TRACKER = "multiprocessing.resource_tracker"  # stops itself once its own pipe from the gateway ends


class Watchdog:
    """The running watchdog of this process's children; `close` when they have been stopped."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: int) -> None:
        self.process = process
        self._pipe = pipe

    @classmethod
    def start(cls, grace: float = GRACE) -> Watchdog | None:
        """Watch the children this process has now (None: it has none to watch).

        Start it after the children: one forked later would inherit the pipe's
        write end and keep it open past the gateway's end.
        """
        children = [p for p in psutil.Process().children() if not _is_tracker(p)]
        if not children:
            return None
        # Run as a file, not `-m`: the gateway package is not imported (15 MB instead of 60).
        # `-P`: this file's folder is not put first on the import path.
        command = [sys.executable, "-P", os.path.abspath(__file__), "--parent", str(os.getpid())]
        command += ["--grace", str(grace), *(f"{p.pid}:{p.create_time()!r}" for p in children)]
        read, write = os.pipe()  # neither end is inherited by a child this process spawns later
        try:
            process = subprocess.Popen(command, stdin=read)
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        logger.debug("watchdog (pid %d) watches pids %s", process.pid, " ".join(str(p.pid) for p in children))
        return cls(process, write)

    def close(self, timeout: float = GRACE + 5) -> None:
        """The gateway has stopped its children: end the watchdog (it stops any left) and wait for it."""
        if self._pipe >= 0:
            os.close(self._pipe)
            self._pipe = -1
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _is_tracker(process: psutil.Process) -> bool:
    try:
        return _TRACKER in " ".join(process.cmdline())
    except psutil.Error:
        return False


def wait_for_parent_end(parent: int) -> None:
    """Return once the parent is gone: the pipe on stdin ends (or, should a child hold it, the parent changes)."""
    while True:
        readable, _, _ = select.select([0], [], [], 1.0)
        if readable and not os.read(0, 4096):
            return
        if os.getppid() != parent:
            return


def stop(targets: Sequence[tuple[int, float]], grace: float) -> list[int]:
    """SIGTERM the targets still alive, SIGKILL what is left of them and their descendants after `grace`."""
    alive: list[psutil.Process] = []
    for pid, started in targets:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) < 0.01:  # the same process, not a new one with its pid
                alive.append(process)
        except psutil.Error:
            continue
    if not alive:
        return []
    family = list(alive)
    for process in alive:  # taken now, while the tree is whole: a stopped parent's children go to init
        try:
            family += process.children(recursive=True)
        except psutil.Error:
            continue
    for process in alive:
        try:
            process.terminate()
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(family, timeout=grace)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(left, timeout=5)
    return [p.pid for p in alive]


def _target(text: str) -> tuple[int, float]:
    pid, _, started = text.partition(":")
    return int(pid), float(started)


def main(argv: Sequence[str] | None = None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    parser = argparse.ArgumentParser(description="stop a process's children once it has ended")
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--grace", type=float, default=GRACE)
    parser.add_argument("targets", nargs="+", type=_target, metavar="PID:START_TIME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    wait_for_parent_end(args.parent)
    stopped = stop(args.targets, args.grace)
    if stopped:
        logger.warning(
            "the gateway (pid %d) ended without stopping its child processes: stopped %s",
            args.parent,
            " ".join(map(str, stopped)),
        )


if __name__ == "__main__":
    main()

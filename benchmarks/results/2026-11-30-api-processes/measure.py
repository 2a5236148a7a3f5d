"""The real-engine figures of NOTES.md: one gateway at a time, the OpenAI route, 128 tokens, c = 64 and 256.

`main` N=1 (a `git archive main` tree), this tree N=1, this tree N=2; tokens/s,
TTFT p50 and front-end CPU per token (scenario 7's reading: every process of the
server but vLLM's engine core and workers). Needs redis-server on REDIS.

    PYTHONPATH=. python benchmarks/results/2026-11-30-api-processes/measure.py MAIN_TREE OUT.json [rev]
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.client import OpenAIChatTarget
from benchmarks.client.load import fixed_concurrency
from benchmarks.records import summarise
from benchmarks.scenarios.frontend import frontend_cpu_times

MODEL = "/work/main/models/tiny"
REDIS = "redis://127.0.0.1:6391"
LEVELS = (64, 256)
HERE = str(Path(__file__).resolve().parents[3])


def start(tree: str, port: int, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--model", MODEL, "--served-model-name", "tiny"]
    command += ["--port", str(port), "--max-model-len", "1024", "--ignore-eos", "--concurrency", "512"]
    command += ["--queue-size", "1024", "--max-new-tokens", "128", "--no-secure-cookies"]
    command += ["--session-store", REDIS, "--log-level", "warning", *extra]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(log.read_text()[-3000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("the gateway did not start")


async def levels(url: str, pid: int) -> dict[int, dict[str, Any]]:
    warm = OpenAIChatTarget("warm-up", url, "tiny")
    await fixed_concurrency(warm, 4, 8, 128)
    await warm.close()
    figures: dict[int, dict[str, Any]] = {}
    for c in LEVELS:
        target = OpenAIChatTarget("gateway", url, "tiny")
        before, load_before = frontend_cpu_times(pid).total, os.getloadavg()[0]
        result = await fixed_concurrency(target, c, 2 * c, 128)
        cpu = frontend_cpu_times(pid).total - before
        await target.close()
        s = summarise(result.records, result.duration)
        tokens = s["total_output_tokens"]
        figures[c] = {
            "tokens_per_s": round(s["output_throughput"]),
            "ttft_p50_ms": round(s["ttft_ms"]["p50"] or 0),
            "us_per_token": round(cpu / tokens * 1e6, 1) if tokens else None,
            "tokens": tokens,
            "load_before": round(load_before, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "errors": s.get("errors"),
        }
        print(url, c, figures[c], flush=True)
    return figures


def main() -> None:
    main_tree, out = sys.argv[1], Path(sys.argv[2])
    configs = [("main N=1", main_tree, []), ("branch N=1", HERE, []), ("branch N=2", HERE, ["--api-processes", "2"])]
    if sys.argv[3:] == ["rev"]:
        configs.reverse()
    results = {}
    for name, tree, extra in configs:
        process = start(tree, 8890, extra, out.with_suffix(f".{name.replace(' ', '_').replace('=', '')}.log"))
        try:
            results[name] = asyncio.run(levels("http://127.0.0.1:8890", process.pid))
        finally:
            process.terminate()
            process.wait(60)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

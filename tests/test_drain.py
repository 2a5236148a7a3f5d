"""How the process ends (gateway.drain): SIGTERM drains, a dead engine exits 1, SIGKILL leaves no process behind."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.servers import Gateway
from tests.sse_client import Event, parse_sse

pytestmark = pytest.mark.engine

STREAMS = 20
TOKENS = 600


async def test_sigterm_lets_twenty_live_streams_finish_and_refuses_new_requests(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    gateway = Gateway(
        tmp_path,
        tiny_model_dir,
        "--ignore-eos",
        "--max-new-tokens",
        str(TOKENS),
        "--concurrency",
        str(STREAMS),
        "--drain-timeout",
        "300",
    )
    await asyncio.to_thread(gateway.start)
    started = [asyncio.Event() for _ in range(STREAMS)]

    async def stream(i: int) -> list[Event]:
        body = b""
        # One client per stream: each is its own session.
        async with httpx.AsyncClient(timeout=300) as client:
            request = client.build_request("POST", f"{gateway.url}/chat_stream", json={"user_input": f"stream {i}"})
            response = await client.send(request, stream=True)
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                body += chunk
                if b"event: delta" in body:
                    started[i].set()
        return parse_sse(body.decode())

    try:
        async with asyncio.timeout(600):
            tasks = [asyncio.create_task(stream(i)) for i in range(STREAMS)]
            await asyncio.gather(*(event.wait() for event in started))
            assert gateway.process is not None
            gateway.process.send_signal(signal.SIGTERM)

            async with httpx.AsyncClient(timeout=30) as client:
                # The signal is handled asynchronously: wait until the gateway says it is draining.
                while (ready := await client.get(f"{gateway.url}/ready")).status_code == 200:
                    await asyncio.sleep(0.05)
                refused = await client.post(f"{gateway.url}/chat_stream", json={"user_input": "too late"})
                assert not all(task.done() for task in tasks), "the streams ended before the drain could be seen"
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "engine_unavailable"
            assert "retry-after" in refused.headers

            results = await asyncio.gather(*tasks)
            exit_status = await gateway.wait_exit(120)
    finally:
        gateway.stop()

    for events in results:
        kind, done = events[-1]
        assert kind == "done"
        assert done["state"] == "success"
        assert done["usage"]["completion_tokens"] == TOKENS
    assert exit_status == 0


async def test_the_process_exits_1_when_its_engine_dies(tiny_model_dir: Path, tmp_path: Path) -> None:
    """vLLM's engine cannot restart in place: the process must exit non-zero for its supervisor."""
    gateway = Gateway(tmp_path, tiny_model_dir)
    await asyncio.to_thread(gateway.start)
    assert gateway.process is not None
    try:
        cores = [p for p in psutil.Process(gateway.process.pid).children(recursive=True) if "EngineCore" in p.name()]
        assert cores, "the gateway has no engine-core process"
        for core in cores:
            core.kill()
        async with asyncio.timeout(60):
            while gateway.process.poll() is None:
                await asyncio.sleep(0.2)
        assert gateway.process.returncode == 1
        assert "the engine has died" in gateway.log.read_text()
    finally:
        gateway.stop()


async def test_a_gateway_killed_outright_leaves_none_of_its_processes_running(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """SIGKILL (the OOM killer) runs nothing in the gateway: its watchdog stops vLLM's engine core and workers."""
    gateway = Gateway(tmp_path, tiny_model_dir)
    await asyncio.to_thread(gateway.start)
    try:
        stopped = await gateway.kill_outright()
        assert any("EngineCore" in name for name in stopped), stopped
        assert "ended without stopping its child processes" in gateway.log.read_text()
    finally:
        gateway.stop()

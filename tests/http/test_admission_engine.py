"""Fair admission on the real engine: a light user's request overtakes a flooder's queue."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from gateway.core.vllm_engine import VLLMEngine
from tests.gateway_app import running_gateway
from tests.sse_client import eventually

pytestmark = pytest.mark.engine

FLOOD, LIGHT = "sk-flood", "sk-light"


async def test_a_light_users_request_goes_before_a_flooders_queue(real_engine: VLLMEngine, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{FLOOD} flooder class=bulk\n{LIGHT} light class=interactive\n")
    async with (
        running_gateway(real_engine, lifespan="off", keys_file=keys, concurrency=1, queue_size=8) as gw,
        httpx.AsyncClient(base_url=gw.url, timeout=120) as client,
    ):
        admission = gw.app.state.core.admission
        model = real_engine.model_name
        finished: list[str] = []

        async def chat(label: str, key: str, max_tokens: int) -> None:
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"request {label}"}],
                "max_tokens": max_tokens,
                "ignore_eos": True,
            }
            r = await client.post("/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] == max_tokens
            finished.append(label)

        flood = [asyncio.create_task(chat(f"flood{i}", FLOOD, 128)) for i in range(4)]
        await eventually(lambda: (admission.load().running, admission.load().waiting) == (1, 3))
        # The light user arrives behind three waiting flood requests.
        light = asyncio.create_task(chat("light", LIGHT, 8))
        await asyncio.gather(*flood, light)
        # First come, first served would finish it last (index 4); the fair share serves it as soon as
        # the flood request running when it came (or, at worst, the next one) is done.
        assert finished.index("light") <= 2, finished
        assert admission.load().running == admission.load().waiting == 0

"""The engine outputs of a generation with several prompts (a completions list), merged into one stream."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncGenerator
from contextlib import aclosing

import pytest

from gateway.core import GenerationRequest, SamplingOptions
from gateway.core.engine import ACCEPTED, EngineOutput
from gateway.core.outputs import generation_outputs, takes_sink
from tests.fakes import FakeEngine

OPTIONS = SamplingOptions(max_tokens=5)


def several(prompts: int) -> GenerationRequest:
    extra = tuple(([i], OPTIONS) for i in range(1, prompts))
    return GenerationRequest("cmpl-1", "v1/completions", [0], OPTIONS, extra_prompts=extra)


async def test_every_prompts_outputs_arrive_interleaved_and_marked_with_the_prompt() -> None:
    engine = FakeEngine(answer="abcde")
    engine.token_delay = 0.001  # the streams take turns
    await engine.start()
    texts: dict[int, str] = defaultdict(str)
    order = []
    async with asyncio.timeout(10):
        async for out in generation_outputs(engine, several(3)):
            texts[out.prompt_index] += out.text
            order.append(out.prompt_index)
    assert texts == {0: "abcde", 1: "abcde", 2: "abcde"}
    assert order != sorted(order)  # interleaved, not one prompt after the other
    assert engine.prompts == [[0], [1], [2]] and not engine.running


async def test_one_prompt_failing_fails_the_generation_and_stops_the_others() -> None:
    engine = FakeEngine(answer="abcdefgh")
    engine.token_delay = 0.001
    engine.fail_after_tokens = 3
    await engine.start()
    with pytest.raises(RuntimeError, match="fake engine failure"):
        async with asyncio.timeout(10), aclosing(generation_outputs(engine, several(2))) as outputs:
            async for _ in outputs:
                pass
    assert not engine.running


async def test_leaving_early_closes_every_prompts_stream() -> None:
    engine = FakeEngine(answer="abcdefgh")
    engine.token_delay = 0.001
    await engine.start()
    async with asyncio.timeout(10), aclosing(generation_outputs(engine, several(3))) as outputs:
        async for _ in outputs:
            break
    assert not engine.running


async def test_an_engine_without_the_sink_parameter_is_served_as_before() -> None:
    # A library user's engine written against the protocol before `sink` (three parameters).
    class OldEngine(FakeEngine):
        async def generate(  # type: ignore[override]
            self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
        ) -> AsyncGenerator[EngineOutput, None]:
            async for out in super().generate(request_id, prompt_token_ids, options):
                yield out

    old, new = OldEngine(), FakeEngine()
    await old.start()
    assert not takes_sink(old) and takes_sink(new)
    gen = GenerationRequest("cmpl-1", "v1/completions", [0], SamplingOptions(max_tokens=8))
    outputs = [out async for out in generation_outputs(old, gen, lambda out: True) if out is not ACCEPTED]
    assert "".join(out.text for out in outputs) == old.answer[:8]

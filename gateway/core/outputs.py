"""The engine outputs of one generation, as one stream.

A generation is usually one engine request. A completions request given several
prompts is one engine request per prompt (vLLM numbers their answers prompt by
prompt), and its response streams them interleaved as they come: this merges
those streams, marking each output with its prompt's index.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import AsyncGenerator

from gateway.core.engine import ACCEPTED, Engine, EngineOutput, OutputSink, SamplingOptions
from gateway.core.generation import GenerationRequest

_END = object()


def generation_outputs(
    engine: Engine, gen: GenerationRequest, sink: OutputSink | None = None
) -> AsyncGenerator[EngineOutput, None]:
    """Every output of every engine request of `gen`; the stream ends when all of them have.

    `sink` goes to the engine (see `Engine.generate`) where the generation is one engine request;
    the merged stream of several yields every output.
    """
    if not gen.extra_prompts:  # the engine's own stream: no extra hop per token
        if sink is not None and takes_sink(engine):
            return engine.generate(gen.request_id, gen.prompt_token_ids, gen.options, sink=sink)
        return engine.generate(gen.request_id, gen.prompt_token_ids, gen.options)
    return _merged(engine, gen.engine_requests())


_TAKES_SINK: dict[type, bool] = {}


def takes_sink(engine: Engine) -> bool:
    """Whether `engine.generate` has the `sink` parameter: an engine written before it is called without."""
    kind = type(engine)
    known = _TAKES_SINK.get(kind)
    if known is None:
        try:
            known = "sink" in inspect.signature(engine.generate).parameters
        except (TypeError, ValueError):  # no signature to read: the protocol as it was
            known = False
        _TAKES_SINK[kind] = known
    return known


async def _merged(
    engine: Engine, requests: list[tuple[str, list[int], SamplingOptions]]
) -> AsyncGenerator[EngineOutput, None]:
    # Unbounded: the engine's own output queues are unbounded too, and every
    # request's output is bounded by its max_tokens.
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def drain(index: int, request_id: str, prompt: list[int], options: SamplingOptions) -> None:
        outputs = engine.generate(request_id, prompt, options)
        try:
            async for out in outputs:
                queue.put_nowait((index, out))
        except Exception as exc:  # handed to the consumer, who raises it
            queue.put_nowait((index, exc))
        finally:
            await outputs.aclose()
            queue.put_nowait((index, _END))

    tasks = [asyncio.create_task(drain(i, *request)) for i, request in enumerate(requests)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            elif item is ACCEPTED:  # kept as it is: it is known by identity
                yield item
            else:
                assert isinstance(item, EngineOutput)
                yield dataclasses.replace(item, prompt_index=index)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""The engine itself as a target: the gateway's vLLM adapter in this process, with no HTTP (the physical limit)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from benchmarks.client.targets import User, token_arrived
from benchmarks.records import RequestRecord
from gateway.core.engine import Engine, SamplingOptions
from gateway.core.vllm_engine import VLLMEngine


class EngineTarget:
    """Chat turns straight into an `Engine`.

    Prompts are rendered with the model's chat template and tokenized exactly
    as the gateway does, so the engine sees the same token ids.
    """

    def __init__(self, name: str, engine: Engine, temperature: float = 0.7, top_p: float = 0.95) -> None:
        self.name = name
        self.engine = engine
        self.temperature = temperature
        self.top_p = top_p
        self._next_id = 0

    def new_user(self) -> User:
        return User()

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        user.messages.append({"role": "user", "content": text})
        tokenizer = self.engine.tokenizer
        ids = tokenizer.encode(tokenizer.render_chat(user.messages, add_generation_prompt=True))
        options = SamplingOptions(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, ignore_eos=True
        )
        self._next_id += 1
        record = RequestRecord(started=time.perf_counter())
        answer: list[str] = []
        try:
            async for out in self.engine.generate(f"bench-{self._next_id}", ids, options):
                now = time.perf_counter()
                if out.num_new_tokens:
                    token_arrived(record, now)
                    record.output_tokens += out.num_new_tokens
                record.prompt_tokens = out.num_prompt_tokens
                answer.append(out.text)
                if out.finish_reason is not None:
                    record.ok = out.finish_reason != "abort"
        except Exception as exc:  # the engine's failure is the measurement, not a crash of the harness
            record.error = f"{type(exc).__name__}: {exc}"[:120]
            record.ended = time.perf_counter()
            return record
        record.status = 200
        record.ended = time.perf_counter()
        user.messages.append({"role": "assistant", "content": "".join(answer)})
        return record

    async def close(self) -> None:
        return None


@asynccontextmanager
async def engine_target(model: str, name: str = "engine") -> AsyncIterator[EngineTarget]:
    """vLLM on `model` (prefix caching on, as the gateway serves it), started here and stopped on exit."""
    engine = VLLMEngine(model, {"enable_prefix_caching": True})
    await engine.start()
    try:
        yield EngineTarget(name, engine)
    finally:
        await engine.stop()

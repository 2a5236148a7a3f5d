"""A fake engine behind the gateway's Engine protocol, for fast tests, and a store that can go away.

It "generates" a scripted answer one character per token, and lets a test
hold generations at a gate, slow them down, make them fail, or have them
refused as vLLM refuses a request it cannot run (before accepting it).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any

from gateway.core.engine import ACCEPTED, Engine, EngineDead, EngineOutput, EngineStats, OutputSink, SamplingOptions
from gateway.core.errors import GatewayError
from gateway.sessions import MemoryStore
from prompts import Tokenizer


class CharTokenizer:
    """One token per character; a ChatML-like template."""

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        text = "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")


class FakeEngine:
    model_name = "fake-model"

    def __init__(self, answer: str = "Hello from the fake engine.", max_model_len: int = 4096) -> None:
        self.answer = answer
        self.max_model_len = max_model_len
        self.token_delay = 0.0
        self.gate: asyncio.Event | None = None  # when set to an unset Event, generations wait on it
        self.gate_after = 0  # ... after sending this many tokens (1: the stream has begun, its cookie is out)
        self.at_gate = 0  # generations that have reached the gate
        self.fail_after_tokens: int | None = None  # raise after this many tokens
        self.refusal: GatewayError | None = None  # raised before the request is accepted (vLLM's add_request)
        self.accept_gate: asyncio.Event | None = None  # when an unset Event, requests wait on it to be accepted
        self.dead = False
        # When on, a prompt's tokens that an earlier prompt began with count as cached, in whole
        # blocks and never the last token, as vLLM's prefix cache counts them; its other whole
        # blocks count as newly cached.
        self.prefix_cache = False
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.prompts: list[list[int]] = []
        self.offer = True  # offer outputs to a consumer's sink, as vLLM's engine does
        self.taken = 0  # outputs a sink took instead of the stream
        self.options: list[SamplingOptions] = []
        self._tokenizer = CharTokenizer()
        self.started = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.started = False

    @property
    def tokenizer(self) -> CharTokenizer:
        return self._tokenizer

    def prompt_text(self, index: int = -1) -> str:
        return "".join(chr(i) for i in self.prompts[index])

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions, sink: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        if self.dead:
            raise EngineDead("fake engine is dead")
        if self.accept_gate is not None:
            await self.accept_gate.wait()
        if self.refusal is not None:
            raise self.refusal
        cached = self._cached(prompt_token_ids) if self.prefix_cache else 0
        written = len(prompt_token_ids) // 16 * 16 - cached if self.prefix_cache else 0
        self.prompts.append(list(prompt_token_ids))
        self.options.append(options)
        self.running.add(request_id)
        try:
            yield ACCEPTED
            text = self.answer
            if options.ignore_eos:
                text = (text * (options.max_tokens // max(len(text), 1) + 1))[: options.max_tokens]
            text = text[: options.max_tokens]
            cache = {"num_cached_tokens": cached, "num_cache_write_tokens": written}
            if self.gate is not None and not text:
                await self.gate.wait()
            for i, ch in enumerate(text):
                if self.gate is not None and i == self.gate_after:
                    self.at_gate += 1
                    await self.gate.wait()
                if self.fail_after_tokens is not None and i >= self.fail_after_tokens:
                    raise RuntimeError("fake engine failure")
                if self.dead:
                    raise EngineDead("fake engine died")
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                last = i == len(text) - 1
                reason = ("length" if len(text) >= options.max_tokens else "stop") if last else None
                out = EngineOutput(ch, 1, len(prompt_token_ids), reason, **cache)
                if self.took(sink, out):
                    continue
                yield out
            if not text:
                yield EngineOutput("", 0, len(prompt_token_ids), "length", **cache)
        finally:
            self.running.discard(request_id)

    def took(self, sink: OutputSink | None, out: EngineOutput) -> bool:
        """Whether `sink` took `out` (offered as vLLM offers: never an answer's last output)."""
        if sink is None or not self.offer or out.finish_reason is not None or not sink(out):
            return False
        self.taken += 1
        return True

    def _cached(self, prompt: list[int], block: int = 16) -> int:
        longest = 0
        for earlier in self.prompts:
            common = next((i for i, (a, b) in enumerate(zip(prompt, earlier, strict=False)) if a != b), None)
            longest = max(longest, min(len(prompt), len(earlier)) if common is None else common)
        return min(longest, len(prompt) - 1) // block * block

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    def is_healthy(self) -> bool:
        return self.started and not self.dead

    def num_unfinished(self) -> int:
        return len(self.running)

    def stats(self) -> EngineStats | None:
        return EngineStats(running=len(self.running), waiting=0, kv_cache_usage=None)


class PacedEngine:
    """A real engine whose tokens reach the gateway no faster than one per `interval` seconds.

    The tiny test model streams hundreds of tokens a second per user while vLLM's
    worker holds a core; a browser's renderer on the other core can then be starved
    and read a whole answer at once. Real models stream at tens of tokens a second
    per user: browser tests pace the real engine to that, so they see what users see.

    The pace is per token, not per output: while this consumer sleeps, vLLM merges
    the tokens that arrive into one output (DELTA), so pacing outputs let a loaded
    machine's answer of 900 tokens end in a few seconds, too fast for a browser test
    to see it streaming (issue 13, the intermittent page tests).
    """

    def __init__(self, engine: Engine, interval: float) -> None:
        self._engine = engine
        self.interval = interval
        self.model_name = engine.model_name
        # When `hold` is an unset Event, a generation waits on it once it has sent `hold_after`
        # tokens: a test sees the answer mid-stream whatever the machine's load.
        self.hold: asyncio.Event | None = None
        self.hold_after = 0

    @property
    def max_model_len(self) -> int:
        return self._engine.max_model_len

    @property
    def tokenizer(self) -> Tokenizer:
        return self._engine.tokenizer

    async def start(self) -> None:
        await self._engine.start()

    async def stop(self) -> None:
        await self._engine.stop()

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions, sink: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        # No sink: its outputs wait out the pace in this task, so none could be taken at once.
        outputs = self._engine.generate(request_id, prompt_token_ids, options)
        sent = 0
        try:
            async for output in outputs:
                if output is ACCEPTED:  # no token: nothing to pace
                    yield output
                    continue
                await asyncio.sleep(self.interval * max(1, output.num_new_tokens))
                if self.hold is not None and sent >= self.hold_after:
                    await self.hold.wait()
                sent += output.num_new_tokens
                yield output
        finally:
            await outputs.aclose()

    async def abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    def is_healthy(self) -> bool:
        return self._engine.is_healthy()

    def num_unfinished(self) -> int:
        return self._engine.num_unfinished()

    def stats(self) -> EngineStats | None:
        return self._engine.stats()


class AwayStore(MemoryStore):
    """A memory store whose writes fail while `away`, as Redis or a database that has gone away.

    `refuses` fails chosen writes while the store is otherwise up (a large write that times
    out where a small one a moment later goes through); `refused` counts the writes that failed.
    """

    away = False
    refuses: Callable[[Mapping[str, Any]], bool] | None = None
    refused = 0

    async def save(self, session_id: str, changed: Mapping[str, Any], removed: Iterable[str]) -> None:
        if self.away or (self.refuses is not None and self.refuses(changed)):
            self.refused += 1
            raise ConnectionError("the store went away")
        await super().save(session_id, changed, removed)

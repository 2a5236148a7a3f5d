"""Each output of one generation, from the engine to the connection: counted, spelled, written.

The runner's pump task reads the engine's stream and handles each output in
turn. An engine that can offer outputs to a sink (`Engine.generate`'s `sink`)
hands most of them to `TokenPath.take` instead, in the engine's own task, the
moment they exist: the token is counted and written to the connection there,
and the pump task is not woken at all. That is what makes a token cheap: one
wake-up of a task, resumed through its coroutine frames and suspended again,
costs about as much as the rest of the token's path in the gateway.

`take` only writes where a write cannot wait (`Stream.write_now`: the
connection takes the chunk now); everything else (a paused or slow client,
a keep-alive ping on its way, an answer's last output, the response's start)
stays with the pump, which may await.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import Send

from gateway.core.direct_send import DirectSend
from gateway.core.engine import EngineOutput
from gateway.core.generation import GenerationRequest, Outcome
from gateway.core.metrics import Metrics
from gateway.core.stream_format import StreamFormat


@dataclass(eq=False, slots=True)
class Stream:
    """The connection side of one generation: what was sent and when."""

    send: Send
    fmt: StreamFormat
    extra_headers: tuple[tuple[bytes, bytes], ...]
    direct: DirectSend | None = None  # the body's way past the middlewares (gateway.core.direct_send)
    write_now: Callable[[bytes], bool] | None = None  # the shortest of them, once the response started
    started: bool = False
    send_started_at: float | None = None
    last_send_at: float = 0.0
    closed: bool = False  # the client is gone: nothing more can be sent


class TokenPath:
    """Counts each output of one generation in its outcome and spells it; `take` also writes it."""

    __slots__ = ("gen", "held", "lock", "metrics", "outcome", "parked", "prompt_outputs", "stream")

    def __init__(self, metrics: Metrics, gen: GenerationRequest, outcome: Outcome, stream: Stream, lock: asyncio.Lock):
        self.metrics, self.gen, self.outcome, self.stream, self.lock = metrics, gen, outcome, stream, lock
        # Several prompts: each reports its own prompt length and cache hits (one prompt: no dict
        # on the token path).
        self.prompt_outputs: dict[int, EngineOutput] | None = {} if gen.extra_prompts else None
        # The pump waits for the engine's next output, with nothing of its own to do: only then
        # may `take` handle one (else it would overtake what the pump is still sending).
        self.parked = False
        # What `take` spelled but the connection did not take at once: the pump sends it first.
        self.held: bytes | None = None

    def spell(self, out: EngineOutput, now: float) -> bytes:
        """Count `out` in the outcome and the metrics; what to send for it (b"": nothing)."""
        outcome, metrics = self.outcome, self.metrics
        if out.num_new_tokens:
            if outcome.first_token_at is None:
                outcome.first_token_at = now
                metrics.ttft.observe(now - self.gen.arrived_at)
            elif outcome.last_token_at is not None:
                metrics.itl.observe((now - outcome.last_token_at) / out.num_new_tokens, out.num_new_tokens)
            outcome.last_token_at = now
        prompt_outputs = self.prompt_outputs
        if prompt_outputs is None:
            outcome.count_prompt(out.num_prompt_tokens, out.num_cached_tokens, out.num_cache_write_tokens)
        else:
            prompt_outputs[out.prompt_index] = out
            outs = prompt_outputs.values()
            outcome.count_prompt(
                sum(o.num_prompt_tokens for o in outs),
                sum(o.num_cached_tokens for o in outs),
                sum(o.num_cache_write_tokens for o in outs),
            )
        outcome.completion_tokens += out.num_new_tokens
        if out.finish_reason is not None:
            outcome.finish_reason = out.finish_reason
        if out.text:
            outcome.text_parts.append(out.text)
        return self.stream.fmt.delta(out)

    def sent(self, now: float) -> None:
        """Everything spelled so far is on its way to the client."""
        self.stream.last_send_at = now
        self.outcome.parts_sent = len(self.outcome.text_parts)
        self.outcome.streamed = True

    def take(self, out: EngineOutput) -> bool:
        """The engine's sink: handle `out` here and now, or say False (the pump will)."""
        stream = self.stream
        write_now = stream.write_now
        if not self.parked or self.held is not None or write_now is None or stream.closed or self.lock.locked():
            return False
        now = time.monotonic()
        body = self.spell(out, now)
        if body:
            if write_now(body):
                self.sent(now)
            else:  # the client reads slower than the stream: the pump waits for it
                self.held = body
        return True

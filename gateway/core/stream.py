"""The connection side of one generation: its response's messages, and each output's way to it.

`Stream` sends what the runner decides (the status line once the first event
is ready, each event, a keep-alive comment, a refusal or an error event, the
end) and keeps what was sent and when, which the keep-alive task reads to cut
a client that stopped reading. Every one-off send is bounded by
`send_timeout`; a token's send is not (a timeout per token would cost more
than the send): the keep-alive task watches `send_started_at` instead.

`TokenPath` counts and spells each engine output. The runner's pump task reads
the engine's stream and handles each output in turn. An engine that can offer
outputs to a sink (`Engine.generate`'s `sink`) hands most of them to
`TokenPath.take` instead, in the engine's own task, the moment they exist: the
token is counted and written to the connection there, and the pump task is not
woken at all. That is what makes a token cheap: one wake-up of a task, resumed
through its coroutine frames and suspended again, costs about as much as the
rest of the token's path in the gateway. `take` only writes where a write
cannot wait (`Stream.write_now`: the connection takes the chunk now);
everything else (a paused or slow client, a keep-alive ping on its way, an
answer's last output, the response's start) stays with the pump, which may
await.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import Message, Send

from gateway.core.direct_send import DirectSend
from gateway.core.engine import EngineOutput
from gateway.core.errors import GatewayError, error_headers
from gateway.core.generation import GenerationRequest, Outcome
from gateway.core.metrics import Metrics
from gateway.core.stream_format import StreamFormat


class ClientGone(Exception):
    """The client stopped taking data (disconnected or too slow)."""


@dataclass(eq=False, slots=True)
class Stream:
    """The connection side of one generation: what was sent and when, and how to send more."""

    send: Send
    fmt: StreamFormat
    extra_headers: tuple[tuple[bytes, bytes], ...]
    send_timeout: float
    direct: DirectSend | None = None  # the body's way past the middlewares (gateway.core.direct_send)
    write_now: Callable[[bytes], bool] | None = None  # the shortest of them, once the response started
    started: bool = False
    send_started_at: float | None = None
    last_send_at: float = 0.0
    closed: bool = False  # the client is gone: nothing more can be sent
    # Held while the start or a keep-alive ping goes out; asyncio's costs nothing uncontended (anyio's
    # yields to the loop on every acquire, a task switch per token).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def body(self, body: bytes) -> None:
        """One event of the stream (the status line first, if it has not gone yet)."""
        if self.lock.locked() or not self.started:  # a keep-alive ping is on its way, or the start goes first
            async with self.lock:
                await self.start()
                await self.write(body)
            return
        # Without the lock (once per token it is a third of the send's own cost): while
        # `send_started_at` is set, the keep-alive task starts no ping.
        await self.write(body)

    async def write(self, body: bytes) -> None:
        write_now = self.write_now
        if write_now is not None and write_now(body):  # on the wire at once (gateway.core.direct_send)
            self.last_send_at = time.monotonic()
            return
        # No timeout scope per token (it would cost more than the send): the
        # keep-alive task watches `send_started_at` and cuts a stalled client.
        self.send_started_at = time.monotonic()
        try:
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
        except OSError as exc:
            raise ClientGone from exc
        self.send_started_at = None
        self.last_send_at = time.monotonic()

    async def start(self) -> None:
        # The status line waits for the first event, so anything that fails before
        # it (engine dead, a bad prompt) still gets a real status code.
        if self.started:
            return
        self.started = True
        headers = [*self.fmt.headers, *self.extra_headers]
        await self.send_once({"type": "http.response.start", "status": 200, "headers": headers})
        if self.direct is not None:  # every middleware has seen the start: the body goes straight down
            self.send, self.write_now = self.direct.send, self.direct.write

    async def send_once(self, message: Message) -> None:
        """A one-off send, bounded by `send_timeout`."""
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.send(message)
        except (TimeoutError, OSError) as exc:
            raise ClientGone from exc

    async def ping(self) -> None:
        """A keep-alive comment (after the status line), under the lock."""
        async with self.lock:
            await self.start()
            await self.send_once({"type": "http.response.body", "body": self.fmt.ping, "more_body": True})
            self.last_send_at = time.monotonic()

    async def end(self) -> None:
        """The response's end (a client gone meanwhile is no failure)."""
        try:
            await self.send_once({"type": "http.response.body", "body": b"", "more_body": False})
        except ClientGone:
            self.closed = True

    async def refuse(self, outcome: Outcome, err: GatewayError) -> None:
        """A refusal instead of a stream: its status and JSON body (nothing once the stream has started)."""
        outcome.status = err.status
        if self.started or self.closed:
            return
        self.started = True
        headers = [(b"content-type", b"application/json"), *self.extra_headers]
        headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(err).items()]
        try:
            await self.send_once({"type": "http.response.start", "status": err.status, "headers": headers})
            await self.send_once({"type": "http.response.body", "body": self.fmt.refusal(err)})
        except ClientGone:
            self.closed = True

    async def fail(self, outcome: Outcome, error: BaseException) -> None:
        """Tell the client the generation failed: an error event mid-stream, else a status."""
        err = error if isinstance(error, GatewayError) else GatewayError("the server failed to generate an answer")
        if not self.started:
            await self.refuse(outcome, err)
            return
        if self.closed or not self.fmt.streaming:
            return
        try:
            await self.send_once({"type": "http.response.body", "body": self.fmt.error(err), "more_body": False})
        except ClientGone:
            self.closed = True


class TokenPath:
    """Counts each output of one generation in its outcome and spells it; `take` also writes it."""

    __slots__ = ("gen", "held", "metrics", "outcome", "parked", "prompt_outputs", "stream")

    def __init__(self, metrics: Metrics, gen: GenerationRequest, outcome: Outcome, stream: Stream) -> None:
        self.metrics, self.gen, self.outcome, self.stream = metrics, gen, outcome, stream
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

    def _sent(self, now: float) -> None:
        """Everything spelled so far is on its way to the client."""
        self.stream.last_send_at = now
        self.outcome.parts_sent = len(self.outcome.text_parts)
        self.outcome.streamed = True

    def write_at_once(self, body: bytes, now: float) -> bool:
        """Put `body` on the connection now, without a coroutine, if it takes it (and no ping is on its way)."""
        write_now = self.stream.write_now
        if write_now is None or self.stream.lock.locked() or not write_now(body):
            return False
        self._sent(now)
        return True

    async def send(self, body: bytes) -> None:
        """Send `body` the stream's way, which waits for a slow client (and for a ping on its way)."""
        await self.stream.body(body)
        self._sent(self.stream.last_send_at)

    def take(self, out: EngineOutput) -> bool:
        """The engine's sink: handle `out` here and now, or say False (the pump will)."""
        stream = self.stream
        # Checked before the output is counted: what `take` declines, the pump counts.
        if not self.parked or self.held is not None or stream.closed:
            return False
        if stream.write_now is None or stream.lock.locked():
            return False
        now = time.monotonic()
        body = self.spell(out, now)
        if body and not self.write_at_once(body, now):  # the client reads slower than the stream
            self.held = body  # the pump waits for it
        return True

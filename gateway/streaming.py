"""One admitted generation, end to end: queue, stream, and finish exactly once.

Both APIs (`/chat_stream` and the OpenAI routes) run their generations here;
they differ only in how events are spelled (a `StreamFormat`) and in what they
record when the generation ends (`on_end`). Everything that must happen
exactly once (release the slot, abort the engine request, `on_end`, the
completion callback, metrics, the log line) happens in one `finally` that is
shielded from cancellation, so no way of ending can skip it.

Cancellation flows:
- the client disconnects: the watcher sees `http.disconnect` on `receive` and
  cancels the task group; the engine request is aborted in `finally`;
- the client stops reading: a send stalled longer than `send_timeout`
  counts as a disconnect (the keep-alive task watches for it);
- the server cancels the ASGI task (shutdown): `finally` still runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.abc
from starlette.requests import Request
from starlette.types import Message, Send

from gateway.access_log import mark_logged, request_id_of
from gateway.admission import AdmissionController, Ticket
from gateway.completion import CompletionCallback, CompletionState, fire_callback
from gateway.engine import Engine, EngineDead, SamplingOptions
from gateway.errors import EngineUnavailable, GatewayError, error_body, error_headers
from gateway.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Generation:
    """The state of one request's generation."""

    request_id: str
    route: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    arrived_at: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))
    admitted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    ended_at: float | None = None
    text_parts: list[str] = field(default_factory=list)
    sent_parts: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    engine_started: bool = False
    engine_finished: bool = False
    response_started: bool = False
    send_started_at: float | None = None
    last_send_at: float = 0.0
    deltas_sent: int = 0
    done_sent: bool = False
    client_gone: bool = False
    refusal: GatewayError | None = None
    error: BaseException | None = None
    status: int = 200
    state: CompletionState | None = None

    @property
    def text(self) -> str:
        """The whole answer the engine produced."""
        return "".join(self.text_parts)

    @property
    def sent_text(self) -> str:
        """The part of the answer the client has received."""
        return "".join(self.sent_parts)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrived_at


class StreamFormat(Protocol):
    """How one API spells its response."""

    streaming: bool
    headers: list[tuple[bytes, bytes]]
    ping: bytes

    def delta(self, gen: Generation, text: str) -> bytes: ...

    def done(self, gen: Generation) -> bytes: ...

    def error(self, gen: Generation, error: GatewayError) -> bytes: ...

    def refusal(self, error: GatewayError) -> bytes:
        """The JSON body of a refusal sent instead of a stream."""
        ...


@dataclass(frozen=True, slots=True)
class StreamLimits:
    queue_timeout: float
    send_timeout: float
    ping_interval: float


class _ClientGone(Exception):
    """The client stopped taking data (disconnected or too slow)."""


class GenerationRunner:
    """Runs generations against one engine under one admission controller."""

    def __init__(self, engine: Engine, admission: AdmissionController, metrics: Metrics, limits: StreamLimits) -> None:
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self.limits = limits

    async def run(
        self,
        request: Request,
        send: Send,
        gen: Generation,
        fmt: StreamFormat,
        on_end: Callable[[Generation], Awaitable[None]],
        callback: CompletionCallback | None,
    ) -> None:
        """Serve `gen` on this connection. `on_end` runs once, always; `callback` once if queued."""
        try:
            if not self.engine.is_healthy():
                raise EngineUnavailable("the engine is not available", retry_after=5)
            ticket = self.admission.enter()
        except GatewayError as refusal:
            gen.refusal, gen.status, gen.state = refusal, refusal.status, None
            self.metrics.rejections.labels(gen.route, refusal.type).inc()
            try:
                await on_end(gen)
            finally:
                await self._send_refusal(send, gen, fmt, refusal)
                self._log(request, gen)
            return

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch_disconnect, request, gen, tg.cancel_scope)
                await self._serve(ticket, gen, fmt, send, tg)
                tg.cancel_scope.cancel()
        except Exception as exc:  # a bug or an engine fault: report it, never raise into the server
            gen.error = _first_error(exc)
            logger.exception("request %s failed", gen.request_id)
            await self._send_failure(send, gen, fmt)
        finally:
            with anyio.CancelScope(shield=True):
                await self._finish(request, send, ticket, gen, on_end, callback)

    async def _serve(
        self, ticket: Ticket, gen: Generation, fmt: StreamFormat, send: Send, tg: anyio.abc.TaskGroup
    ) -> None:
        try:
            await ticket.wait(self.limits.queue_timeout)
        except GatewayError as err:  # queue timeout
            gen.error = err
            await self._send_refusal(send, gen, fmt, err)
            return
        gen.admitted_at = time.monotonic()
        self.metrics.queue_time.observe(ticket.queue_seconds)
        if not self.engine.is_healthy():
            gen.error = EngineUnavailable("the engine is not available", retry_after=5)
            await self._send_refusal(send, gen, fmt, gen.error)
            return

        # asyncio's Lock costs nothing uncontended; anyio's yields to the loop on
        # every acquire, which is a task switch per token.
        lock = asyncio.Lock()
        tg.start_soon(self._keep_alive, send, gen, fmt, lock, tg.cancel_scope)
        try:
            await self._pump(gen, fmt, send, lock)
        except _ClientGone:
            gen.client_gone = True

    async def _pump(self, gen: Generation, fmt: StreamFormat, send: Send, lock: asyncio.Lock) -> None:
        metrics = self.metrics
        gen.engine_started = True
        try:
            async with aclosing(self.engine.generate(gen.request_id, gen.prompt_token_ids, gen.options)) as outputs:
                async for out in outputs:
                    now = time.monotonic()
                    if out.num_new_tokens:
                        if gen.first_token_at is None:
                            gen.first_token_at = now
                            metrics.ttft.observe(now - gen.arrived_at)
                        elif gen.last_token_at is not None:
                            gap = (now - gen.last_token_at) / out.num_new_tokens
                            for _ in range(out.num_new_tokens):
                                metrics.itl.observe(gap)
                        gen.last_token_at = now
                    gen.prompt_tokens = out.num_prompt_tokens
                    gen.completion_tokens += out.num_new_tokens
                    if out.finish_reason is not None:
                        gen.finish_reason = out.finish_reason
                        gen.engine_finished = True
                    if out.text:
                        gen.text_parts.append(out.text)
                        if fmt.streaming:
                            await self._send_body(send, gen, fmt, lock, fmt.delta(gen, out.text))
                            gen.sent_parts.append(out.text)
                            gen.deltas_sent += 1
        except EngineDead:
            gen.error = EngineUnavailable("the engine stopped while generating this answer", retry_after=5)
            await self._send_failure(send, gen, fmt)
            return
        # The response stays open until _finish has run on_end (see there).
        await self._send_body(send, gen, fmt, lock, fmt.done(gen))
        if not fmt.streaming:
            gen.sent_parts = list(gen.text_parts)
        gen.done_sent = True

    async def _send_body(
        self, send: Send, gen: Generation, fmt: StreamFormat, lock: asyncio.Lock, body: bytes, last: bool = False
    ) -> None:
        async with lock:
            await self._start(send, gen, fmt)
            # No timeout scope per token (it would cost more than the send): the
            # keep-alive task watches `send_started_at` and cuts a stalled client.
            gen.send_started_at = time.monotonic()
            try:
                await send({"type": "http.response.body", "body": body, "more_body": not last})
            except OSError as exc:
                raise _ClientGone from exc
            gen.send_started_at = None
            gen.last_send_at = time.monotonic()

    async def _start(self, send: Send, gen: Generation, fmt: StreamFormat) -> None:
        # The status line waits for the first event, so anything that fails before
        # it (engine dead, a bad prompt) still gets a real status code.
        if gen.response_started:
            return
        gen.response_started = True
        headers = fmt.headers + gen.extra_headers
        await self._send(send, {"type": "http.response.start", "status": 200, "headers": headers})

    async def _send(self, send: Send, message: Message) -> None:
        """A one-off send, bounded by `send_timeout`."""
        try:
            with anyio.fail_after(self.limits.send_timeout):
                await send(message)
        except (TimeoutError, OSError) as exc:
            raise _ClientGone from exc

    async def _keep_alive(
        self, send: Send, gen: Generation, fmt: StreamFormat, lock: asyncio.Lock, scope: anyio.CancelScope
    ) -> None:
        """Cut a client that stopped reading; send keep-alive comments while the stream is quiet.

        Keep-alive comments stop load balancers cutting a stream whose prefill is long.
        """
        limits = self.limits
        tick = min(limits.ping_interval, limits.send_timeout) / 4
        gen.last_send_at = time.monotonic()
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            if gen.send_started_at is not None and now - gen.send_started_at > limits.send_timeout:
                gen.client_gone = True
                scope.cancel()
                return
            if fmt.streaming and not lock.locked() and now - gen.last_send_at >= limits.ping_interval:
                try:
                    async with lock:
                        await self._start(send, gen, fmt)
                        await self._send(send, {"type": "http.response.body", "body": fmt.ping, "more_body": True})
                        gen.last_send_at = time.monotonic()
                except _ClientGone:
                    gen.client_gone = True
                    scope.cancel()
                    return

    async def _watch_disconnect(self, request: Request, gen: Generation, scope: anyio.CancelScope) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gen.client_gone = True
                scope.cancel()
                return

    async def _send_refusal(self, send: Send, gen: Generation, fmt: StreamFormat, err: GatewayError) -> None:
        gen.status = err.status
        if gen.response_started or gen.client_gone:
            return
        gen.response_started = True
        headers = [(b"content-type", b"application/json"), *gen.extra_headers]
        headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(err).items()]
        try:
            await self._send(send, {"type": "http.response.start", "status": err.status, "headers": headers})
            await self._send(send, {"type": "http.response.body", "body": fmt.refusal(err)})
        except _ClientGone:
            gen.client_gone = True

    async def _send_failure(self, send: Send, gen: Generation, fmt: StreamFormat) -> None:
        """Tell the client the generation failed: an error event mid-stream, else a status."""
        err = (
            gen.error
            if isinstance(gen.error, GatewayError)
            else GatewayError("the server failed to generate an answer")
        )
        if not gen.response_started:
            await self._send_refusal(send, gen, fmt, err)
            return
        if gen.client_gone or not fmt.streaming:
            return
        try:
            with anyio.CancelScope(shield=True):
                await self._send(send, {"type": "http.response.body", "body": fmt.error(gen, err), "more_body": False})
        except _ClientGone:
            gen.client_gone = True

    async def _finish(
        self,
        request: Request,
        send: Send,
        ticket: Ticket,
        gen: Generation,
        on_end: Callable[[Generation], Awaitable[None]],
        callback: CompletionCallback | None,
    ) -> None:
        ticket.release()
        gen.ended_at = time.monotonic()
        if gen.engine_started and not gen.engine_finished:
            try:
                await self.engine.abort(gen.request_id)
            except Exception:
                logger.exception("aborting request %s failed", gen.request_id)
        gen.state = _state_of(gen)
        try:
            await on_end(gen)
        except Exception:
            logger.exception("finishing request %s failed", gen.request_id)
        if gen.done_sent:
            # The response ends only after on_end saved the conversation and released
            # its lock, so a client that sends its next turn as soon as this response
            # is complete never finds the conversation still busy (409).
            try:
                await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
            except _ClientGone:
                gen.client_gone = True
        m = self.metrics
        m.requests.labels(gen.route, gen.state.value).inc()
        m.e2e.observe(gen.ended_at - gen.arrived_at)
        m.prompt_tokens.inc(gen.prompt_tokens)
        m.generation_tokens.inc(gen.completion_tokens)
        await fire_callback(callback, request, gen.state)
        self._log(request, gen)

    def _log(self, request: Request, gen: Generation) -> None:
        # This is the request's one access-log line: the access middleware skips it.
        mark_logged(request.scope)
        ended = gen.ended_at or time.monotonic()
        ttft = gen.ttft
        logger.info(
            "request %s generation=%s route=%s state=%s status=%d ttft=%s prompt_tokens=%d completion_tokens=%d "
            "duration=%.3fs",
            request_id_of(request.scope) or "-",
            gen.request_id,
            gen.route,
            gen.state.value if gen.state else "refused",
            gen.status,
            "-" if ttft is None else f"{ttft:.3f}s",
            gen.prompt_tokens,
            gen.completion_tokens,
            ended - gen.arrived_at,
        )


def _first_error(exc: BaseException) -> BaseException:
    # The task group wraps what the stream raised in an ExceptionGroup; unwrapped,
    # a GatewayError from the engine (a request vLLM rejects: 400) keeps its status.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _state_of(gen: Generation) -> CompletionState:
    if gen.done_sent:
        return CompletionState.SUCCESS
    # A refusal sent after queueing (queue timeout, engine gone) completes the
    # response, and the server then reports `http.disconnect`: that is not a client leaving.
    if gen.client_gone and gen.error is None:
        if gen.deltas_sent:
            return CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING
        return CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING
    return CompletionState.UNKNOWN_ERROR_OCCURRED


def json_refusal(err: GatewayError) -> bytes:
    """The gateway's own refusal body, `{"error": {"type", "message"}}`."""
    return json.dumps(error_body(err)).encode()

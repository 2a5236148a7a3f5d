"""One admitted generation, end to end: queue, stream, and finish exactly once.

Both APIs run their generations here; they differ only in how events are
spelled (a `StreamFormat`) and in what they record when the generation ends
(`on_end`). Everything that must happen exactly once (release the slot, abort
the engine request, `on_end`, the completion callback, metrics, the log line)
happens in one `finally` that is shielded from cancellation, so no way of
ending can skip it.

An admitted generation is served by a task of its own (`Serving`), beside two
small ones: one watches `receive` for the client's disconnect, one sends
keep-alive comments. They are plain asyncio tasks, not an anyio task group:
per request, a task group and its cancel scopes cost about a microsecond per
streamed token of a typical answer, a tenth of the gateway's own share.

Cancellation flows (each cuts the serving task through `Serving.cut`, which
never cuts a store write or the finish halfway):
- the client disconnects: the watcher sees `http.disconnect` on `receive` and
  cuts the stream; the engine request is aborted in `finally`;
- the client stops reading: a send stalled longer than `send_timeout`
  counts as a disconnect (the keep-alive task watches for it);
- the server cancels the ASGI task (shutdown): the stream is cut, and the
  request's task waits for `finally` to have run before it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import Send

from gateway.core.admission import CLAIM_STATE
from gateway.core.claims import Admission, Claim
from gateway.core.completion import CompletionCallback, CompletionState, fire_callback
from gateway.core.direct_send import direct_send
from gateway.core.engine import ACCEPTED, Engine, EngineDead
from gateway.core.errors import EngineUnavailable, GatewayError
from gateway.core.generation import GenerationRequest, Outcome
from gateway.core.metrics import Metrics
from gateway.core.outputs import generation_outputs
from gateway.core.principal import ANONYMOUS
from gateway.core.request_log import mark_logged, request_id_of
from gateway.core.stream import ClientGone, Stream, TokenPath
from gateway.core.stream_format import StreamFormat, StreamLimits

logger = logging.getLogger(__name__)

OnEnd = Callable[[Outcome], Awaitable[None]]
OnStart = Callable[[], Awaitable[None]]


@dataclass(eq=False, slots=True)
class Serving:
    """The tasks that serve one admitted generation, and when the stream may be cut."""

    task: asyncio.Task[None] | None = None  # serves the generation, then finishes it
    watcher: asyncio.Task[None] | None = None  # watches for the client's disconnect
    keeper: asyncio.Task[None] | None = None  # keep-alive comments; cuts a client that stopped reading
    # False until the task runs, and while a store write or the finish runs: a task cancelled
    # before it starts would skip its `finally`, and neither a store write nor the finish is
    # ever cut halfway.
    cuttable: bool = False
    cut_asked: bool = False

    def cut(self) -> None:
        """Stop the stream (the client left, or the server is shutting down)."""
        self.cut_asked = True
        if self.cuttable and self.task is not None:
            self.task.cancel()

    def hold_cuts(self) -> None:
        self.cuttable = False

    def allow_cuts(self) -> None:
        """From now on a cut stops the stream; one asked meanwhile stops it now."""
        self.cuttable = True
        if self.cut_asked:
            raise asyncio.CancelledError

    def stop_helpers(self) -> None:
        for helper in (self.watcher, self.keeper):
            if helper is not None:
                helper.cancel()
        # A cancelled helper keeps its CancelledError, whose traceback keeps the helper's
        # frame, which keeps this Serving: holding the helpers here would close a reference
        # cycle that keeps the request's every object until the collector's next full pass.
        self.watcher = self.keeper = None


class GenerationRunner:
    """Runs generations against one engine under one admission controller."""

    def __init__(self, engine: Engine, admission: Admission, metrics: Metrics, limits: StreamLimits) -> None:
        self.engine = engine
        self.admission = admission
        self.metrics = metrics
        self.limits = limits

    async def run(
        self,
        request: Request,
        send: Send,
        gen: GenerationRequest,
        fmt: StreamFormat,
        on_end: OnEnd,
        callback: CompletionCallback | None,
        *,
        on_start: OnStart | None = None,
        on_complete: OnEnd | None = None,
    ) -> None:
        """Serve `gen` on this connection. `on_end` runs once, always; `callback` once if queued.

        `on_start` runs once the generation holds its slot, before the engine has it (a
        background response is stored `in_progress` there); a generation that never gets
        its slot never runs it. `on_complete` runs once the engine has finished and the
        client has every output, before the format's `done` tells the client the answer is
        complete: what must hold by then (the conversation saved). A GatewayError it raises
        is what the client is told instead (an error event), and the generation ends as an
        error.
        """
        outcome = Outcome()
        stream = Stream(send, fmt, gen.headers, self.limits.send_timeout, direct_send(request.scope))
        # The admission middleware claimed a place on arrival; without it (a library
        # user's own app) the claim is made here, for one anonymous user.
        claim: Claim | None = request.scope.get("state", {}).pop(CLAIM_STATE, None)
        user_class = (claim.principal if claim is not None else ANONYMOUS).user_class
        try:
            ticket = await self._admit(claim, gen)
        except GatewayError as refusal:
            outcome.status = refusal.status  # known to on_end, which runs before the refusal is sent
            self.metrics.count_refusal(gen.route, refusal, user_class)
            try:
                await on_end(outcome)
            finally:
                await stream.refuse(outcome, refusal)
                self._log(request, gen, outcome)
            return

        serving = Serving()
        # The stream runs in a task of its own, not in the request's task: every token
        # wakes the task that waits for it, and a wake-up resumes each coroutine frame
        # it is suspended in. The request's task sits under the whole middleware and
        # routing stack (about twenty frames); a task of its own, under three.
        serving.task = task = asyncio.create_task(
            self._serve_and_finish(
                request, ticket, gen, outcome, stream, serving, on_start, on_complete, on_end, callback
            )
        )
        serving.watcher = asyncio.create_task(self._watch_disconnect(request, stream, outcome, serving))
        try:
            # Shielded: only `Serving.cut` cancels the serving task, so its finish is never cut.
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            serving.cut()  # the server cancelled the request (shutdown): the stream stops, the finish runs
            while not task.done():
                try:
                    await asyncio.shield(task)
                except asyncio.CancelledError:
                    continue
            raise

    async def _serve_and_finish(
        self,
        request: Request,
        ticket: Claim,
        gen: GenerationRequest,
        outcome: Outcome,
        stream: Stream,
        serving: Serving,
        on_start: OnStart | None,
        on_complete: OnEnd | None,
        on_end: OnEnd,
        callback: CompletionCallback | None,
    ) -> None:
        try:
            serving.allow_cuts()
            await self._serve(ticket, gen, outcome, stream, serving, on_start, on_complete)
        except asyncio.CancelledError:
            # Cut (see `Serving.cut`); whoever cut recorded why (a server's cancel records
            # nothing: the finish records an error).
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
        except Exception as error:  # a bug or an engine fault: report it, never raise into the server
            outcome.fail(error)
            if isinstance(error, GatewayError) and error.status < 500:  # the engine refused the request: no fault
                logger.info("request %s refused by the engine: %s", gen.request_id, error)
            else:
                logger.exception("request %s failed", gen.request_id)
            try:
                await stream.fail(outcome, error)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
        finally:
            serving.hold_cuts()
            serving.stop_helpers()
            await self._finish(request, ticket, gen, outcome, stream, on_end, callback)

    async def _admit(self, claim: Claim | None, gen: GenerationRequest) -> Claim:
        """Confirm the claim with the request's token cost (claiming first if there is none)."""
        ticket = claim
        try:
            if not self.engine.is_healthy():
                raise EngineUnavailable("the engine is not available", retry_after=5)
            if ticket is None:
                ticket = await self.admission.aclaim()
            await ticket.aconfirm(*gen.token_cost(), gen.priority, gen.user)
        except BaseException:
            if ticket is not None:
                ticket.release()
            raise
        return ticket

    async def _serve(
        self,
        ticket: Claim,
        gen: GenerationRequest,
        outcome: Outcome,
        stream: Stream,
        serving: Serving,
        on_start: OnStart | None,
        on_complete: OnEnd | None,
    ) -> None:
        user_class = ticket.principal.user_class
        try:
            await ticket.wait(self.limits.queue_timeout)
        except GatewayError as err:  # queue timeout, or displaced by a lighter user
            self.metrics.class_rejections.labels(user_class, err.type).inc()
            outcome.fail(err)
            await stream.refuse(outcome, err)
            return
        outcome.admitted_at = time.monotonic()
        self.metrics.queue_time.observe(ticket.queue_seconds)
        self.metrics.class_queue_time.labels(user_class).observe(ticket.queue_seconds)
        if not self.engine.is_healthy():
            gone = EngineUnavailable("the engine is not available", retry_after=5)
            outcome.fail(gone)
            await stream.refuse(outcome, gone)
            return
        if on_start is not None:
            serving.hold_cuts()  # a store write under a lock: never cut halfway
            await on_start()
            serving.allow_cuts()

        serving.keeper = asyncio.create_task(self._keep_alive(stream, outcome, serving))
        try:
            if await self._pump(gen, outcome, stream):
                await self._complete(gen, outcome, stream, serving, on_complete)
        except ClientGone:
            stream.closed = True
            outcome.client_left()

    async def _pump(self, gen: GenerationRequest, outcome: Outcome, stream: Stream) -> bool:
        """Stream the engine's outputs to the client; True if the engine finished the generation."""
        fmt = stream.fmt
        outcome.engine_started = True
        path = TokenPath(self.metrics, gen, outcome, stream)
        # Only a connection that can take a chunk at once lets the engine's task write tokens.
        sink = path.take if stream.direct is not None and stream.direct.write is not None else None
        try:
            async with aclosing(generation_outputs(self.engine, gen, sink)) as outputs:
                async for out in outputs:
                    path.parked = False
                    if path.held is not None:  # spelled by the sink, not yet taken by the connection
                        body, path.held = path.held, None
                        await path.send(body)
                    if out is ACCEPTED:  # the engine took the request: a refusal can no longer come
                        opening = fmt.opening()
                        if opening:
                            await stream.body(opening)
                        path.parked = True
                        continue
                    now = time.monotonic()
                    body = path.spell(out, now)
                    # Most tokens the pump handles go on the wire at once too, without a coroutine.
                    if body and not path.write_at_once(body, now):
                        await path.send(body)
                    path.parked = True
            # The stream ended by itself: every engine request of the generation has finished.
            outcome.engine_finished = True
        except EngineDead:
            err = EngineUnavailable("the engine stopped while generating this answer", retry_after=5)
            outcome.fail(err)
            await stream.fail(outcome, err)
            return False
        finally:
            path.parked = False  # whatever comes now is the pump's to send
        return True

    async def _complete(
        self, gen: GenerationRequest, outcome: Outcome, stream: Stream, serving: Serving, on_complete: OnEnd | None
    ) -> None:
        """The client has the whole answer: `on_complete`, then `done` (or what `on_complete` failed with)."""
        if on_complete is not None:
            serving.hold_cuts()  # a store write: never cut halfway
            try:
                await on_complete(outcome)
            except GatewayError as err:
                logger.warning("request %s: completing the answer failed: %s", gen.request_id, err)
                outcome.fail(err)
                await stream.fail(outcome, err)
                return
            serving.allow_cuts()
        # The response stays open until _finish has run on_end (see there).
        await stream.body(stream.fmt.done(outcome))
        outcome.parts_sent = len(outcome.text_parts)
        outcome.end(CompletionState.SUCCESS)

    async def _keep_alive(self, stream: Stream, outcome: Outcome, serving: Serving) -> None:
        """Cut a client that stopped reading; send keep-alive comments while the stream is quiet.

        Keep-alive comments stop load balancers cutting a stream whose prefill is long.
        """
        limits = self.limits
        tick = min(limits.ping_interval, limits.send_timeout) / 4
        stream.last_send_at = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if stream.send_started_at is not None and now - stream.send_started_at > limits.send_timeout:
                self._client_gone(stream, outcome, serving)
                return
            quiet = stream.send_started_at is None and not stream.lock.locked()
            if stream.fmt.streaming and quiet and now - stream.last_send_at >= limits.ping_interval:
                try:
                    await stream.ping()
                except ClientGone:
                    self._client_gone(stream, outcome, serving)
                    return

    async def _watch_disconnect(self, request: Request, stream: Stream, outcome: Outcome, serving: Serving) -> None:
        try:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    self._client_gone(stream, outcome, serving)
                    return
        except Exception as error:  # a broken `receive` (a middleware's): the stream cannot be watched
            logger.exception("watching request %s for a disconnect failed", request_id_of(request.scope) or "-")
            outcome.fail(error)
            serving.cut()

    @staticmethod
    def _client_gone(stream: Stream, outcome: Outcome, serving: Serving) -> None:
        stream.closed = True
        outcome.client_left()
        serving.cut()

    async def _finish(
        self,
        request: Request,
        ticket: Claim,
        gen: GenerationRequest,
        outcome: Outcome,
        stream: Stream,
        on_end: OnEnd,
        callback: CompletionCallback | None,
    ) -> None:
        ticket.release(outcome.completion_tokens)
        outcome.ended_at = time.monotonic()
        if outcome.engine_started and not outcome.engine_finished:
            for request_id, _, _ in gen.engine_requests():
                try:
                    await self.engine.abort(request_id)
                except Exception:
                    logger.exception("aborting request %s failed", request_id)
        # Nothing recorded an ending (e.g. the server cancelled the task): an error.
        outcome.end(CompletionState.UNKNOWN_ERROR_OCCURRED)
        state = outcome.state
        assert state is not None
        try:
            await on_end(outcome)
        except GatewayError as err:  # a store away: its failure is logged where it happened, by kind
            logger.warning("finishing request %s failed: %s", gen.request_id, err)
        except Exception:
            logger.exception("finishing request %s failed", gen.request_id)
        if state is CompletionState.SUCCESS:
            # The response ends only after on_end saved the conversation and released
            # its lock, so a client that sends its next turn as soon as this response
            # is complete never finds the conversation still busy (409).
            await stream.end()
        m = self.metrics
        m.requests.labels(gen.route, state.value).inc()
        m.e2e.observe(outcome.ended_at - gen.arrived_at)
        m.prompt_tokens.inc(outcome.prompt_tokens)
        m.generation_tokens.inc(outcome.completion_tokens)
        m.count_service(ticket.principal.user_class, outcome.prompt_tokens, outcome.completion_tokens)
        await fire_callback(callback, request, state)
        self._log(request, gen, outcome)

    def _log(self, request: Request, gen: GenerationRequest, outcome: Outcome) -> None:
        # This is the request's one access-log line: the access middleware skips it.
        mark_logged(request.scope)
        ended = outcome.ended_at or time.monotonic()
        ttft = outcome.ttft(gen.arrived_at)
        logger.info(
            "request %s generation=%s route=%s state=%s status=%d ttft=%s prompt_tokens=%d completion_tokens=%d "
            "duration=%.3fs",
            request_id_of(request.scope) or "-",
            gen.request_id,
            gen.route,
            outcome.state.value if outcome.state else "refused",
            outcome.status,
            "-" if ttft is None else f"{ttft:.3f}s",
            outcome.prompt_tokens,
            outcome.completion_tokens,
            ended - gen.arrived_at,
        )

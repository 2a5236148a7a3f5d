"""Background responses: `background: true` answers at once, and the generation runs on without its client.

The request's admission claim moves to the detached run (the admission
middleware releases only a claim still left in the request's state), which
holds it as any generation does: the same queue, fairness, completion states,
metrics and log line. The response is stored at once as `queued`; the client
polls `GET /v1/responses/{id}` and finds it `in_progress` once the run has
its slot and the engine has it (until then, waiting in the queue, it stays
`queued`), and then as it ended: `completed`, `incomplete`, `failed` or
`cancelled` (an answer the store did not take, too large for its record or
written while the store failed, is `failed`, saying so).

While it runs, the replica renews a lease in the record (`alive_until`, every
`poll` seconds, `lease` seconds ahead). A replica that died mid-run renews
nothing: the next read of the response on any replica finds the lease lapsed
and stores it `failed`, saying so, rather than leaving it queued for ever (but
for the replica that runs it, which knows it alive after an outage of the store
longer than the lease, and renews it). A
run that could store no ending at all (the store away until after it ended)
reads so too once its lease lapses: its renewals stop when it ends.

`POST /v1/responses/{id}/cancel` marks the stored response cancelled, under
the record's lock. The replica that runs the generation sees the mark at once
when it is the one cancelling, and otherwise by reading the record every
`poll` seconds; it then stops the generation as if its client had left (the
engine request is aborted, the slot freed). The record's lock also orders the
cancel and the run's own ending, so a cancelled response never turns
completed afterwards.

A streamed background response (`stream` too) keeps its events in a log on
the replica that runs it (event_log.py), which the POST's stream and any
`GET ...?stream=true` read; the log's last event is written once the run's
ending is stored, from the stored response, and the log is dropped
`log_keep` seconds after that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.types import Message

from gateway.core import Core, GenerationRequest, Outcome
from gateway.core.admission import CLAIM_STATE
from gateway.core.completion import CompletionCallback
from gateway.core.direct_send import DIRECT_SEND_STATE
from gateway.core.errors import BadChatRequest, GatewayError, SessionStoreUnavailable, SessionTooLarge
from gateway.core.stream_format import StreamFormat
from gateway.openai.event_log import EventLog
from gateway.openai.response_store import ResponseStore

logger = logging.getLogger(__name__)

ACTIVE = ("queued", "in_progress")
_DISCONNECT: Message = {"type": "http.disconnect"}


class BackgroundRuns:
    """The background generations this replica runs, and the cancel of any replica's."""

    def __init__(
        self,
        core: Core,
        store: ResponseStore,
        callback: CompletionCallback | None,
        *,
        poll: float = 1.0,
        lease: float = 10.0,
        log_keep: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.core = core
        self.store = store
        self.callback = callback
        self.poll = poll
        self.lease = lease  # wall-clock seconds, shared by replicas: far above their clocks' skew
        self.log_keep = log_keep  # seconds a streamed response's events stay readable after its run ended
        self.clock = clock
        self._logs: dict[str, EventLog] = {}
        self._cancels: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # a reference each: the loop keeps only weak ones

    def start(
        self,
        request: Request,
        gen: GenerationRequest,
        fmt: StreamFormat,
        on_complete: Callable[[Outcome], Awaitable[None]],
        on_end: Callable[[Outcome], Awaitable[None]],
        response_id: str,
        owner: str,
        log: EventLog | None = None,
    ) -> None:
        """Run `gen` detached from `request`, which gives its admission claim to the run.

        `on_complete` and `on_end` are the runner's (GenerationRunner.run): a completed run's
        record, stored before the stream's last event, and then a run's ending, always.

        `log`: a streamed response's events, which its format appends to; readable here until
        `log_keep` seconds after the run's ending is stored and written to it.
        """
        self._drop_old_logs()
        if log is not None:
            self._logs[response_id] = log
        state = request.scope.setdefault("state", {})
        # The request's state (its principal, id) without its connection's short way down.
        detached_state = {k: v for k, v in state.items() if k != DIRECT_SEND_STATE}
        detached_state[CLAIM_STATE] = state.pop(CLAIM_STATE, None)  # the run releases it, not the middleware
        cancelled = self._cancels[response_id] = asyncio.Event()

        async def receive() -> Message:
            """What the runner's disconnect watcher reads: a disconnect once the response is cancelled."""
            while not cancelled.is_set():
                try:
                    await asyncio.wait_for(cancelled.wait(), self.poll)
                except TimeoutError:
                    if await self._renew_unless_cancelled(response_id, owner):
                        cancelled.set()
            return _DISCONNECT

        async def discard(message: Message) -> None:
            """The run's HTTP messages: the stored response is its answer."""

        detached = Request({**request.scope, "state": detached_state}, receive)
        task = asyncio.create_task(self._run(detached, discard, gen, fmt, on_complete, on_end, response_id, owner, log))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        request: Request,
        send: Callable[[Message], Awaitable[None]],
        gen: GenerationRequest,
        fmt: StreamFormat,
        on_complete: Callable[[Outcome], Awaitable[None]],
        on_end: Callable[[Outcome], Awaitable[None]],
        response_id: str,
        owner: str,
        log: EventLog | None,
    ) -> None:
        async def started() -> None:
            await self._mark_started(response_id, owner)

        try:
            await self.core.run(
                request, send, gen, fmt, on_end, self.callback, on_start=started, on_complete=on_complete
            )
        except Exception:  # a bug: the runner has already ended the generation and recorded it
            logger.exception("a background response failed")
        finally:
            self._cancels.pop(response_id, None)
            if log is not None:
                log.finish(await self._ending(response_id, owner, log.response), self.clock())
                # Dropped by the next start or read after `log_keep`, or by this timer on an idle replica.
                asyncio.get_running_loop().call_later(self.log_keep + 1, self._drop_old_logs)

    async def _ending(self, response_id: str, owner: str, head: dict[str, Any]) -> dict[str, Any]:
        """How the run ended, as stored (by the run itself, or by a cancel or a lapsed lease before it)."""
        try:
            response: dict[str, Any] = (await self.store.response(response_id, owner))["response"]
            if response["status"] not in ACTIVE:
                return response
            message = "the response's ending was not stored"
        except GatewayError as err:  # deleted while it ran, or the store is away
            response, message = head, err.message
        return _failed(response, {"code": "server_error", "message": message})

    def log(self, response_id: str) -> EventLog | None:
        """The events of a streamed background response this replica runs or ran lately."""
        self._drop_old_logs()
        return self._logs.get(response_id)

    def _drop_old_logs(self) -> None:
        # Bounded so by the responses streamed within `log_keep`, each log by one response's events.
        now = self.clock()
        for response_id, log in list(self._logs.items()):
            if log.ended_at is not None and now - log.ended_at > self.log_keep:
                del self._logs[response_id]

    async def _mark_started(self, response_id: str, owner: str) -> None:
        """The run has its slot and hands the request to the engine: the stored response reads in_progress.

        Under the record's lock, so a cancel (or a lapsed lease's `failed`) stored meanwhile stands.
        Awaited before the engine starts, so the run's own ending is always stored after it.
        """
        try:
            async with self.store.locked_response(response_id, owner) as record:
                response: dict[str, Any] = record["response"]
                if record.get("cancelled") or response["status"] != "queued":
                    return
                started = {**response, "status": "in_progress"}
                await self.store.update_response(response_id, {"response": started, **self.lease_fields()})
        except GatewayError as err:  # deleted, or the store is away: the run goes on, its ending is stored
            logger.warning("background response %s: its start was not stored: %s", response_id, err.message)

    def lease_fields(self) -> dict[str, Any]:
        """What a running background response's record says about its run: alive until when."""
        return {"alive_until": self.clock() + self.lease}

    async def _renew_unless_cancelled(self, response_id: str, owner: str) -> bool:
        """True if the response was cancelled (on any replica); else the run's lease is renewed."""
        try:
            record = await self.store.response(response_id, owner)
            if not _running(record):
                return True
            await self.store.update_response(response_id, self.lease_fields())
        except GatewayError:  # deleted, or the store is away for now: cancelled only by an explicit mark
            return False
        return False

    async def current(self, response_id: str, owner: str, record: dict[str, Any]) -> dict[str, Any]:
        """The stored response, or `failed` if its run's lease has lapsed (the replica running it died).

        A lease that lapsed while this replica runs the response lapsed because the store
        took no renewals (an outage longer than the lease): the run is alive, and is renewed.
        """
        response: dict[str, Any] = record["response"]
        if response["status"] not in ACTIVE or record.get("alive_until", float("inf")) >= self.clock():
            return response
        if response_id in self._cancels:  # running here
            await self.store.update_response(response_id, self.lease_fields())
            return response
        async with self.store.locked_response(response_id, owner) as fresh:
            response = fresh["response"]
            if response["status"] in ACTIVE and fresh.get("alive_until", float("inf")) < self.clock():
                error = {"code": "server_error", "message": "the server running this response stopped before it ended"}
                response = _failed(response, error)
                await self.store.update_response(response_id, {"response": response})
        return response

    async def cancel(self, response_id: str, owner: str) -> dict[str, Any]:
        """Mark a running background response cancelled (on any replica); the response as stored now."""
        async with self.store.locked_response(response_id, owner) as record:
            response: dict[str, Any] = record["response"]
            if not response.get("background"):
                raise BadChatRequest("only background responses can be cancelled", param="response_id")
            if response["status"] not in ACTIVE:
                raise BadChatRequest(f"the response is already {response['status']}: it cannot be cancelled")
            response = {**response, "status": "cancelled"}
            await self.store.update_response(response_id, {"response": response, "cancelled": True})
        event = self._cancels.get(response_id)
        if event is not None:
            event.set()
        return response

    async def record_completed(
        self, response_id: str, owner: str, final: dict[str, Any], queued: dict[str, Any]
    ) -> bool:
        """Store the run's completed response, before its stream's last event says so.

        False if a cancel (or a lapsed lease) took the record first: that ending stands. If
        the store does not take the answer, the run is stored failed, saying why (a small
        write a moment later may go in where the answer did not; if not, the lease lapses
        all the same), and the store's error is raised: the run then ends as failed, for
        the callback, the metrics and the log as for the client.
        """
        async with self.store.locked_response(response_id, owner) as record:
            if not _running(record):
                return False
            try:
                await self.store.update_response(response_id, {"response": {**final, **_ending_fields()}})
            except (SessionTooLarge, SessionStoreUnavailable) as err:
                why = "is too large to store" if isinstance(err, SessionTooLarge) else "could not be stored"
                error = {"code": "server_error", "message": f"the response {why}: {err.message}"}
                failed = {**_failed(queued, error), **_ending_fields()}
                await self.store.update_response(response_id, {"response": failed})
                logger.warning("background response %s is stored failed: %s", response_id, error["message"])
                raise
        return True

    async def record_end(self, response_id: str, owner: str, outcome: Outcome, queued: dict[str, Any]) -> None:
        """Store a run that did not complete as failed, unless another ending was stored meanwhile.

        A completed run stored its ending already (`record_completed`); so did one whose
        answer the store refused, as failed.
        """
        try:
            async with self.store.locked_response(response_id, owner) as record:
                if _running(record):  # else cancelled, given up for dead, or stored failed already: that stands
                    failed = {**_failed(queued, _error(outcome)), **_ending_fields()}
                    await self.store.update_response(response_id, {"response": failed})
        except GatewayError as err:  # deleted while it ran, or the store is away: nothing to record into
            logger.warning("background response %s: its ending was not stored: %s", response_id, err.message)


def _ending_fields() -> dict[str, Any]:
    return {"background": True, "completed_at": int(time.time())}


def _running(record: dict[str, Any]) -> bool:
    """The stored response's run has not ended: neither cancelled nor given an ending."""
    return not record.get("cancelled") and record["response"]["status"] in ACTIVE


def _failed(response: dict[str, Any], error: dict[str, str]) -> dict[str, Any]:
    return {**response, "status": "failed", "error": error}


def _error(outcome: Outcome) -> dict[str, str]:
    error = outcome.error
    if isinstance(error, GatewayError):
        # OpenAI's codes: a request the engine refused (its checks of the parameters), or too much load.
        code = "server_error"
        if error.status == 429:
            code = "rate_limit_exceeded"
        elif 400 <= error.status < 500:
            code = "invalid_prompt"
        return {"code": code, "message": error.message}
    state = outcome.state.value if outcome.state is not None else "unknown"
    return {"code": "server_error", "message": f"the generation ended without an answer ({state})"}

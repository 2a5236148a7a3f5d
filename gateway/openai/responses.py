"""The Responses API: `POST /v1/responses`, and `GET`/`DELETE` of a stored response and its input items.

A request's stored chain (`previous_response_id`) or conversation, then its
new input, become chat messages, rendered by the chat route's frontend (the
same renderer, sampling and parsers) and run by `Core.run` (the same
admission, completion states, metrics and log line). The answer is stored
when the generation succeeds, before the response ends, so a client that
continues as soon as it has its answer always finds it, on any replica.

A chain longer than the model's context is cut for the engine at a turn,
oldest turns first (chain_window.py); what is stored stays whole. A
`background` response is stored at once as queued and runs detached
(background.py); streamed too, its answer is the stream of its run's events
(event_log.py), which `GET ...?stream=true&starting_after=N` reads again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import JSONResponse, Response

from gateway.core import Core, GenerationRequest, Outcome
from gateway.core.completion import CompletionState
from gateway.core.errors import BadChatRequest, GatewayError, SessionStoreUnavailable, SessionTooLarge
from gateway.http.auth import PRINCIPAL_STATE
from gateway.http.limits import read_body
from gateway.openai.background import BackgroundRuns
from gateway.openai.bodies import parse
from gateway.openai.chain_window import prepare_window
from gateway.openai.event_log import EventLog, LogStream
from gateway.openai.frontend import Prepared
from gateway.openai.response_items import input_items, item_list, new_id
from gateway.openai.response_store import ResponseStore
from gateway.openai.responses_format import ResponsesFormat
from gateway.openai.responses_request import PARAM_NAMES, ResponsesRequest, response_tools
from gateway.openai.routes import RESPONSES_DOC, GenerationResponse, OpenAIRoutes, generation_request, mount

logger = logging.getLogger(__name__)

RESPONSES_ROUTE = "v1/responses"


def owner_of(request: Request) -> str:
    """Whose records a request may see: its API key's user, or `anonymous` when the gateway has no keys."""
    principal = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    return "anonymous" if principal is None else str(principal.user)


class ResponsesRoutes:
    """Creates, reads and deletes responses; the generation itself runs on the core."""

    def __init__(self, routes: OpenAIRoutes, store: ResponseStore) -> None:
        self.routes = routes
        self.core: Core = routes.core
        self.store = store
        self.background = BackgroundRuns(self.core, store, routes.callback)

    async def create(self, request: Request) -> Response:
        arrived_at = time.monotonic()
        owner = owner_of(request)
        try:
            body = await read_body(request, self.core.config.max_body_bytes)
            req = parse(ResponsesRequest, body)
            req.check()
            new_items = input_items(req.input)
            conversation = req.conversation_id
            history: list[dict[str, Any]] = []
            if req.previous_response_id is not None:
                history = await self.store.chain(req.previous_response_id, owner)
            elif conversation is not None:
                history = (await self.store.conversation(conversation, owner))["items"]
            if not new_items and not history:
                raise BadChatRequest("input must not be empty", param="input")
            frontend = await self.routes.frontend()
            items = [*history, *new_items]
            prepared = await prepare_window(frontend, req, items, self.core.engine.max_model_len)
        except GatewayError as err:
            err.param = PARAM_NAMES.get(err.param or "", err.param)
            return self.routes.refuse(RESPONSES_ROUTE, err)
        except Exception:  # a bug: logged, and answered without its details
            logger.exception("preparing a %s request failed", RESPONSES_ROUTE)
            return self.routes.refuse(RESPONSES_ROUTE, GatewayError("the server failed to handle this request"))
        gen = generation_request(prepared, RESPONSES_ROUTE, "resp", arrived_at)
        head = _response_head(req, gen, prepared)
        fmt = ResponsesFormat(prepared.spec, prepared.prompts[0].token_ids, head)
        if not req.background:
            keep = self._keeper(fmt, req, owner, new_items, conversation)
            # Stored before `response.completed` (or the JSON body) says so: on a store that fails,
            # the client is told instead, and a response that did not complete continues nothing.
            return GenerationResponse(self.core, request, gen, fmt, _nothing, self.routes.callback, on_complete=keep)
        queued = {**head, "status": "queued"}
        try:
            lease = self.background.lease_fields()
            await self.store.save_response(queued, owner, new_items, req.previous_response_id, lease)
        except GatewayError as err:
            return self.routes.refuse(RESPONSES_ROUTE, err)
        on_complete, on_end = self._recorder(fmt, req, owner, new_items, conversation, queued=queued)
        if not req.stream:
            self.background.start(request, gen, fmt, on_complete, on_end, head["id"], owner)
            return JSONResponse(queued)
        fmt.log = EventLog(queued)
        fmt.queued()  # the stream opens at once with the id, as the stored response reads: queued
        self.background.start(request, gen, fmt, on_complete, on_end, head["id"], owner, fmt.log)
        return self._log_stream(fmt.log, -1)

    def _log_stream(self, log: EventLog, after: int) -> LogStream:
        config = self.core.config
        return LogStream(log, after, ping_interval=config.ping_interval, send_timeout=config.send_timeout)

    def _keeper(
        self,
        fmt: ResponsesFormat,
        req: ResponsesRequest,
        owner: str,
        new_items: list[dict[str, Any]],
        conversation: str | None,
    ) -> Callable[[Outcome], Awaitable[None]]:
        """What a completed response stores, before the client is told it is complete."""

        async def keep(outcome: Outcome) -> None:
            final = fmt.finish(outcome)
            try:
                if req.store:
                    try:
                        await self.store.save_response(final, owner, new_items, req.previous_response_id)
                    except SessionTooLarge as err:  # the client has its answer; only the record is missing
                        logger.warning("response %s was answered but not stored: %s", final["id"], err.message)
                if conversation is not None:
                    await self.store.append(conversation, owner, [*new_items, *final["output"]])
            except SessionStoreUnavailable as err:
                raise SessionStoreUnavailable(
                    f"this response may not have been stored: {err.message}", retry_after=err.retry_after
                ) from err

        return keep

    def _recorder(
        self,
        fmt: ResponsesFormat,
        req: ResponsesRequest,
        owner: str,
        new_items: list[dict[str, Any]],
        conversation: str | None,
        *,
        queued: dict[str, Any],
    ) -> tuple[Callable[[Outcome], Awaitable[None]], Callable[[Outcome], Awaitable[None]]]:
        """What the end of a background response stores (`queued`: as it was stored when it was queued).

        Two steps, as the runner takes them: a completed run's record (and its conversation's
        turn), stored before the stream's last event (`on_complete`; a store failure ends
        the run as failed); then, for a run that did not complete, its failure (`on_end`).
        """
        response_id = queued["id"]

        async def complete(outcome: Outcome) -> None:
            final = fmt.finish(outcome)
            if not await self.background.record_completed(response_id, owner, final, queued):
                return  # a cancel took the record first
            if conversation is not None:
                await self.store.append(conversation, owner, [*new_items, *final["output"]])

        async def record(outcome: Outcome) -> None:
            if outcome.state is not CompletionState.SUCCESS:
                await self.background.record_end(response_id, owner, outcome, queued)

        return complete, record

    async def get(self, request: Request, response_id: str) -> Response:
        owner = owner_of(request)
        try:
            record = await self.store.response(response_id, owner)  # unknown, or another key's: 404 first
            response = await self.background.current(response_id, owner, record)
            stream, after = _stream_params(request)
            if not stream:
                return JSONResponse(response)
            log = self.background.log(response_id)
            if log is None:
                raise BadChatRequest(
                    "this server keeps no events of this response: only a streamed background response's "
                    f"events are kept, by the server that runs it, until {self.background.log_keep:g} s after "
                    "it ends; GET /v1/responses/{id} without stream returns the response",
                    param="stream",
                )
        except GatewayError as err:
            return self.routes.refuse("v1/responses/{id}", err)
        return self._log_stream(log, after)

    async def delete(self, request: Request, response_id: str) -> Response:
        try:
            await self.store.delete_response(response_id, owner_of(request))
        except GatewayError as err:
            return self.routes.refuse("v1/responses/{id}", err)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, request: Request, response_id: str) -> Response:
        try:
            record = await self.store.response(response_id, owner_of(request))
            page = item_list(record["input"], request.query_params)
        except GatewayError as err:
            return self.routes.refuse("v1/responses/{id}/input_items", err)
        return JSONResponse(page)

    async def cancel(self, request: Request, response_id: str) -> Response:
        try:
            response = await self.background.cancel(response_id, owner_of(request))
        except GatewayError as err:
            return self.routes.refuse("v1/responses/{id}/cancel", err)
        return JSONResponse(response)


_BOOL, _INT = TypeAdapter(bool), TypeAdapter(int)


def _stream_params(request: Request) -> tuple[bool, int]:
    """`stream` and `starting_after` of `GET /v1/responses/{id}` (-1: from the first event), read as vLLM's
    server reads them (FastAPI's query parameters, i.e. pydantic's lax bool and int)."""
    params = request.query_params
    try:
        stream = _BOOL.validate_python(params.get("stream", False))
    except ValidationError:
        raise BadChatRequest("stream must be true or false", param="stream") from None
    try:
        after = _INT.validate_python(params.get("starting_after", -1))
    except ValidationError:
        raise BadChatRequest("starting_after must be an integer (a sequence number)", param="starting_after") from None
    return stream, after


def _response_head(req: ResponsesRequest, gen: GenerationRequest, prepared: Prepared) -> dict[str, Any]:
    """The response object's fields that the request decides (the answer adds output, status and usage)."""
    head: dict[str, Any] = {
        "id": new_id("resp"),
        "object": "response",
        "created_at": gen.created,
        "status": "in_progress",
        "background": req.background,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": prepared.spec.model,
        "output": [],
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        "reasoning": None,
        "store": req.store,
        "temperature": req.temperature,
        "text": {"format": req.text_format},
        "tool_choice": "auto" if req.tool_choice is None else req.tool_choice,
        "tools": response_tools(req),
        "top_p": req.top_p,
        "truncation": req.truncation or "auto",
        "metadata": req.metadata or {},
    }
    if req.user is not None:
        head["user"] = req.user
    if req.conversation_id is not None:
        head["conversation"] = {"id": req.conversation_id}
    return head


def add_responses_routes(app: FastAPI, routes: OpenAIRoutes, store: ResponseStore) -> ResponsesRoutes:
    """Mount `/v1/responses` and its stored-response routes on `app`."""
    responses = ResponsesRoutes(routes, store)

    one = "/v1/responses/{response_id}"
    mount(
        app,
        [
            ("GET", one, responses.get),
            ("DELETE", one, responses.delete),
            ("GET", one + "/input_items", responses.input_items),
            ("POST", one + "/cancel", responses.cancel),
        ],
        generations=[("/v1/responses", responses.create, RESPONSES_DOC)],
    )
    return responses


async def _nothing(outcome: Outcome) -> None:
    """The end of a response that is not in the background: a completed one was stored before it."""

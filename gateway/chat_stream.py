"""ChatStream: the `/chat_stream` endpoint and its helpers, in one object.

`await chat_stream.handle_chat_stream_request(request)` inside any Starlette or
FastAPI route is a complete streaming chat endpoint: it continues the
session's conversation, waits for an admission slot, streams the answer as
Server-Sent Events and reports how the stream ended through `callback`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from gateway import sse
from gateway.admission import AdmissionController
from gateway.completion import CompletionCallback
from gateway.conversations import Conversation, ConversationHandler, SessionConversations
from gateway.engine import Engine, SamplingOptions
from gateway.errors import BadChatRequest, BodyTooLarge, GatewayError, InvalidBody, error_response
from gateway.metrics import Metrics
from gateway.streaming import Generation, GenerationRunner, StreamLimits, json_refusal
from prompts import ChatPrompt, FormatName, TurnTooLong

logger = logging.getLogger(__name__)

ROUTE = "chat_stream"


class ChatStreamBody(BaseModel):
    """The JSON body of `POST /chat_stream`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_input: str = ""
    regenerate: bool = False

    @field_validator("user_input")
    @classmethod
    def _utf8_encodable(cls, value: str) -> str:
        # JSON can spell lone surrogates ("\ud800"): no tokenizer, store or UTF-8
        # response can carry them, so they are refused here rather than failing later.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (it contains a lone surrogate)") from None
        return value


class GenerationParams(BaseModel):
    """Per-session sampling settings; unset fields keep the server's defaults."""

    # strict: `true` is not a temperature, nor "0.5" (the schema fuzzer found both accepted)
    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1000)
    max_new_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)


def _range_of(name: str) -> list[Any]:
    """A GenerationParams field's [lowest, highest] value, read from its constraints (None: unbounded)."""
    low: Any = None
    high: Any = None
    for constraint in GenerationParams.model_fields[name].metadata:
        low = getattr(constraint, "ge", getattr(constraint, "gt", low))
        high = getattr(constraint, "le", high)
    return [low, high]


def describe_validation_error(err: ValidationError) -> str:
    """A client-facing summary of what is wrong, without echoing the input."""
    parts = []
    for e in err.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)


class _ChatSSE:
    """The `/chat_stream` spelling of a generation (see sse.py)."""

    streaming = True
    headers = sse.SSE_HEADERS
    ping = sse.PING

    def delta(self, gen: Generation, text: str) -> bytes:
        return sse.delta_event(text)

    def done(self, gen: Generation) -> bytes:
        return sse.done_event("success", gen.request_id, gen.finish_reason, gen.prompt_tokens, gen.completion_tokens)

    def error(self, gen: Generation, error: GatewayError) -> bytes:
        return sse.error_event(error.type, error.message)

    def refusal(self, error: GatewayError) -> bytes:
        return json_refusal(error)


class ChatStream:
    """A streaming chat service over one inference engine.

    Give it `model` (a directory or model id, served by vLLM with `engine_args`
    passed to vLLM's AsyncEngineArgs) or `engine` (anything that meets
    `gateway.engine.Engine`). Use `lifespan` as the app's lifespan so the
    engine starts and stops with it.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        engine: Engine | None = None,
        engine_args: Mapping[str, Any] | None = None,
        num_of_concurrent_executions: int = 32,
        max_queue_size: int = 128,
        queue_timeout: float = 60.0,
        max_new_tokens: int = 256,
        chat_prompt_clazz: type[ChatPrompt] = ChatPrompt,
        system_prompt: str | None = None,
        prompt_format: FormatName = "template",
        temperature: float = 0.7,
        top_p: float = 0.95,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        ignore_eos: bool = False,
        max_input_chars: int = 32_000,
        max_history_messages: int = 1000,
        max_body_bytes: int = 256 * 1024,
        send_timeout: float = 30.0,
        ping_interval: float = 15.0,
        metrics: Metrics | None = None,
        conversations: ConversationHandler | None = None,
    ) -> None:
        if (model is None) == (engine is None):
            raise ValueError("give ChatStream either model= or engine=")
        if engine is None:
            from gateway.vllm_engine import VLLMEngine  # vLLM is heavy: import it only when used

            engine = VLLMEngine(str(model), engine_args or {})
        self.engine: Engine = engine
        defaults = GenerationParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
        )
        self.default_params = defaults.model_dump()
        self.max_new_tokens = max_new_tokens
        self.ignore_eos = ignore_eos
        self.max_input_chars = max_input_chars
        if max_history_messages < 2:
            raise ValueError("max_history_messages must be at least 2 (the newest question and its answer)")
        # Trimming in render() bounds what the engine sees; this bounds what a session stores.
        self.max_history_messages = max_history_messages
        self.max_body_bytes = max_body_bytes
        self.chat_prompt_clazz = chat_prompt_clazz
        self.system_prompt = system_prompt
        self.prompt_format: FormatName = prompt_format
        self.admission = AdmissionController(num_of_concurrent_executions, max_queue_size)
        self.metrics = metrics or Metrics()
        self.metrics.watch(self.admission.load, self.engine.stats)
        self.runner = GenerationRunner(
            self.engine, self.admission, self.metrics, StreamLimits(queue_timeout, send_timeout, ping_interval)
        )
        self.conversations: ConversationHandler = conversations or SessionConversations(self.new_prompt)

    # --- life cycle ---------------------------------------------------------------

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start the engine for the app's lifetime (use as `FastAPI(lifespan=...)`)."""
        await self.engine.start()
        try:
            yield
        finally:
            await self.engine.stop()

    def new_prompt(self) -> ChatPrompt:
        return self.chat_prompt_clazz(system=self.system_prompt, format=self.prompt_format)

    # --- the endpoint -------------------------------------------------------------------

    async def handle_chat_stream_request(
        self, request: Request, request_body: bytes | str | None = None, callback: CompletionCallback | None = None
    ) -> Response:
        """Answer one `/chat_stream` request: an SSE stream, or a JSON error with a real status.

        Pass `request_body` when the endpoint has already read the body.
        `callback(request, message)` runs once when an admitted stream ends.
        """
        try:
            body = ChatStreamBody.model_validate(await self._read_json(request, request_body))
        except ValidationError as err:
            return self._refuse(InvalidBody(describe_validation_error(err)))
        except GatewayError as err:
            return self._refuse(err)
        if not body.regenerate:
            if not body.user_input.strip():
                return self._refuse(BadChatRequest("user_input must not be empty", param="user_input"))
            if len(body.user_input) > self.max_input_chars:
                return self._refuse(
                    BadChatRequest(f"user_input is longer than {self.max_input_chars} characters", param="user_input")
                )
        return _ChatStreamResponse(self, request, body, callback)

    def _refuse(self, err: GatewayError) -> Response:
        self.metrics.rejections.labels(ROUTE, err.type).inc()
        return error_response(err)

    async def _read_json(self, request: Request, request_body: bytes | str | None) -> Any:
        if request_body is None:
            request_body = await self.read_body(request)
        try:
            return json.loads(request_body)
        except (ValueError, TypeError):
            raise BadChatRequest("the body is not valid JSON") from None

    async def read_body(self, request: Request) -> bytes:
        """The request body, refusing (413) past `max_body_bytes` without reading the rest."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise BodyTooLarge(f"the body is larger than {self.max_body_bytes} bytes")
                chunks.append(chunk)
        except ClientDisconnect:
            raise BadChatRequest("the client disconnected while sending the body") from None
        return b"".join(chunks)

    def sampling_options(self, params: Mapping[str, Any], stop: tuple[str, ...]) -> SamplingOptions:
        merged = self._merged_params(params)
        return SamplingOptions(
            max_tokens=min(int(merged["max_new_tokens"]), self.max_new_tokens),
            temperature=float(merged["temperature"]),
            top_p=float(merged["top_p"]),
            top_k=int(merged["top_k"]),
            repetition_penalty=float(merged["repetition_penalty"]),
            stop=stop,
            ignore_eos=self.ignore_eos,
        )

    async def open_conversation(self, request: Request, *, lock: bool) -> Conversation:
        conversation = await self.conversations.open(request, lock=lock)
        conversation.prompt.bind(self.engine.tokenizer)
        return conversation

    # --- the helpers ------------------------------------------------------------------------

    async def handle_clear_context_request(self, request: Request) -> Response:
        """Forget the conversation (409 while a generation runs in it)."""
        try:
            conversation = await self.open_conversation(request, lock=True)
            try:
                await conversation.clear()
            finally:
                await conversation.close()
        except GatewayError as err:
            return error_response(err)
        return JSONResponse({"cleared": True})

    async def handle_get_prompt_request(self, request: Request) -> Response:
        """The conversation: its turns and the prompt text the model would see."""
        try:
            conversation = await self.open_conversation(request, lock=False)
        except GatewayError as err:
            return error_response(err)
        prompt = conversation.prompt
        return JSONResponse({"prompt": prompt.create_prompt(), "system": prompt.system, "messages": prompt.messages})

    async def handle_get_generation_params_request(self, request: Request) -> Response:
        """The session's generation parameters, with the server's defaults filled in."""
        try:
            conversation = await self.open_conversation(request, lock=False)
        except GatewayError as err:
            return error_response(err)
        return JSONResponse(self._effective_params(conversation.params))

    async def handle_set_generation_params_request(
        self, request: Request, request_body: bytes | None = None
    ) -> Response:
        """Change some of the session's generation parameters (validated; unknown names are a 422)."""
        try:
            update = GenerationParams.model_validate(await self._read_json(request, request_body))
            if update.max_new_tokens is not None and update.max_new_tokens > self.max_new_tokens:
                raise InvalidBody(f"max_new_tokens: must be at most {self.max_new_tokens}", param="max_new_tokens")
            conversation = await self.open_conversation(request, lock=False)
            conversation.params.update(update.model_dump(exclude_unset=True))
            await conversation.save()
        except ValidationError as err:
            return error_response(InvalidBody(describe_validation_error(err)))
        except GatewayError as err:
            return error_response(err)
        return JSONResponse(self._effective_params(conversation.params))

    def _effective_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        limits = {name: _range_of(name) for name in GenerationParams.model_fields}
        limits["max_new_tokens"][1] = self.max_new_tokens  # the model has no upper bound: the server sets it
        return {"params": self._merged_params(params), "limits": limits}

    def _merged_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The server's defaults, overridden by the values the session has set."""
        return {**self.default_params, **{k: v for k, v in params.items() if v is not None}}

    async def handle_get_load_request(self, request: Request | None = None) -> Response:
        """How busy the gateway is: generations in flight, waiting, and the capacity."""
        load = self.admission.load()
        return JSONResponse(
            {
                "in_flight": load.running,
                "queued": load.waiting,
                "capacity": load.capacity,
                "queue_size": load.queue_size,
            }
        )


class _ChatStreamResponse(Response):
    """Runs one chat turn when Starlette sends the response.

    Everything that must be released later (the session lock, the admission
    place) is taken here, inside the response's own lifecycle, so a response
    that is never sent holds nothing.
    """

    def __init__(
        self, chat: ChatStream, request: Request, body: ChatStreamBody, callback: CompletionCallback | None
    ) -> None:
        super().__init__()
        self.chat = chat
        self.request = request
        self.body_in = body
        self.callback = callback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chat, body = self.chat, self.body_in
        request_id = uuid.uuid4().hex
        try:
            conversation = await chat.open_conversation(self.request, lock=True)
        except GatewayError as err:
            await chat._refuse(err)(scope, receive, send)
            return
        prompt = conversation.prompt
        snapshot = prompt.snapshot()
        try:
            if body.regenerate:
                prompt.pop_answer()
                if prompt.last_user_text() is None:
                    raise BadChatRequest("there is no answer to regenerate yet", param="regenerate")
            else:
                prompt.add_user(body.user_input)
            options = chat.sampling_options(conversation.params, prompt.stop)
            try:
                rendered = prompt.render(chat.engine.max_model_len - options.max_tokens)
            except TurnTooLong as err:
                raise BadChatRequest(f"{err}; shorten the message", param="user_input") from None
        except BaseException as err:
            prompt.restore(snapshot)
            await conversation.close()
            if not isinstance(err, GatewayError):
                raise
            await chat._refuse(err)(scope, receive, send)
            return

        gen = Generation(
            request_id=request_id,
            route=ROUTE,
            prompt_token_ids=rendered.token_ids,
            options=options,
            extra_headers=[(b"x-message-id", request_id.encode())],
        )

        async def on_end(gen: Generation) -> None:
            try:
                if gen.sent_parts:
                    prompt.add_assistant(gen.sent_text)
                    prompt.forget_oldest(chat.max_history_messages)
                else:  # nothing reached the client: the conversation is as it was
                    prompt.restore(snapshot)
                await conversation.save()
            finally:
                await conversation.close()

        await chat.runner.run(self.request, send, gen, _ChatSSE(), on_end, self.callback)

"""ChatStream: the seed documents' `/chat_stream` endpoint and its helpers, a thin face over the core.

`await chat_stream.handle_chat_stream_request(request)` inside any Starlette or
FastAPI route is a complete streaming chat endpoint: it continues the
session's conversation, waits for an admission slot, streams the answer as
Server-Sent Events and reports how the stream ended through `callback`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypedDict, Unpack

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.chat.schema import ChatStreamBody, GenerationParams, describe_validation_error, range_of
from gateway.chat.turn import ROUTE, ChatTurn
from gateway.conversations import Conversation, ConversationHandler, SessionConversations
from gateway.core import CompletionCallback, Core, Engine, Metrics, SamplingOptions
from gateway.core.claims import Admission
from gateway.core.errors import BadChatRequest, EngineUnavailable, GatewayError, InvalidBody, error_response
from gateway.http.limits import read_body, require_json
from gateway.settings import Config
from prompts import ChatPrompt, CountingTokenizer, FormatName, RenderedPrompt, TemplateRejected, TurnTooLong

logger = logging.getLogger(__name__)


class ChatStreamOptions(TypedDict, total=False):
    """ChatStream's tuning keywords: the seed documents' names, and the gateway's additions.

    Each is a `Config` field; the seed's two admission names map to `concurrency` and `queue_size`.
    """

    num_of_concurrent_executions: int
    max_queue_size: int
    queue_timeout: float
    max_new_tokens: int
    system_prompt: str | None
    prompt_format: FormatName
    temperature: float
    top_p: float
    top_k: int
    repetition_penalty: float
    ignore_eos: bool
    max_input_chars: int
    max_history_messages: int
    max_body_bytes: int
    send_timeout: float
    ping_interval: float


_CONFIG_NAMES = {"num_of_concurrent_executions": "concurrency", "max_queue_size": "queue_size"}


class ChatStream:
    """A streaming chat service over one inference engine.

    Give it `model` (a directory or model id, served by vLLM with `engine_args`
    passed to vLLM's AsyncEngineArgs) or `engine` (anything that meets
    `gateway.Engine`), and any of `ChatStreamOptions` as keywords; or a whole
    `config`; or an existing `core` to share one engine with the OpenAI routes.
    Use `lifespan` as the app's lifespan so the engine starts and stops with it.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        engine: Engine | None = None,
        engine_args: Mapping[str, Any] | None = None,
        chat_prompt_clazz: type[ChatPrompt] = ChatPrompt,
        conversations: ConversationHandler | None = None,
        metrics: Metrics | None = None,
        config: Config | None = None,
        core: Core | None = None,
        **options: Unpack[ChatStreamOptions],
    ) -> None:
        if core is None:
            if (model is None) == (engine is None) and config is None:
                raise ValueError("give ChatStream either model= or engine=")
            fields: dict[str, Any] = {_CONFIG_NAMES.get(name, name): value for name, value in options.items()}
            if model is not None:
                fields["model"] = model
            # Validated like any Config (a plain Config: keywords never read the environment).
            config = Config.model_validate({**(config or Config()).model_dump(), **fields})
            core = Core(config, engine, engine_args=engine_args, metrics=metrics)
        elif options or model or engine or config or engine_args or metrics:
            raise ValueError("a ChatStream over an existing core takes its settings from that core")
        self.core = core
        self.chat_prompt_clazz = chat_prompt_clazz
        self.conversations: ConversationHandler = conversations or SessionConversations(self.new_prompt)
        self._tokenizer: CountingTokenizer | None = None
        c = core.config
        self.default_params = GenerationParams(
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            max_new_tokens=c.max_new_tokens,
            repetition_penalty=c.repetition_penalty,
        ).model_dump()

    @property
    def config(self) -> Config:
        return self.core.config

    @property
    def engine(self) -> Engine:
        return self.core.engine

    @property
    def admission(self) -> Admission:
        return self.core.admission

    @property
    def metrics(self) -> Metrics:
        return self.core.metrics

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Start the engine for the app's lifetime (use as `FastAPI(lifespan=...)`)."""
        async with self.core.lifespan(app):
            yield

    def new_prompt(self) -> ChatPrompt:
        return self.chat_prompt_clazz(system=self.config.system_prompt, format=self.config.prompt_format)

    # --- the endpoint -------------------------------------------------------------------

    async def handle_chat_stream_request(
        self, request: Request, request_body: bytes | str | None = None, callback: CompletionCallback | None = None
    ) -> Response:
        """Answer one `/chat_stream` request: an SSE stream, or a JSON error with a real status.

        Pass `request_body` when the endpoint has already read the body.
        `callback(request, message)` runs once when an admitted stream ends.
        """
        arrived_at = time.monotonic()  # time to first token counts from here: body, session and render included
        try:
            body = ChatStreamBody.model_validate(await self._read_json(request, request_body))
        except ValidationError as err:
            return self.refuse(InvalidBody(describe_validation_error(err)))
        except GatewayError as err:
            return self.refuse(err)
        if not body.regenerate:
            if not body.user_input.strip():
                return self.refuse(BadChatRequest("user_input must not be empty", param="user_input"))
            limit = self.config.max_input_chars
            if len(body.user_input) > limit:
                return self.refuse(BadChatRequest(f"user_input is longer than {limit} characters", param="user_input"))
        return ChatTurn(self, request, body, callback, arrived_at)

    def refuse(self, err: GatewayError) -> Response:
        """The JSON answer to a request refused before the queue, counted in the metrics."""
        self.core.count_refusal(ROUTE, err)
        return error_response(err)

    async def _read_json(self, request: Request, request_body: bytes | str | None) -> Any:
        require_json(request.headers)
        if request_body is None:
            request_body = await read_body(request, self.config.max_body_bytes)
        try:
            return json.loads(request_body)
        except (ValueError, TypeError):
            raise BadChatRequest("the body is not valid JSON") from None

    def sampling_options(self, params: Mapping[str, Any], stop: tuple[str, ...]) -> SamplingOptions:
        merged = self._merged_params(params)
        return SamplingOptions(
            max_tokens=min(int(merged["max_new_tokens"]), self.config.max_new_tokens),
            temperature=float(merged["temperature"]),
            top_p=float(merged["top_p"]),
            top_k=int(merged["top_k"]),
            repetition_penalty=float(merged["repetition_penalty"]),
            stop=stop,
            ignore_eos=self.config.ignore_eos,
        )

    def tokenizer(self) -> CountingTokenizer:
        """The engine's tokenizer, remembering each message's token count; 503 until the engine has started."""
        try:
            engine_tokenizer = self.engine.tokenizer
        except Exception:
            raise EngineUnavailable("the engine is not available", retry_after=5) from None
        if self._tokenizer is None or self._tokenizer.tokenizer is not engine_tokenizer:
            self._tokenizer = CountingTokenizer(engine_tokenizer)
        return self._tokenizer

    async def open_conversation(self, request: Request, *, lock: bool) -> Conversation:
        """The request's conversation, bound to the tokenizer; with `lock`, its generation lock held."""
        tokenizer = self.tokenizer()
        conversation = await self.conversations.open(request, lock=lock)
        try:
            conversation.prompt.bind(tokenizer)
        except BaseException:
            await conversation.close()
            raise
        return conversation

    async def render(self, prompt: ChatPrompt, budget: int) -> RenderedPrompt:
        """The window of `prompt` the engine gets; a refusal is a BadChatRequest."""
        try:
            return await self._window(prompt, budget)
        except TurnTooLong as err:
            raise BadChatRequest(f"{err}; shorten the message", param="user_input") from None
        except TemplateRejected as err:
            raise _template_refusal(err) from None

    async def _window(self, prompt: ChatPrompt, budget: int) -> RenderedPrompt:
        """`prompt.render(budget)`: off the event loop, unless the conversation is short."""
        if _renders_at_once(prompt):
            return prompt.render(budget)
        return await self.core.offload(prompt.render, budget)

    def budget(self, params: Mapping[str, Any]) -> int:
        """Prompt tokens the context leaves beside an answer of the session's `max_new_tokens`."""
        return self.engine.max_model_len - self.sampling_options(params, ()).max_tokens

    # --- the helpers ------------------------------------------------------------------------

    async def handle_clear_context_request(self, request: Request) -> Response:
        """Forget the conversation (409 while a generation runs in it)."""
        try:
            conversation = await self.conversations.open(request, lock=True)
            try:
                await conversation.clear()
            finally:
                await conversation.close()
        except GatewayError as err:
            return error_response(err)
        return JSONResponse({"cleared": True})

    async def handle_get_prompt_request(self, request: Request) -> Response:
        """The conversation: its turns, and the prompt text the model would see (the newest turns that fit)."""
        try:
            conversation = await self.open_conversation(request, lock=False)
            prompt = conversation.prompt
            try:
                text = (await self._window(prompt, self.budget(conversation.params))).text
            except TurnTooLong as err:  # the newest exchange alone is over the budget: show it anyway
                text = err.newest.text if err.newest is not None else ""
            except TemplateRejected as err:
                raise _template_refusal(err) from None
        except GatewayError as err:
            return error_response(err)
        return JSONResponse({"prompt": text, "system": prompt.system, "messages": prompt.messages})

    async def handle_get_generation_params_request(self, request: Request) -> Response:
        """The session's generation parameters, with the server's defaults filled in."""
        try:
            conversation = await self.conversations.open(request, lock=False)
        except GatewayError as err:
            return error_response(err)
        return JSONResponse(self._effective_params(conversation.params))

    async def handle_set_generation_params_request(
        self, request: Request, request_body: bytes | None = None
    ) -> Response:
        """Change some of the session's generation parameters (validated; unknown names are a 422)."""
        try:
            update = GenerationParams.model_validate(await self._read_json(request, request_body))
            limit = self.config.max_new_tokens
            if update.max_new_tokens is not None and update.max_new_tokens > limit:
                raise InvalidBody(f"max_new_tokens: must be at most {limit}", param="max_new_tokens")
            conversation = await self.conversations.open(request, lock=False)
            conversation.params.update(update.model_dump(exclude_unset=True))
            await conversation.save()
        except ValidationError as err:
            return error_response(InvalidBody(describe_validation_error(err)))
        except GatewayError as err:
            return error_response(err)
        return JSONResponse(self._effective_params(conversation.params))

    def _effective_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        limits = {name: range_of(name) for name in GenerationParams.model_fields}
        limits["max_new_tokens"][1] = self.config.max_new_tokens  # the model has no upper bound: the server sets it
        return {"params": self._merged_params(params), "limits": limits}

    def _merged_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The server's defaults, overridden by the values the session has set."""
        return {**self.default_params, **{k: v for k, v in params.items() if v is not None}}

    async def handle_get_load_request(self, request: Request | None = None) -> Response:
        """How busy the gateway is: generations in flight, waiting, and the capacity."""
        load = await self.admission.aload()
        return JSONResponse(
            {
                "in_flight": load.running,
                "queued": load.waiting,
                "capacity": load.capacity,
                "queue_size": load.queue_size,
            }
        )


def _template_refusal(err: TemplateRejected) -> BadChatRequest:
    logger.info("%s", err)
    return BadChatRequest(
        "the model's chat template does not accept this conversation (some models take no system prompt)",
        param="user_input",
    )


# A conversation this short renders (template and tokenizer) in a few hundred microseconds,
# hardly more than its round trip to the render thread costs the event loop; a longer one
# takes milliseconds, which on the loop would stall every other stream's tokens.
INLINE_RENDER_CHARS = 512


def _renders_at_once(prompt: ChatPrompt) -> bool:
    size = len(prompt.system or "")
    for message in prompt.messages:
        size += len(message["content"])
        if size > INLINE_RENDER_CHARS:
            return False
    return True

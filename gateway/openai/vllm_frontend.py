"""The OpenAI routes over vLLM, with vLLM's own request models, rendering and parsers.

What is reused from vLLM 0.32 (so a request means exactly what it means to
`vllm serve`): the request models (`ChatCompletionRequest`, `CompletionRequest`,
the tokenize ones) and their `to_sampling_params`; `OnlineRenderer` (the chat
template, tokenizing, prompt-length checks, `tool_choice` validation and the
structural tags that constrain tool calls); `get_max_tokens`; the tool and
reasoning parsers (`ParserManager`). What is not: vLLM's serving classes and
their stream generators (see STYLE.md); the gateway streams through its core.

Where the gateway is stricter: a forced tool call (`tool_choice` "required" or
a named function) constrains its arguments to the function's schema whether
or not the tool says `strict`, and JSON schemas reach the grammar with their
length-bounded strings made safe (`grammar.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, TypeVar

from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionRequest,
)
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.entrypoints.serve.engine.protocol import ErrorResponse
from vllm.entrypoints.serve.tokenize.protocol import (
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from vllm.entrypoints.serve.utils.api_utils import get_max_tokens
from vllm.exceptions import VLLMClientError
from vllm.inputs import TokensPrompt
from vllm.parser.abstract_parser import DelegatingParser
from vllm.renderers.chat_utils import load_chat_template
from vllm.renderers.online_renderer import OnlineRenderer

from gateway.core import SamplingOptions
from gateway.core.errors import BadChatRequest, GatewayError, ModelNotFound, PromptTooLong
from gateway.core.vllm_engine import VLLMParams, refusal
from gateway.openai.bodies import json_object, parse, warn_ignored
from gateway.openai.frontend import AnswerSpec, Prepared, Prompt
from gateway.openai.grammar import strict_structured_outputs
from gateway.openai.vllm_parsing import VLLMAnswerParser
from gateway.settings import Config

logger = logging.getLogger(__name__)

T = TypeVar("T")
# vLLM's own request fields the gateway takes and ignores, as vLLM's server does or for a stated reason.
_IGNORED = ("request_id", "session_id", "kv_transfer_params", "ec_transfer_params", "return_token_offsets")
# Fields vLLM's request validators walk before checking their type: checked first, to name them in a 400.
_CONTAINERS: dict[str, type] = {
    "stream_options": dict,
    "response_format": dict,
    "structured_outputs": dict,
    "logit_bias": dict,
}
_CHAT_CONTAINERS = {**_CONTAINERS, "messages": list, "tools": list, "chat_template_kwargs": dict}


class VLLMFrontend:
    """Chat, completions and (de)tokenizing through vLLM's own request handling pieces."""

    def __init__(self, client: Any, config: Config, default_name: str) -> None:
        self.config = config
        self._names = list(config.served_model_name) or [default_name]
        self._model_config = client.model_config
        self._tokenizer = client.renderer.get_tokenizer()
        settings: dict[str, Any] = {
            "request_logger": None,
            "chat_template": load_chat_template(config.chat_template),
            "chat_template_content_format": config.chat_template_content_format,
            "trust_request_chat_template": config.trust_request_chat_template,
            "enable_auto_tools": config.enable_auto_tool_choice,
            "exclude_tools_when_tool_choice_none": config.exclude_tools_when_tool_choice_none,
            "tool_parser": config.tool_call_parser,
            "reasoning_parser": config.reasoning_parser,
        }
        self._renderer = OnlineRenderer(
            self._model_config, client.renderer, tool_strict_level=config.tool_strict_level, **settings
        )
        # A forced call's grammar pins the arguments to the function's schema, as if every tool were strict.
        self._forced = OnlineRenderer(self._model_config, client.renderer, tool_strict_level="parameter", **settings)
        self._renderer.warmup()
        self._defaults: dict[str, Any] = self._model_config.get_diff_sampling_param()
        mc = self._model_config
        self._override_max_tokens: int | None = (
            self._defaults.get("max_tokens")
            if mc.generation_config not in ("auto", "vllm")
            else getattr(mc, "override_generation_config", {}).get("max_new_tokens")
        )

    def model_names(self) -> list[str]:
        return self._names

    # --- chat ----------------------------------------------------------------------------------

    async def chat(self, body: bytes) -> Prepared:
        request = parse(ChatCompletionRequest, body, refused=(VLLMClientError,), containers=_CHAT_CONTAINERS)
        limit = _answer_limit(request)
        self._check(request, limit)
        forced = bool(request.tools) and (
            request.tool_choice == "required" or isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam)
        )
        renderer = self._forced if forced else self._renderer
        rendered = await self._render(renderer.render_chat(request))
        conversation, (engine_input,) = rendered
        ids: list[int] = list(engine_input["prompt_token_ids"])
        max_tokens = self._max_tokens(limit[1], len(ids), request.truncate_prompt_tokens)
        params = self._sampling(lambda: request.to_sampling_params(max_tokens, self._defaults))

        parser_cls = renderer.parser
        template_kwargs = renderer.effective_chat_template_kwargs(request)

        def make_parser() -> Any:  # vLLM's parsers keep state: one per answer
            return parser_cls(
                self._tokenizer, request.tools, chat_template_kwargs=template_kwargs, model_config=self._model_config
            )

        generate_kwargs: dict[str, Any] = {"priority": request.priority}
        parser_factory = None
        if parser_cls is not None:
            # Whether the prompt already ended the reasoning: only a reasoning parser can tell.
            reasoning = parser_cls.reasoning_parser_cls is not None
            if reasoning:
                generate_kwargs["reasoning_parser_kwargs"] = {"chat_template_kwargs": template_kwargs}
            generate_kwargs["reasoning_ended"] = request.resolve_reasoning_ended(
                make_parser() if reasoning else None, ids
            )
            if self._parses(parser_cls, request):

                def parser_factory(prompt_ids: list[int]) -> VLLMAnswerParser:
                    return VLLMAnswerParser(make_parser(), request, prompt_ids, self.config.enable_auto_tool_choice)

        # vLLM hides per-token details when the answer's reasoning is hidden (they would show it).
        hidden = parser_factory is not None and not request.include_reasoning
        # The message an answer continues (add_generation_prompt false): `echo` repeats it when its
        # role is the answer's. vLLM reports that role as the answer's, even "user"; OpenAI's schema
        # allows "assistant" only, and so does the gateway.
        continued = "assistant" if request.add_generation_prompt else str(request.messages[-1]["role"])
        options = SamplingOptions(
            max_tokens=params.max_tokens,
            native=VLLMParams(params, request.cache_salt, generate_kwargs),
            answers=params.n,
        )
        include_usage, continuous_usage = _usage(request)
        spec = AnswerSpec(
            model=self._names[0],
            streaming=bool(request.stream),
            n=request.n or 1,
            logprobs=request.top_logprobs if request.logprobs and not hidden else None,
            all_top_logprobs=bool(request.logprob_token_ids),
            echo=request.echo,
            echo_text=_echo_text(conversation, continued) if request.echo else "",
            include_usage=include_usage,
            continuous_usage=continuous_usage,
            return_token_ids=bool(request.return_token_ids) and not hidden,
            return_prompt_text=bool(request.return_prompt_text),
            tokens_as_ids=self._tokens_as_ids(request.return_tokens_as_token_ids),
            parser=parser_factory,
            reasoning_details=parser_cls is not None and parser_cls.reasoning_parser_cls is not None,
            cached_details=self.config.enable_prompt_tokens_details,
            decode=self._decode,
        )
        return Prepared([Prompt(ids, engine_input.get("prompt"), options)], spec, request.priority, request.user)

    @staticmethod
    def _parses(parser_cls: Any, request: ChatCompletionRequest) -> bool:
        """Whether vLLM's parser can change this answer (with tool_choice none and no reasoning it cannot)."""
        if not issubclass(parser_cls, DelegatingParser) or parser_cls.reasoning_parser_cls is not None:
            return True
        tool_parser = parser_cls.tool_parser_cls
        return request.tool_choice != "none" or (tool_parser is not None and tool_parser.engine_based_streaming)

    # --- completions ---------------------------------------------------------------------------

    async def completion(self, body: bytes) -> Prepared:
        request = parse(CompletionRequest, body, refused=(VLLMClientError,), containers=_CONTAINERS)
        self._check(request, ("max_tokens", request.max_tokens))
        if request.prompt_embeds is not None:
            raise BadChatRequest("prompt_embeds are not supported by this server", param="prompt_embeds")
        engine_inputs = await self._render(self._renderer.render_completion(request))
        prompts = []
        for engine_input in engine_inputs:
            ids = list(engine_input["prompt_token_ids"])
            max_tokens = self._max_tokens(request.max_tokens, len(ids), request.truncate_prompt_tokens)
            params = self._sampling(lambda m=max_tokens: request.to_sampling_params(m, self._defaults))
            native = VLLMParams(params, request.cache_salt, {"priority": request.priority})
            # vLLM echoes no prompt text when it returns the token ids instead.
            text = "" if request.return_token_ids else engine_input.get("prompt")
            options = SamplingOptions(max_tokens=params.max_tokens, native=native, answers=params.n)
            prompts.append(Prompt(ids, text, options))
        include_usage, continuous_usage = _usage(request)
        spec = AnswerSpec(
            model=self._names[0],
            streaming=bool(request.stream),
            n=request.n,
            logprobs=request.logprobs,
            all_top_logprobs=bool(request.logprob_token_ids),
            echo=bool(request.echo),
            max_tokens_zero=bool(request.echo) and request.max_tokens == 0,
            include_usage=include_usage,
            continuous_usage=continuous_usage,
            return_token_ids=bool(request.return_token_ids),
            tokens_as_ids=self._tokens_as_ids(request.return_tokens_as_token_ids),
            cached_details=self.config.enable_prompt_tokens_details,
            decode=self._decode,
        )
        return Prepared(prompts, spec, request.priority, request.user)

    # --- tokenizing ----------------------------------------------------------------------------

    async def tokenize(self, body: bytes) -> Mapping[str, Any]:
        data = json_object(body)
        model = TokenizeChatRequest if "messages" in data else TokenizeCompletionRequest
        request = parse(model, data, refused=(VLLMClientError,))
        self._check_model(request.model)
        renderer = self._renderer
        if isinstance(request, TokenizeChatRequest):
            error = renderer.validate_chat_template(
                request.chat_template, request.chat_template_kwargs, self.config.trust_request_chat_template
            )
            if error is not None:
                raise _error(error)
            tools = None if request.tools is None else [tool.model_dump() for tool in request.tools]
            _, engine_inputs = await self._render(
                renderer.preprocess_chat(
                    request,
                    request.messages,
                    default_template=renderer.chat_template,
                    default_template_content_format=renderer.chat_template_content_format,
                    default_template_kwargs=renderer.default_chat_template_kwargs,
                    tool_dicts=tools,
                    skip_mm_cache=True,
                )
            )
        else:
            engine_inputs = await self._render(
                renderer.preprocess_completion(
                    request, prompt_input=request.prompt, prompt_embeds=None, skip_mm_cache=True
                )
            )
        ids = [token for engine_input in engine_inputs for token in engine_input["prompt_token_ids"]]
        answer: dict[str, Any] = {"count": len(ids), "max_model_len": self._model_config.max_model_len, "tokens": ids}
        answer["token_strs"] = self._tokenizer.convert_ids_to_tokens(ids) if request.return_token_strs else None
        return answer

    async def detokenize(self, body: bytes) -> Mapping[str, Any]:
        request = parse(DetokenizeRequest, body, refused=(VLLMClientError,))
        self._check_model(request.model)
        renderer = self._renderer.renderer
        prompt = await self._render(
            renderer.tokenize_prompt_async(
                TokensPrompt(prompt_token_ids=request.tokens), request.build_tok_params(self._model_config)
            )
        )
        return {"prompt": prompt["prompt"]}

    # --- shared --------------------------------------------------------------------------------

    def _check(self, request: ChatCompletionRequest | CompletionRequest, limit: tuple[str, int | None]) -> None:
        self._check_model(request.model)
        if request.use_beam_search:
            raise BadChatRequest("beam search is not supported by this server", param="use_beam_search")
        warn_ignored(name for name in _IGNORED if name in request.model_fields_set)
        ceiling, (param, asked) = self.config.max_tokens_ceiling, limit
        if ceiling is not None and asked is not None and asked > ceiling:
            raise BadChatRequest(f"{param} must be at most {ceiling} (the server's --max-tokens-ceiling)", param=param)

    def _check_model(self, name: str | None) -> None:
        if name and name not in self._names:
            served = ", ".join(self._names)
            raise ModelNotFound(f"the model {name!r} does not exist; this server serves {served}", param="model")

    def _max_tokens(self, asked: int | None, prompt_tokens: int, truncate: int | None) -> int:
        override = self._override_max_tokens
        ceiling = self.config.max_tokens_ceiling
        if ceiling is not None:
            override = ceiling if override is None else min(override, ceiling)
        try:
            return int(
                get_max_tokens(
                    self._model_config.max_model_len,
                    asked,
                    prompt_tokens,
                    self._defaults,
                    override,
                    truncate_prompt_tokens=truncate,
                )
            )
        except ValueError as exc:  # the prompt leaves no room for the answer asked for
            raise PromptTooLong(str(exc)) from None

    def _sampling(self, build: Any) -> Any:
        try:
            params = build()
        except Exception as exc:
            error = refusal(exc)
            if error is None:
                raise
            raise error from None
        params.structured_outputs = strict_structured_outputs(params.structured_outputs)
        if self.config.ignore_eos:  # --ignore-eos: every answer runs to its max tokens (benchmarks, tests)
            params.ignore_eos = True
        return params

    async def _render(self, pending: Awaitable[T]) -> T:
        try:
            result = await pending
        except Exception as exc:
            error = refusal(exc)
            if error is None:
                raise
            logger.info("vLLM refused a request while rendering it: %s", type(exc).__name__)
            raise error from None
        if isinstance(result, ErrorResponse):
            raise _error(result)
        return result

    def _tokens_as_ids(self, asked: bool | None) -> bool:
        return self.config.return_tokens_as_token_ids if asked is None else asked

    def _decode(self, token_id: int) -> str:
        return str(self._tokenizer.decode([token_id]))


def _error(response: ErrorResponse) -> GatewayError:
    status = response.error.code
    error = BadChatRequest(response.error.message, param=response.error.param)
    if status == 404:
        return ModelNotFound(response.error.message, param=response.error.param)
    return error


def _answer_limit(request: ChatCompletionRequest) -> tuple[str, int | None]:
    """The field a client set the answer's length with, and its value."""
    if request.max_completion_tokens is not None:
        return "max_completion_tokens", request.max_completion_tokens
    # Read without the attribute: vLLM marks max_tokens deprecated, and the read would warn.
    return "max_tokens", request.__dict__.get("max_tokens")


def _usage(request: ChatCompletionRequest | CompletionRequest) -> tuple[bool, bool]:
    options = request.stream_options
    if not request.stream or options is None or not options.include_usage:
        return False, False
    return True, bool(options.continuous_usage_stats)


def _echo_text(conversation: Sequence[Mapping[str, Any]], role: str) -> str:
    """The last message's text when the answer continues it (same role), as vLLM's `echo` shows it."""
    if not conversation or conversation[-1].get("role") != role:
        return ""
    content = conversation[-1].get("content") or ""
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content if isinstance(part, dict) and "text" in part)
    return str(content)

"""The OpenAI routes over an engine other than vLLM: plain text, the engine's own chat template.

Test fakes and the benchmark's zero-cost engine have no vLLM renderer or
parsers: they take the gateway's own strict request models (`schema.py`),
render chat through the engine's tokenizer and sample by `SamplingOptions`.
Whatever they cannot honour (tools, logprobs, n > 1 ...) is a 400 naming it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.core import Engine, SamplingOptions
from gateway.core.errors import BadChatRequest, ModelNotFound, PromptTooLong
from gateway.openai.bodies import parse
from gateway.openai.frontend import AnswerSpec, Prepared, Prompt
from gateway.openai.schema import ChatCompletionRequest, CompletionRequest, SamplingFields
from gateway.settings import Config


class PlainFrontend:
    """Plain-text chat and completions for any `Engine`."""

    def __init__(self, engine: Engine, config: Config) -> None:
        self.engine = engine
        self.config = config

    def model_names(self) -> list[str]:
        return list(self.config.served_model_name) or [self.engine.model_name]

    async def chat(self, body: bytes) -> Prepared:
        request = parse(ChatCompletionRequest, body)
        messages = [{"role": m.role, "content": m.text} for m in request.messages]

        def render() -> list[int]:
            tokenizer = self.engine.tokenizer
            try:
                return tokenizer.encode(tokenizer.render_chat(messages, add_generation_prompt=True))
            except Exception:  # a model's template may refuse a conversation (e.g. roles out of order)
                raise BadChatRequest("the model's chat template rejects these messages", param="messages") from None

        return self._prepared(request, await asyncio.to_thread(render), "messages")

    async def completion(self, body: bytes) -> Prepared:
        request = parse(CompletionRequest, body)
        ids = await asyncio.to_thread(self.engine.tokenizer.encode, request.prompt)
        return self._prepared(request, ids, "prompt")

    async def tokenize(self, body: bytes) -> Mapping[str, Any]:
        raise BadChatRequest("tokenizing needs a vLLM engine")

    async def detokenize(self, body: bytes) -> Mapping[str, Any]:
        raise BadChatRequest("detokenizing needs a vLLM engine")

    def _prepared(self, request: SamplingFields, ids: list[int], param: str) -> Prepared:
        names = self.model_names()
        if request.model and request.model not in names:
            raise ModelNotFound(f"the model {request.model!r} does not exist; this server serves {names[0]!r}")
        if request.stream_options is not None and not request.stream:
            raise BadChatRequest("stream_options is only allowed when stream is true", param="stream_options")
        config, limit_param = self.config, request.token_limit_param
        ceiling = config.max_tokens_ceiling
        if ceiling is not None and request.token_limit is not None and request.token_limit > ceiling:
            raise BadChatRequest(
                f"{limit_param} must be at most {ceiling} (the server's --max-tokens-ceiling)", param=limit_param
            )
        context = self.engine.max_model_len
        room = context - len(ids)
        if not ids or room < 1:
            raise (PromptTooLong if ids else BadChatRequest)(
                f"the prompt has {len(ids)} tokens; it must have between 1 and {context - 1} "
                f"(the model's context is {context} tokens)",
                param=param,
            )
        max_tokens = request.token_limit or min(room, ceiling or room)
        if max_tokens > room:
            raise PromptTooLong(
                f"{limit_param}={max_tokens} does not fit: the prompt has {len(ids)} tokens and the model's "
                f"context is {context}",
                param=limit_param,
            )
        if request.min_tokens > max_tokens:
            raise BadChatRequest(f"min_tokens must not exceed {limit_param} ({max_tokens})", param="min_tokens")
        # Unset sampling fields take the server's defaults.
        penalty = config.repetition_penalty if request.repetition_penalty is None else request.repetition_penalty
        options = SamplingOptions(
            max_tokens=max_tokens,
            temperature=config.temperature if request.temperature is None else request.temperature,
            top_p=config.top_p if request.top_p is None else request.top_p,
            top_k=max(0, config.top_k if request.top_k is None else request.top_k),  # -1 or 0: no cut
            min_tokens=request.min_tokens,
            repetition_penalty=penalty,
            stop=request.stops,
            seed=request.seed,
            ignore_eos=request.ignore_eos or config.ignore_eos,
        )
        spec = AnswerSpec(
            model=names[0],
            streaming=request.stream,
            include_usage=request.include_usage,
            continuous_usage=request.continuous_usage,
            cached_details=config.enable_prompt_tokens_details,
        )
        return Prepared([Prompt(ids, None, options)], spec, request.priority, request.user)

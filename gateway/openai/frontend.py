"""The model's side of the OpenAI routes: a request body in, prompts and sampling out.

A `Frontend` turns a request body into `Prepared` work: the prompts for the
engine (each with its sampling options) and an `AnswerSpec`, what the answer
must show (how many choices, logprobs, echo, tool calls ...). The routes and
formats around it do not depend on the engine.

With vLLM (`VLLMFrontend`), the request models, the chat template rendering,
the sampling parameters and the tool and reasoning parsers are vLLM's own, so
a request means what it means to vLLM's OpenAI server. Any other engine (test
fakes, the benchmark's zero-cost engine) gets `PlainFrontend`: plain text only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.core import Engine, SamplingOptions
from gateway.settings import Config


@dataclass(frozen=True, slots=True)
class Delta:
    """What one engine output of one answer adds, once the tool and reasoning parser has read it."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Parsed:
    """A whole answer, read by the tool and reasoning parser."""

    content: str | None
    reasoning: str | None
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    reasoning_tokens: int = 0


class AnswerParser(Protocol):
    """The tool and reasoning parser of one answer (one per choice: parsers keep state)."""

    def delta(self, text: str, token_ids: Sequence[int], *, finished: bool) -> Delta | None:
        """The parsed part of one streamed output; None when the parser holds it back."""
        ...

    def whole(self, text: str, token_ids: Sequence[int], finish_reason: str) -> Parsed:
        """The whole answer, parsed (the non-streaming message)."""
        ...

    def finish_reason(self, finish_reason: str, *, streamed_tool_calls: bool) -> str:
        """The finish reason a streamed answer reports ("tool_calls" where OpenAI says so)."""
        ...

    def reasoning_tokens(self, token_ids: Sequence[int]) -> int: ...


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt for the engine: its tokens, its text (for echo) and how to sample its answers."""

    token_ids: list[int]
    text: str | None
    options: SamplingOptions


@dataclass(frozen=True, slots=True)
class AnswerSpec:
    """What the answer to one request must show, beside its text."""

    model: str
    streaming: bool
    n: int = 1
    # chat: top_logprobs when logprobs is true; completions: logprobs (None: no logprobs)
    logprobs: int | None = None
    all_top_logprobs: bool = False  # logprob_token_ids: every listed token, not the top-k
    echo: bool = False
    echo_text: str = ""  # chat: the last message's text, when the answer continues it
    max_tokens_zero: bool = False  # completions: echo the prompt and generate nothing
    include_usage: bool = False
    continuous_usage: bool = False
    return_token_ids: bool = False
    return_prompt_text: bool = False
    tokens_as_ids: bool = False
    role: str = "assistant"
    parser: Callable[[list[int]], AnswerParser] | None = None  # given the prompt's token ids
    reasoning_details: bool = False  # usage counts reasoning tokens
    cached_details: bool = False  # usage counts the prompt tokens served from the prefix cache
    decode: Callable[[int], str] | None = None  # a token id's text, where the engine gave none

    @property
    def plain(self) -> bool:
        """Text and nothing else: the fast path, one pre-encoded chunk prefix per generation."""
        return not (
            self.n != 1
            or self.logprobs is not None
            or self.echo
            or self.continuous_usage
            or self.return_token_ids
            or self.return_prompt_text
            or self.parser is not None
        )


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request made ready: prompts for the engine, and what the answer must show."""

    prompts: list[Prompt]
    spec: AnswerSpec
    priority: int = 0  # vLLM's (lower first): orders the caller's own waiting requests, if its key may
    user: str | None = None  # OpenAI's `user`: a fair-share user of its own under a key that says so


class Frontend(Protocol):
    """What the OpenAI routes need from the model's side."""

    def model_names(self) -> list[str]:
        """The names requests may use, the reported one first."""
        ...

    async def chat(self, body: bytes) -> Prepared: ...

    async def completion(self, body: bytes) -> Prepared: ...

    async def tokenize(self, body: bytes) -> Mapping[str, Any]: ...

    async def detokenize(self, body: bytes) -> Mapping[str, Any]: ...


def frontend_for(engine: Engine, config: Config) -> Frontend:
    """vLLM's frontend for a started vLLM engine, else the plain-text one."""
    client = getattr(engine, "vllm_client", None)
    if client is not None:
        from gateway.openai.vllm_frontend import VLLMFrontend  # imports vLLM: only with a vLLM engine

        return VLLMFrontend(client, config, engine.model_name)
    from gateway.openai.plain import PlainFrontend

    return PlainFrontend(engine, config)

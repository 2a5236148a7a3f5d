"""The request bodies the OpenAI routes take with an engine other than vLLM (`PlainFrontend`).

Plain text only: every model forbids unknown fields, so a client that sends a
parameter this engine cannot honour gets a 400 naming it, never a silent
ignore. With vLLM the routes take vLLM's own request models instead.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    """One part of a message's content; only text is supported."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


class _RouterDefaults(_Strict):
    """Fields vllm-router (0.1.17) adds to every body it forwards, at the values it sends.

    It re-serializes a request through its own schema, so a client's plain body
    arrives with these set. Each value is what the gateway does anyway, so
    accepting it changes no answer; any other value is still a 400 naming it.
    """

    no_stop_trim: Literal[False] = False
    skip_special_tokens: Literal[True] = True
    return_hidden_states: Literal[False] = False


class SamplingFields(_RouterDefaults):
    """Fields both routes share: OpenAI's sampling fields and vLLM's extras."""

    model: str | None = Field(None, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = 1
    stop: str | list[str] | None = Field(None, max_length=8)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256)
    # vLLM's extras, which benchmark tools send through `extra_body`.
    ignore_eos: bool = False
    top_k: int | None = Field(None, ge=-1, le=1000)
    min_tokens: int = Field(0, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)
    # vLLM's: lower is served earlier. Here it orders the caller's own waiting requests, if its key may set it.
    priority: int = Field(0, ge=-(2**31), le=2**31 - 1)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise ValueError("only n=1 is supported with this engine")
        return n

    @field_validator("stop")
    @classmethod
    def _non_empty_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if stop is not None and any(not s for s in ([stop] if isinstance(stop, str) else stop)):
            raise ValueError("stop strings must not be empty")
        return stop

    @property
    def stops(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.include_usage and self.stream_options is not None and self.stream_options.continuous_usage_stats

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def token_limit_param(self) -> str:
        """The field a client used to set the answer's length, to name it in errors."""
        return "max_tokens"


class ChatCompletionRequest(SamplingFields):
    """The body of `POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # vllm-router's additions to a chat body (see _RouterDefaults): no log probabilities,
    # a new assistant message, and no reasoning parser, so nothing to separate or include.
    logprobs: Literal[False] = False
    continue_final_message: Literal[False] = False
    separate_reasoning: Literal[True] = True
    stream_reasoning: Literal[True] = True
    include_reasoning: Literal[True] = True

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def token_limit_param(self) -> str:
        return "max_tokens" if self.max_completion_tokens is None else "max_completion_tokens"


class CompletionRequest(SamplingFields):
    """The body of `POST /v1/completions`."""

    prompt: str = Field(min_length=1)
    echo: Literal[False] = False  # vllm-router's addition (see _RouterDefaults)


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorBody(BaseModel):
    """How every refusal of the OpenAI routes is spelled."""

    error: OpenAIErrorDetail

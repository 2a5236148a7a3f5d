"""The narrow seam between the gateway and an inference engine.

The gateway needs five things from an engine: stream the deltas of one
generation, abort one, a tokenizer, whether it is alive, and a few load
figures. `vllm_engine.VLLMEngine` is the real one; tests use a fake behind the
same protocol. This module imports nothing heavy, so the HTTP layer and its
tests load without vLLM.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from prompts import Tokenizer

# "repetition": the engine cut a looping answer (vLLM's repetition detection).
FinishReason = Literal["stop", "length", "abort", "repetition"]


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How to sample one answer. `top_k=0` means no top-k cut.

    `native` carries the engine's own parameters, built by an API that speaks the
    engine's language (for `VLLMEngine`: a `VLLMParams`, whose vLLM SamplingParams
    then decide everything, `n` answers included); the fields above still tell the
    gateway the answer's length. An engine that does not know `native` ignores it.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False
    native: Any = None
    answers: int = 1  # how many answers `native` asks for (`n`): each counts in the token budget


# Not frozen: one is made per token, and a frozen dataclass's __init__ sets each of
# its ten fields through object.__setattr__ (2.6 µs here, against 0.7 µs). Nothing
# changes one after it is made (the runner copies it with dataclasses.replace).
@dataclass(slots=True)
class EngineOutput:
    """What arrived since the previous output of one answer of a generation.

    `finish_reason` is set on an answer's last output. `index` tells the answers of
    one request apart (n > 1), `prompt_index` the prompts of one generation (the
    runner sets it). `logprobs`, `prompt_logprobs` and `stop_reason` are the
    engine's own records (for vLLM: its per-token logprob dicts, the prompt's, and
    the stop string or token that ended the answer), there when the native
    parameters asked for them. `num_cached_tokens` counts the prompt's tokens
    that the engine's prefix cache served, `num_cache_write_tokens` those it newly cached.
    """

    text: str
    num_new_tokens: int
    num_prompt_tokens: int
    finish_reason: FinishReason | None = None
    index: int = 0
    prompt_index: int = 0
    token_ids: Sequence[int] = ()
    logprobs: Any = None
    prompt_logprobs: Any = None
    stop_reason: int | str | None = None
    # Of the prompt's tokens, how many the engine's prefix cache served, and how many it newly
    # cached (vLLM's num_cached_tokens and num_cache_creation_tokens).
    num_cached_tokens: int = 0
    num_cache_write_tokens: int = 0


# What an engine may yield first, as soon as it has accepted a request (for vLLM: its checks of
# the request passed, the request is queued in the engine): a stream that must not open before the
# engine accepted its request (a refusal is then still a real status) opens here, not at the first
# token, which may be a long prefill later. Compared by identity; it carries nothing.
ACCEPTED = EngineOutput("", 0, 0)

# A consumer that can take an output at once, in the engine's own task, as the engine produces it;
# False: not now. Every output an engine hands to a sink is one it does not yield: for a stream
# of a hundred tokens that is a hundred fewer wake-ups of the consumer's task.
OutputSink = Callable[[EngineOutput], bool]


@dataclass(frozen=True, slots=True)
class EngineStats:
    """The engine's own view of its load, where it reports one.

    The prefix-cache figures count prompt tokens since the engine started:
    looked up in the cache, and found there (vLLM's `prefix_cache_queries`
    and `prefix_cache_hits`); of several front ends of one engine, each counts
    the reports it received. `reported_at` is the engine's own clock when it
    made the report (0 where the engine does not say): it tells which of
    several front ends holds the engine's newest figures.
    """

    running: int
    waiting: int
    kv_cache_usage: float | None
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    reported_at: float = 0.0


class EngineDead(RuntimeError):
    """The engine can no longer serve; a supervisor should restart the process."""


class Engine(Protocol):
    """An inference engine the gateway can drive."""

    model_name: str
    max_model_len: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        sink: OutputSink | None = None,
    ) -> AsyncGenerator[EngineOutput, None]:
        """Stream one generation's deltas; each answer's last output has a finish_reason.

        A request the engine refuses (bad parameters) raises before any output. An engine that
        can tell when it has accepted a request yields `ACCEPTED` then, before its first output.

        With `sink`, the engine may offer it an output instead of yielding it, never an answer's
        last one, and only while no earlier output waits to be yielded (the order stays whole);
        what the sink declines is yielded as usual. If the sink raises, the stream raises that.
        An engine may ignore `sink`, or not have the parameter at all (it is then not given one).
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop a generation; harmless when it has already finished."""
        ...

    def is_healthy(self) -> bool: ...

    def num_unfinished(self) -> int:
        """Generations the engine still holds (running or waiting)."""
        ...

    def stats(self) -> EngineStats | None: ...

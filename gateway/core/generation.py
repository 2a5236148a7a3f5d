"""One generation: what was asked (immutable) and what happened (its outcome).

An API builds a `GenerationRequest` and hands it to the core; the runner
fills in the `Outcome` as the generation runs. How the generation ended is an
explicit value (`Outcome.state`), set once, at the moment it happens: the
first ending wins, so a client that hangs up after its stream completed is
still a success, and a refusal sent after queueing stays an error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.core.completion import CompletionState
from gateway.core.engine import SamplingOptions


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """What a client asked for, ready for the engine.

    `arrived_at` is when the request reached the server (monotonic clock): an API
    that does work before building this (reading, rendering) passes the time it
    took at its entry, so time to first token counts that work too.
    """

    request_id: str
    route: str
    prompt_token_ids: list[int]
    options: SamplingOptions
    # Response headers beside the API's own (e.g. `X-Message-Id`).
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # vLLM's `priority` (lower first): orders this user's own waiting requests, where its key allows it.
    priority: int = 0
    # OpenAI's `user` field: a fair-share user of its own under a key that says so.
    user: str | None = None
    arrived_at: float = field(default_factory=time.monotonic)
    created: int = field(default_factory=lambda: int(time.time()))
    # Further prompts answered in the same response (a completions request given
    # several prompts), each with its options; each runs as its own engine request.
    extra_prompts: tuple[tuple[list[int], SamplingOptions], ...] = ()

    def engine_requests(self) -> list[tuple[str, list[int], SamplingOptions]]:
        """Every engine request of this generation: (engine request id, prompt, options)."""
        first = (self.request_id, self.prompt_token_ids, self.options)
        rest = [(f"{self.request_id}-{i}", ids, opts) for i, (ids, opts) in enumerate(self.extra_prompts, 1)]
        return [first, *rest]

    def token_cost(self) -> tuple[int, int]:
        """(prompt tokens, most output tokens) of all its engine requests: what admission budgets."""
        requests = self.engine_requests()
        return sum(len(ids) for _, ids, _ in requests), sum(o.max_tokens * o.answers for _, _, o in requests)


@dataclass(eq=False, slots=True)
class Outcome:
    """What happened to one generation, filled in while it runs."""

    admitted_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    ended_at: float | None = None
    text_parts: list[str] = field(default_factory=list)
    # How many of `text_parts` reached the client: all of those generated before the last body sent.
    parts_sent: int = 0
    # A delta reached the client (with text, or only tokens or logprobs: what counts as streaming).
    streamed: bool = False
    prompt_tokens: int = 0
    # Of `prompt_tokens`, those the engine's prefix cache served, and those it newly cached.
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    engine_started: bool = False
    engine_finished: bool = False
    status: int = 200
    error: BaseException | None = None
    state: CompletionState | None = None

    def count_prompt(self, tokens: int, cached: int, cache_write: int) -> None:
        """What the engine reports of the prompt(s): their tokens, those cached before and those cached now."""
        self.prompt_tokens, self.cached_tokens, self.cache_write_tokens = tokens, cached, cache_write

    @property
    def text(self) -> str:
        """The whole answer the engine produced."""
        return "".join(self.text_parts)

    @property
    def sent_text(self) -> str:
        """The part of the answer the client has received."""
        return "".join(self.text_parts[: self.parts_sent])

    def ttft(self, arrived_at: float) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - arrived_at

    def end(self, state: CompletionState) -> None:
        """Record how the generation ended; the first ending recorded stands."""
        if self.state is None:
            self.state = state

    def client_left(self) -> None:
        """The client went away (hung up, or stopped reading)."""
        if self.streamed:
            self.end(CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING)
        else:
            self.end(CompletionState.CLIENT_DISCONNECTED_BEFORE_STREAMING)

    def fail(self, error: BaseException) -> None:
        """The generation failed: an engine fault, a queue timeout, a bug."""
        if self.state is None:
            self.error = error
        self.end(CompletionState.UNKNOWN_ERROR_OCCURRED)

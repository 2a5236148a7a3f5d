"""ChatPrompt: one conversation, and how much of it the model gets to see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prompts.formats import FormatName, PromptFormat, Role, Tokenizer, get_format
from prompts.token_counts import CountingTokenizer

_ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """What the engine is given: the (possibly trimmed) prompt as text and token ids."""

    text: str
    token_ids: list[int]
    dropped_messages: int


class TurnTooLong(ValueError):
    """The system prompt plus the newest user turn alone exceed the token budget.

    `newest` is that smallest window, rendered anyway (to show it, not to run it).
    """

    def __init__(self, needed: int, budget: int, newest: RenderedPrompt | None = None) -> None:
        super().__init__(f"the message needs {needed} tokens but the model accepts at most {budget}")
        self.needed = needed
        self.budget = budget
        self.newest = newest


class ChatPrompt:
    """A conversation: an optional system prompt and alternating user/assistant turns.

    `create_prompt()` renders the whole conversation in its format (the model's own
    chat template by default). `render(budget)` gives the engine the newest part
    that fits, dropping the oldest turns first; the conversation itself keeps
    everything. Subclass it (and pass `chat_prompt_clazz=`) to change either.
    """

    def __init__(self, system: str | None = None, format: FormatName | PromptFormat = "template") -> None:
        self.system = system
        self.format: PromptFormat = get_format(format) if isinstance(format, str) else format
        self.messages: list[dict[str, str]] = []
        self._tokenizer: Tokenizer | None = None

    # --- the conversation -------------------------------------------------------

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})

    def add(self, role: Role, text: str) -> None:
        if role not in _ROLES:
            raise ValueError(f"unknown role {role!r}")
        if role == "system":
            self.system = text
        else:
            self.messages.append({"role": role, "content": text})

    def last_user_text(self) -> str | None:
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"]
        return None

    def pop_answer(self) -> str | None:
        """Remove and return the last assistant answer, if the conversation ends with one."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages.pop()["content"]
        return None

    def clear(self) -> None:
        """Forget every turn; the system prompt and format stay."""
        self.messages.clear()

    def forget_oldest(self, keep: int) -> int:
        """Drop the oldest turns so at most `keep` messages remain; returns how many went.

        The cut falls before a user message, so the conversation still opens
        with a question; with `keep >= 2` the newest exchange always stays.
        """
        excess = len(self.messages) - keep
        if excess <= 0:
            return 0
        cut = next((i for i in range(excess, len(self.messages)) if self.messages[i]["role"] == "user"), excess)
        del self.messages[:cut]
        return cut

    def __len__(self) -> int:
        return len(self.messages)

    # --- rendering ----------------------------------------------------------------

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings this conversation's format needs, beyond the model's EOS."""
        return self.format.stop

    def bind(self, tokenizer: Tokenizer) -> ChatPrompt:
        """Attach the model's tokenizer (needed for the `template` format and for budgets)."""
        self._tokenizer = tokenizer
        return self

    def to_messages(self, start: int = 0) -> list[dict[str, str]]:
        """The conversation as chat messages (system first), from turn `start` on."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages[start:]

    def create_prompt(self) -> str:
        """The whole conversation rendered as prompt text, ready for the next answer."""
        return self._render_text(0)

    def render(self, budget: int) -> RenderedPrompt:
        """The newest part of the conversation that fits in `budget` tokens.

        Drops the oldest messages (never the system prompt, never the newest
        turn) until it fits; raises TurnTooLong when even that is too long.
        Only windows near the one that fits are rendered: the size of every
        wider one is estimated from per-message token counts (remembered
        across turns when the tokenizer is a `CountingTokenizer`), then the
        choice is checked by rendering exactly.
        """
        tokenizer = self._require_tokenizer()
        counter = tokenizer if isinstance(tokenizer, CountingTokenizer) else CountingTokenizer(tokenizer)
        # Where a window may start: the whole conversation, or a user turn (templates may
        # reject a conversation that opens with an answer). Later starts render shorter.
        starts = [0] + [i for i, m in enumerate(self.messages) if m["role"] == "user" and i > 0]
        tried: dict[int, RenderedPrompt] = {}

        def attempt(j: int) -> RenderedPrompt:
            if j not in tried:
                text = self._render_text(starts[j])
                tried[j] = RenderedPrompt(text, tokenizer.encode(text), starts[j])
            return tried[j]

        def fits(j: int) -> bool:
            return len(attempt(j).token_ids) <= budget

        # suffix[i]: the tokens of messages i.. on their own, without the format's markup.
        suffix = [0] * (len(self.messages) + 1)
        for i in range(len(self.messages) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + counter.count(self.messages[i]["content"])
        system = counter.count(self.system) if self.system else 0
        if system + suffix[0] <= budget and fits(0):  # the common case: everything fits, one render
            return attempt(0)
        last = len(starts) - 1
        if not fits(last):
            newest = attempt(last)
            raise TurnTooLong(len(newest.token_ids), budget, newest)
        if last == 0:
            return attempt(0)
        # The markup each message adds, learnt from the newest window; then the earliest
        # start whose estimate fits, checked exactly, and corrected by galloping if the
        # estimate was off (the exact answer is the earliest start that fits).
        known = attempt(last)
        start_last = starts[last]
        markup = max(0.0, (len(known.token_ids) - system - suffix[start_last]) / (len(self.messages) - start_last + 1))

        def estimate(j: int) -> float:
            return len(known.token_ids) + suffix[starts[j]] - suffix[start_last] + markup * (start_last - starts[j])

        guess = next(j for j in range(last + 1) if estimate(j) <= budget)
        low, high = 0, last  # the answer is in [low, high]; `high` fits
        step = 1
        if fits(guess):
            high = guess
            while high > low:
                probe = max(low, high - step)
                if not fits(probe):
                    low = probe + 1
                    break
                high, step = probe, step * 2
        else:
            low = guess + 1
            while low < high:
                probe = min(high, low + step - 1)
                if fits(probe):
                    high = probe
                    break
                low, step = probe + 1, step * 2
        while low < high:
            mid = (low + high) // 2
            if fits(mid):
                high = mid
            else:
                low = mid + 1
        return attempt(high)

    def _render_text(self, start: int) -> str:
        messages = self.to_messages(start)
        wants_answer = bool(messages) and messages[-1]["role"] == "user"
        return self.format.render(messages, wants_answer, self._tokenizer)

    def _require_tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise RuntimeError("ChatPrompt.render needs a tokenizer: call bind() first")
        return self._tokenizer

    # --- persistence ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (the tokenizer binding is not part of it)."""
        return {"system": self.system, "format": self.format.name, "messages": [dict(m) for m in self.messages]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatPrompt:
        prompt = cls(system=data.get("system"), format=data.get("format", "template"))
        for m in data.get("messages", []):
            if not isinstance(m, Mapping) or m.get("role") not in ("user", "assistant"):
                raise ValueError("a stored message must have role 'user' or 'assistant'")
            prompt.messages.append({"role": str(m["role"]), "content": str(m.get("content", ""))})
        return prompt

    def snapshot(self) -> tuple[str | None, list[dict[str, str]]]:
        """The state to come back to with restore() when a turn produces nothing."""
        return self.system, [dict(m) for m in self.messages]

    def restore(self, snapshot: tuple[str | None, Sequence[Mapping[str, str]]]) -> None:
        self.system, self.messages = snapshot[0], [dict(m) for m in snapshot[1]]

"""ChatPrompt: one conversation, and how much of it the model gets to see."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prompts.formats import FormatName, PromptFormat, Role, Tokenizer, get_format

_ROLES: frozenset[str] = frozenset({"system", "user", "assistant"})


class TurnTooLong(ValueError):
    """The system prompt plus the newest user turn alone exceed the token budget."""

    def __init__(self, needed: int, budget: int) -> None:
        super().__init__(f"the message needs {needed} tokens but the model accepts at most {budget}")
        self.needed = needed
        self.budget = budget


@dataclass(frozen=True, slots=True)
class RenderedPrompt:
    """What the engine is given: the (possibly trimmed) prompt as text and token ids."""

    text: str
    token_ids: list[int]
    dropped_messages: int


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
        """
        tokenizer = self._require_tokenizer()
        text = self._render_text(0)
        ids = tokenizer.encode(text)
        if len(ids) <= budget:
            return RenderedPrompt(text, ids, 0)
        # Drop whole turns (a cut starts at a user message: templates may reject a
        # conversation that opens with an answer). Rendering shrinks as the cut moves
        # later, so search for the earliest cut that fits.
        cuts = [i for i, m in enumerate(self.messages) if m["role"] == "user" and i > 0]
        low, high = 0, len(cuts) - 1
        best: RenderedPrompt | None = None
        while low <= high:
            mid = (low + high) // 2
            mid_text = self._render_text(cuts[mid])
            mid_ids = tokenizer.encode(mid_text)
            if len(mid_ids) <= budget:
                best, high = RenderedPrompt(mid_text, mid_ids, cuts[mid]), mid - 1
            else:
                low = mid + 1
        if best is None:
            newest = cuts[-1] if cuts else 0
            needed = len(tokenizer.encode(self._render_text(newest)))
            raise TurnTooLong(needed, budget)
        return best

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

"""CountingTokenizer: a tokenizer that remembers how many tokens each message takes.

Trimming a long conversation to the context needs the size of every message;
encoding the whole history again on every turn is what made long
conversations slow. The counts are kept by text (its length and hash, never
the text itself), so each message is encoded once per process. A count is
only ever an estimate for choosing the window: the window chosen is rendered
and encoded exactly, so a stale or colliding entry costs time, never a wrong
prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

from prompts.formats import Tokenizer


class CountingTokenizer:
    """`tokenizer`, plus `count(text)`: its token count, remembered for up to `max_entries` texts."""

    def __init__(self, tokenizer: Tokenizer, max_entries: int = 200_000) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._counts: dict[tuple[int, int], int] = {}
        # Renders run on worker threads (gateway.core.offload).
        self._lock = threading.Lock()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.render_chat(messages, add_generation_prompt)

    def count(self, text: str) -> int:
        """How many tokens `text` encodes to on its own."""
        key = (len(text), hash(text))
        with self._lock:
            found = self._counts.get(key)
        if found is not None:
            return found
        count = len(self.tokenizer.encode(text))
        with self._lock:
            if len(self._counts) >= self.max_entries:  # the oldest half goes: dicts keep insertion order
                for old in list(self._counts)[: self.max_entries // 2]:
                    del self._counts[old]
            self._counts[key] = count
        return count

"""How session values are spelled in stores that keep text (Redis, SQL): JSON, with ChatPrompts tagged."""

from __future__ import annotations

import json
import sys
from typing import Any

from prompts import ChatPrompt

_PROMPT_TAG = "__chat_prompt__"


def encode_value(value: Any) -> str:
    """JSON for one session value; ChatPrompt objects (and subclasses) round-trip."""
    if isinstance(value, ChatPrompt):
        cls = type(value)
        return json.dumps({_PROMPT_TAG: f"{cls.__module__}:{cls.__qualname__}", "data": value.to_dict()})
    return json.dumps(value)


def decode_value(raw: str | bytes) -> Any:
    value = json.loads(raw)
    if isinstance(value, dict) and _PROMPT_TAG in value:
        module, _, name = str(value[_PROMPT_TAG]).partition(":")
        # Only classes already imported, and only ChatPrompt classes, whatever the
        # stored name says: stored data never decides what code is loaded.
        cls = getattr(sys.modules.get(module), name, None)
        if not (isinstance(cls, type) and issubclass(cls, ChatPrompt)):
            cls = ChatPrompt
        return cls.from_dict(value["data"])
    return value

"""How session values are stored as text (session stores, the conversation database): JSON, ChatPrompts tagged."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from typing import Any

from prompts import ChatPrompt

logger = logging.getLogger(__name__)

_PROMPT_TAG = "__chat_prompt__"


def encode_value(value: Any) -> str:
    """JSON for one session value; ChatPrompt objects (and subclasses) round-trip.

    ASCII only (`ensure_ascii`), so the length of the text is the bytes it takes.
    """
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


def decode_session(fields: Mapping[Any, str | bytes]) -> dict[str, Any] | None:
    """A stored session's values, or None (logged) when any of them cannot be decoded.

    Undecodable data (written by another version, or damaged) is treated like an
    unknown session: the request starts a fresh one instead of failing for as long
    as the bad data lives.
    """
    try:
        return {(k.decode() if isinstance(k, bytes) else k): decode_value(v) for k, v in fields.items()}
    except Exception as exc:
        logger.warning("a stored session could not be decoded (%s): starting a fresh session", type(exc).__name__)
        return None

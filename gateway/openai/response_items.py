"""Responses API items: what a client sends, as it is stored, and as chat messages for the engine.

Every item is stored whole, in the shape OpenAI returns it (an `id`, a
`status`, content as a list of parts), so `input_items` and conversation item
lists answer with it as it is. For the engine, a chain of items becomes the
chat messages of the OpenAI chat route (the same renderer, template and tool
parser): a `message` is a message, a `function_call` an assistant tool call,
a `function_call_output` a `tool` message. An item the gateway cannot use is
a 400 that names it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.core.errors import BadChatRequest, NotFound

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")


def new_id(prefix: str) -> str:
    """An unguessable id: OpenAI's prefix (`resp`, `conv`, `msg`, `fc` ...), then 24 random bytes."""
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def input_items(value: str | Sequence[Any], param: str = "input") -> list[dict[str, Any]]:
    """A request's `input` (a string, or items) as stored items, each with an id; 400 naming what is unusable."""
    if isinstance(value, str):
        return [_message("user", value)] if value else []
    return [_item(raw, f"{param}[{i}]") for i, raw in enumerate(value)]


def _item(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadChatRequest(f"{where} must be an object", param=where)
    kind = raw.get("type", "message")
    if kind == "message":
        role = raw.get("role")
        if role not in _ROLES:
            raise BadChatRequest(f"{where}.role must be one of {', '.join(_ROLES)}", param=f"{where}.role")
        return _message(role, _text(raw.get("content"), f"{where}.content"), raw.get("id"))
    if kind == "function_call":
        call_id, name, arguments = (_string(raw, key, where) for key in ("call_id", "name", "arguments"))
        item_id = raw.get("id") or new_id("fc")
        return {"type": kind, "id": item_id, "call_id": call_id, "name": name, "arguments": arguments, **_DONE}
    if kind == "function_call_output":
        call_id = _string(raw, "call_id", where)
        output = raw.get("output")
        if not isinstance(output, str):
            output = _text(output, f"{where}.output")
        return {"type": kind, "id": raw.get("id") or new_id("fco"), "call_id": call_id, "output": output, **_DONE}
    if kind == "reasoning":
        # An earlier answer's reasoning, sent back by agents: kept, never rendered (chat templates
        # drop the reasoning of earlier turns too).
        summary = raw.get("summary") if isinstance(raw.get("summary"), list) else []
        return {"type": kind, "id": raw.get("id") or new_id("rs"), "summary": summary, **_DONE}
    raise BadChatRequest(f"{where}: items of type {str(kind)[:64]!r} are not supported by this server", param=where)


_DONE = {"status": "completed"}


def _message(role: str, text: str, item_id: str | None = None) -> dict[str, Any]:
    if role == "assistant":
        part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    else:
        part = {"type": "input_text", "text": text}
    return {"type": "message", "id": item_id or new_id("msg"), "role": role, "content": [part], **_DONE}


def output_message(text: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    """An answer's text as an assistant message item."""
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": item_id, "role": "assistant", "content": [part], "status": status}


def function_call(call_id: str, name: str, arguments: str, item_id: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def _string(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise BadChatRequest(f"{where}.{key} must be a string", param=f"{where}.{key}")
    return value


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, or text parts (other parts are refused by name)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise BadChatRequest(f"{where} must be a string or a list of content parts", param=where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            what = f"content parts of type {str(kind)[:64]!r} are" if kind else "content parts without a type are"
            raise BadChatRequest(f"{where}[{i}]: {what} not supported by this server", param=f"{where}[{i}]")
        texts.append(part["text"])
    return "".join(texts)


def message_text(item: dict[str, Any]) -> str:
    """The text of a stored message item."""
    return "".join(str(part.get("text", "")) for part in item.get("content", []))


def chat_messages(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stored items as the chat route's messages: consecutive function calls join one assistant turn."""
    messages: list[dict[str, Any]] = []
    for item in items:
        kind = item["type"]
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            messages.append({"role": role, "content": message_text(item)})
        elif kind == "function_call":
            call = {"id": item["call_id"], "type": "function", "function": {"name": item["name"]}}
            call["function"]["arguments"] = item["arguments"]
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the calls of one answer: one message
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages


def turn_starts(messages: Sequence[dict[str, Any]]) -> list[int]:
    """Where each turn starts (each user message): the places a too-long chain may be cut."""
    return [i for i, message in enumerate(messages) if message["role"] == "user"]


def item_list(items: Sequence[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """One page of items as OpenAI lists them: `limit` (1 to 100, 20), `order` (`desc` newest first,
    the default, or `asc`), `after` (an item id: the page starts past it)."""
    limit_text, order = query.get("limit", "20"), query.get("order", "desc")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= 100:
        raise BadChatRequest("limit must be an integer from 1 to 100", param="limit")
    if order not in ("asc", "desc"):
        raise BadChatRequest("order must be asc or desc", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after is not None:
        ids = [item.get("id") for item in ordered]
        if after not in ids:
            raise NotFound(f"No item found with id {after[:80]!r}.", param="after")
        ordered = ordered[ids.index(after) + 1 :]
    page = ordered[: int(limit_text)]
    return {
        "object": "list",
        "data": page,
        "has_more": len(ordered) > len(page),
        "first_id": page[0]["id"] if page else "",
        "last_id": page[-1]["id"] if page else "",
    }

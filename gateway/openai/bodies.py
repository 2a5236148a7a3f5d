"""Request bodies read into their models, and refusals spelled in words.

A body pydantic refuses becomes one `BadChatRequest` that names the field and
says what it must be, never pydantic's own dump. A field the model does not
know (vLLM's request models take any field, as OpenAI's API does) is logged
once at WARNING and otherwise ignored, as vLLM ignores it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.core.errors import BadChatRequest

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

# pydantic names the member of a union in an error's location ("str", "ChatCompletionUserMessageParam",
# "list[...]"); field names are lower-case words.
_UNION_TAG = re.compile(r"str|int|float|bool|none|[a-z-]+\[.*\]|function-\w+|[A-Z]\w*")
_WHAT = {
    "string_type": "a string",
    "iterable_type": "a list",
    "list_type": "a list",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "typed_dict_type": "an object",
    "none_required": "null",
}
# Field names never warned about again; bounded, so a client cannot grow it forever.
_warned: set[str] = set()
_MAX_WARNED = 256


def json_object(body: bytes | str) -> dict[str, Any]:
    """`body` as a JSON object, or a `BadChatRequest` saying what it is not."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        raise BadChatRequest("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadChatRequest("the body must be a JSON object")
    return data


def parse(
    model: type[M],
    body: bytes | str | dict[str, Any],
    *,
    refused: tuple[type[Exception], ...] = (),
    containers: dict[str, type] | None = None,
) -> M:
    """`body` read into `model`; a `BadChatRequest` in words when it does not fit.

    `refused` lists exceptions a model's own validators raise for a bad request
    (vLLM's VLLMValidationError); their message is the reason given.
    `containers` names fields that must be a JSON array (list) or object (dict)
    before the model sees them: vLLM's validators walk them before checking them.
    """
    data = body if isinstance(body, dict) else json_object(body)
    for name, kind in (containers or {}).items():
        if data.get(name) is not None and not isinstance(data[name], kind):
            raise BadChatRequest(f"{name} must be {_WHAT[kind.__name__ + '_type']}", param=name)
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        message, param = describe(exc)
        raise BadChatRequest(message, param=param) from None
    except refused as exc:
        raise BadChatRequest(str(exc.args[0]) if exc.args else "invalid request", param=_param_of(exc)) from None
    except (TypeError, KeyError, AttributeError, IndexError):
        # A model's own validator walked into a field of the wrong shape before checking it.
        raise BadChatRequest("a field of the body has the wrong type or shape") from None
    warn_ignored(value.model_extra or {})
    return value


def warn_ignored(fields: Iterable[str]) -> None:
    """Log each field the server ignores, once per field name."""
    for name in fields:
        if name not in _warned and len(_warned) < _MAX_WARNED:
            _warned.add(name)
            logger.warning("requests carry the field %r, which this server ignores", name[:64])


def _param_of(exc: Exception) -> str | None:
    param = getattr(exc, "parameter", None)
    return param if isinstance(param, str) else None


def describe(exc: ValidationError) -> tuple[str, str | None]:
    """A message and the offending field for a body pydantic refused, without echoing the input."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if any(e["type"] == "json_invalid" for e in errors):
        return "the body is not valid JSON", None
    # Errors inside a union come once per member: keep those of the members the value
    # meant to be (whose tag, e.g. the message's role, matched), then merge them by field.
    branches: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for error in errors:
        path, branch = _split(error["loc"])
        branches.setdefault(branch, []).append((path, dict(error)))
    meant = {b: errs for b, errs in branches.items() if not any(e["type"] == "literal_error" for _, e in errs)}
    chosen = meant or branches
    several = len(chosen) > 1
    by_path: dict[str, list[str]] = {}
    for errs in chosen.values():
        for path, found in errs:
            # A field only one member requires does not tell which member the client meant.
            if several and found["type"] == "missing" and any(e["type"] != "missing" for _, e in errs):
                continue
            by_path.setdefault(path, []).append(_reason(found))
    parts = []
    for path, reasons in by_path.items():
        unique = list(dict.fromkeys(reasons))
        kinds = [r.removeprefix("must be ") for r in unique if r.startswith("must be ")]
        reason = "must be " + " or ".join(kinds) if len(kinds) == len(unique) else "; ".join(unique)
        parts.append(f"{path or 'the body'}: {reason}")
    param = next(iter(by_path), None) or None
    return "; ".join(parts[:4]), param


def _split(loc: tuple[int | str, ...]) -> tuple[str, str]:
    path, branch = "", ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _UNION_TAG.fullmatch(part):
            branch = branch or part
        else:
            path += f".{part}" if path else part
    return path, branch


def _reason(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _WHAT:
        return f"must be {_WHAT[kind]}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not supported"
    message = str(error.get("msg", "is not valid")).removeprefix("Value error, ")
    return message[:1].lower() + message[1:]

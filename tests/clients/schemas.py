"""Tools and output schemas shared by the tests and the client drivers (plain data, no imports)."""

from __future__ import annotations

from typing import Any

# Bounded strings and numbers: constrained decoding on a random-weight model then ends in a few hundred tokens.
WEATHER_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}

ADD_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
    "additionalProperties": False,
}

PERSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


def function_tool(name: str, parameters: dict[str, Any], *, strict: bool | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name, "description": f"The {name} function", "parameters": parameters}
    if strict is not None:
        function["strict"] = strict
    return {"type": "function", "function": function}

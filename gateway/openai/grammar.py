"""JSON schemas made safe for vLLM's grammar backend before they constrain an answer.

xgrammar (vLLM's default structured-output backend) compiles a string with
`minLength` or `maxLength` to a character class that lets raw control
characters (U+0000 to U+001F) through, and JSON forbids them inside strings:
vLLM 0.32 then returns "JSON" that `json.loads`, pydantic and its own tool
parser reject (tests/clients/README.md). Here such a string gets the same
bounds as a `pattern` of characters JSON allows unescaped, which xgrammar
compiles exactly. The schema the client sent is unchanged everywhere else (the
prompt shows it as sent); only the grammar sees this copy.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

_KEEP = ("pattern", "format", "enum", "const")


def _bounded_string(node: dict[str, Any]) -> bool:
    return (
        node.get("type") == "string"
        and ("minLength" in node or "maxLength" in node)
        and not any(key in node for key in _KEEP)
    )


def strict_strings(node: Any) -> Any:
    """`node` (a JSON schema, or any JSON holding schemas) with every bounded string spelled as a pattern."""
    if isinstance(node, list):
        return [strict_strings(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict_strings(value) for key, value in node.items()}
    if _bounded_string(out):
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        # No quote, backslash or control character; the bounds as the schema gave them.
        out["pattern"] = f'^[^\\x00-\\x1f"\\\\]{{{low},{high}}}$'
    return out


def strict_structured_outputs(params: Any) -> Any:
    """vLLM `StructuredOutputsParams` whose JSON schemas (plain or inside a structural tag) are made strict."""
    if params is None:
        return None
    changes: dict[str, Any] = {}
    try:
        if params.json is not None:
            schema = json.loads(params.json) if isinstance(params.json, str) else params.json
            changes["json"] = strict_strings(schema)
        if params.structural_tag is not None:
            changes["structural_tag"] = json.dumps(strict_strings(json.loads(params.structural_tag)))
    except ValueError:  # not JSON: vLLM refuses it in its own words
        return params
    return dataclasses.replace(params, **changes) if changes else params

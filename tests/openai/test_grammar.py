"""JSON schemas made safe for xgrammar (gateway/openai/grammar.py).

Regression: vLLM 0.32's grammar backend let raw control characters into length-bounded JSON
strings, so `json_schema` answers and strict tool calls were JSON no parser accepts
(tests/clients/README.md).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.openai.grammar import strict_strings, strict_structured_outputs

NAME = {"type": "string", "maxLength": 5}
SCHEMA = {
    "type": "object",
    "properties": {"name": NAME, "type": {"type": "string", "minLength": 2}, "tags": {"type": "array", "items": NAME}},
    "required": ["name"],
}


def test_bounded_strings_become_patterns_with_the_same_bounds_and_nothing_else_changes() -> None:
    strict = strict_strings(SCHEMA)
    properties = strict["properties"]
    assert properties["name"] == {"type": "string", "pattern": '^[^\\x00-\\x1f"\\\\]{0,5}$'}
    # a property named "type" is a field name, not a keyword: its schema is rewritten as any other
    assert properties["type"] == {"type": "string", "pattern": '^[^\\x00-\\x1f"\\\\]{2,}$'}
    assert properties["tags"]["items"] == properties["name"]
    assert strict["required"] == ["name"] and SCHEMA["properties"]["name"] == NAME  # the original is untouched
    for kept in ({"type": "string"}, {"type": "string", "maxLength": 3, "pattern": "a+"}, {"type": "integer"}):
        assert strict_strings(kept) == kept


def test_xgrammar_admits_a_control_character_in_a_bounded_string_and_the_rewritten_schema_does_not() -> None:
    xgrammar = pytest.importorskip("xgrammar")
    from xgrammar.testing import _is_grammar_accept_string as accepts

    def grammar(schema: dict[str, Any]) -> Any:
        return xgrammar.Grammar.from_json_schema(json.dumps(schema))

    loose, strict = grammar(NAME), grammar(strict_strings(NAME))
    assert accepts(loose, '"a\bb"')  # the bug: U+0008 raw inside a JSON string
    assert not accepts(strict, '"a\bb"') and not accepts(strict, '"a\x17"')
    assert accepts(strict, '"abcde"') and accepts(strict, '""') and not accepts(strict, '"abcdef"')


def test_the_schemas_inside_a_structural_tag_and_a_json_constraint_are_made_strict() -> None:
    sampling = pytest.importorskip("vllm.sampling_params")
    tag = {
        "type": "structural_tag",
        "format": {
            "type": "tag",
            "begin": "<x>",
            "content": {"type": "json_schema", "json_schema": SCHEMA},
            "end": "</x>",
        },
    }
    made = strict_structured_outputs(sampling.StructuredOutputsParams(structural_tag=json.dumps(tag)))
    content = json.loads(made.structural_tag)["format"]["content"]["json_schema"]
    assert content == strict_strings(SCHEMA)
    made = strict_structured_outputs(sampling.StructuredOutputsParams(json=json.dumps(SCHEMA)))
    assert made.json == strict_strings(SCHEMA)
    regex = sampling.StructuredOutputsParams(regex="a+")
    assert strict_structured_outputs(regex) is regex

"""pydantic-ai: an Agent on `OpenAIChatModel` with a text answer, a tool, and a structured `output_type`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from tests.clients.schemas import ADD_PARAMETERS, PERSON_SCHEMA
from tests.clients.test_openai_sdk import VLLM_LOOSE_TOOL_ARGUMENTS


def test_a_text_answer_in_one_request(run_client: Callable[..., Any]) -> None:
    result = run_client("pydantic_ai", "text")
    assert isinstance(result["output"], str)
    assert result["requests"] == 1
    assert result["input_tokens"] > 0 and 0 < result["output_tokens"] <= 16


@pytest.mark.gateway_only(VLLM_LOOSE_TOOL_ARGUMENTS)
def test_a_tool_is_called_with_valid_arguments_and_its_result_is_the_output(run_client: Callable[..., Any]) -> None:
    # pydantic-ai forces the call (tool_choice "required") without `strict`, to its output tool: a
    # single output function is offered as `final_result`, with the function's parameters.
    result = run_client("pydantic_ai", "tool")
    assert result["calls"]
    first = result["calls"][0]
    assert first["name"] == "final_result"
    jsonschema.validate(first["args"], ADD_PARAMETERS)
    assert result["output"] == first["args"]["a"] + first["args"]["b"]


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("tool", id="tool-output", marks=pytest.mark.gateway_only(VLLM_LOOSE_TOOL_ARGUMENTS)),
        pytest.param("native", id="native-output"),
    ],
)
def test_output_type_gives_a_schema_valid_object(run_client: Callable[..., Any], mode: str) -> None:
    result = run_client("pydantic_ai", "output_type", mode=mode)
    jsonschema.validate(result["output"], PERSON_SCHEMA)
    if mode == "tool":
        assert [c["name"] for c in result["calls"]][-1:] == ["final_result"]

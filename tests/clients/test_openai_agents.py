"""openai-agents: an Agent on `OpenAIChatCompletionsModel`, answering and calling a function tool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema

from tests.clients.schemas import ADD_PARAMETERS


def test_a_text_answer_in_one_request(run_client: Callable[..., Any]) -> None:
    result = run_client("agents", "text")
    assert isinstance(result["output"], str)
    assert result["requests"] == 1
    assert result["input_tokens"] > 0 and 0 < result["output_tokens"] <= 16


def test_a_required_tool_call_runs_the_tool_with_schema_valid_arguments(run_client: Callable[..., Any]) -> None:
    result = run_client("agents", "tool")
    assert result["strict"] is True  # the Agents SDK sends strict function schemas
    assert result["calls"], "the tool never ran"
    for call in result["calls"]:
        jsonschema.validate(call, ADD_PARAMETERS)
        jsonschema.validate(call, result["tool_schema"])
    # stop_on_first_tool: the first call's result is the final output.
    first = result["calls"][0]
    assert result["output"] == str(first["a"] + first["b"])

"""LangChain `ChatOpenAI`: invoke, stream, batch, bind_tools and with_structured_output."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest

from tests.clients.conftest import Target
from tests.clients.schemas import PERSON_SCHEMA, WEATHER_PARAMETERS
from tests.clients.test_openai_sdk import VLLM_CONTROL_CHARACTERS, VLLM_LOOSE_TOOL_ARGUMENTS


def assert_answer(message: dict[str, Any], max_tokens: int, target: Target) -> None:
    assert isinstance(message["content"], str)
    assert message["tool_calls"] == [] and message["invalid_tool_calls"] == []
    assert message["model_name"] == target.model
    assert message["finish_reason"] in ("stop", "length")
    usage = message["usage"]
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= max_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    if message["finish_reason"] == "length":
        assert usage["output_tokens"] == max_tokens


def test_invoke(run_client: Callable[..., Any], openai_target: Target) -> None:
    assert_answer(run_client("langchain", "invoke"), 16, openai_target)


def test_stream_yields_chunks_that_add_up_to_the_answer_with_usage(
    run_client: Callable[..., Any], openai_target: Target
) -> None:
    streamed = run_client("langchain", "stream")
    assert streamed["chunks"] > 2  # streamed, not one block
    assert "".join(streamed["texts"]) == streamed["whole"]["content"]
    assert_answer(streamed["whole"], 16, openai_target)
    # Same request, same seed: streaming does not change the answer.
    assert streamed["whole"]["content"] == run_client("langchain", "invoke")["content"]


def test_batch_answers_each_input_in_order(run_client: Callable[..., Any], openai_target: Target) -> None:
    answers = run_client("langchain", "batch")
    assert len(answers) == 3
    for answer in answers:
        assert_answer(answer, 8, openai_target)
    # Different prompts, different prompt lengths: the answers are not shuffled.
    assert [a["usage"]["input_tokens"] for a in answers] == sorted(a["usage"]["input_tokens"] for a in answers)


@pytest.mark.parametrize(
    ("tool_choice", "strict"),
    [
        pytest.param("GetWeather", True, id="named-strict", marks=pytest.mark.gateway_only(VLLM_CONTROL_CHARACTERS)),
        pytest.param("any", True, id="any-strict", marks=pytest.mark.gateway_only(VLLM_CONTROL_CHARACTERS)),
        pytest.param("GetWeather", None, id="named", marks=pytest.mark.gateway_only(VLLM_LOOSE_TOOL_ARGUMENTS)),
    ],
)
def test_bind_tools_with_a_forced_choice_gets_schema_valid_arguments(
    run_client: Callable[..., Any], tool_choice: str, strict: bool | None
) -> None:
    message = run_client("langchain", "bind_tools", tool_choice=tool_choice, strict=strict)
    assert message["invalid_tool_calls"] == []
    assert message["tool_calls"], f"no tool call; content {message['content']!r}"
    for call in message["tool_calls"]:
        assert call["name"] == "GetWeather" and call["id"]
        jsonschema.validate(call["args"], WEATHER_PARAMETERS)


def test_bind_tools_with_auto_choice_answers_text_or_a_valid_call(run_client: Callable[..., Any]) -> None:
    message = run_client("langchain", "bind_tools", tool_choice="auto", strict=None)
    assert message["invalid_tool_calls"] == []
    for call in message["tool_calls"]:
        jsonschema.validate(call["args"], WEATHER_PARAMETERS)
    if not message["tool_calls"]:
        assert isinstance(message["content"], str)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("json_schema", id="json_schema"),
        pytest.param(
            "function_calling", id="function_calling", marks=pytest.mark.gateway_only(VLLM_LOOSE_TOOL_ARGUMENTS)
        ),
    ],
)
def test_with_structured_output_parses_a_schema_valid_object(run_client: Callable[..., Any], method: str) -> None:
    result = run_client("langchain", "structured_output", method=method)
    assert result["parsing_error"] is None
    jsonschema.validate(result["parsed"], PERSON_SCHEMA)

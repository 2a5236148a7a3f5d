"""openai-agents: an Agent on `OpenAIChatCompletionsModel`, answering and calling a function tool, and a
two-turn Agent on the SDK's default model (the Responses API), chained on the server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from openai import OpenAI

from tests.clients.conftest import Target
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


# vLLM's server keeps responses only in one process's memory, and only behind VLLM_ENABLE_RESPONSES_API_STORE.
@pytest.mark.gateway_only("responses are stored and chained by previous_response_id")
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run-streamed"])
def test_the_default_responses_model_runs_a_two_turn_agent_chained_on_the_server(
    run_client: Callable[..., Any], openai_target: Target, streamed: bool
) -> None:
    result = run_client("agents", "responses_tool", streamed=streamed)
    assert result["calls"], "turn 1: the forced call never ran the tool"
    for call in result["calls"]:  # one answer may hold several calls (parallel_tool_calls)
        jsonschema.validate(call, ADD_PARAMETERS)
        jsonschema.validate(call, result["tool_schema"])
    assert isinstance(result["output"]["correct"], bool)  # turn 2: the structured answer
    first, second = result["response_ids"]
    assert result["requests"] == 2
    # The second turn continued the first by previous_response_id: the server kept the chain.
    with OpenAI(base_url=openai_target.base_url, api_key="EMPTY", max_retries=0) as api:
        assert api.responses.retrieve(second).previous_response_id == first

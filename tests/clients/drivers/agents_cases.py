"""openai-agents cases: an Agent on a chat-completions model, and on the SDK's default Responses model."""

from __future__ import annotations

import asyncio
from typing import Any

from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from openai import AsyncOpenAI
from pydantic import BaseModel

from tests.clients.drivers.common import API_KEY, BASE_URL, JSON_MAX_TOKENS, MODEL, TIMEOUT

# Tracing uploads to OpenAI's servers by default; nothing leaves this machine.
set_tracing_disabled(True)

ADDED: list[dict[str, int]] = []


@function_tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    ADDED.append({"a": a, "b": b})
    return a + b


def model() -> OpenAIChatCompletionsModel:
    client = AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, timeout=TIMEOUT, max_retries=0)
    return OpenAIChatCompletionsModel(model=MODEL, openai_client=client)


def text() -> dict[str, Any]:
    agent = Agent(
        name="terse",
        instructions="Answer briefly.",
        model=model(),
        model_settings=ModelSettings(max_tokens=16, extra_args={"seed": 0}),
    )
    result = Runner.run_sync(agent, "What is a queue?", max_turns=1)
    usage = result.context_wrapper.usage
    return {
        "output": result.final_output,
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


def tool() -> dict[str, Any]:
    # A forced call whose result ends the run: one model request, one tool execution.
    agent = Agent(
        name="adder",
        instructions="Use the add tool.",
        model=model(),
        tools=[add],
        tool_use_behavior="stop_on_first_tool",
        model_settings=ModelSettings(
            tool_choice="required",
            max_tokens=JSON_MAX_TOKENS,
            temperature=1.0,
            extra_body={"seed": 0},
        ),
    )
    result = Runner.run_sync(agent, "Add 2 and 3.", max_turns=2)
    return {
        "output": result.final_output,
        "calls": ADDED,
        "tool_schema": add.params_json_schema,
        "strict": add.strict_json_schema,
    }


@function_tool(name_override="add", strict_mode=False)
def add_loose(a: int, b: int) -> int:
    """Add two integers."""
    ADDED.append({"a": a, "b": b})
    return a + b


class Verdict(BaseModel):
    correct: bool


def responses_tool(streamed: bool) -> dict[str, Any]:
    """Two turns on the default model (the Responses API), chained on the server by previous_response_id:
    a forced call of `add`, then an answer. The answer is structured, so the grammar ends it (a
    random-weight model's free text would run to its token limit and end `incomplete`)."""
    set_default_openai_client(AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, timeout=TIMEOUT, max_retries=0))
    set_default_openai_api("responses")
    agent = Agent(
        name="checker",
        instructions="Use the add tool, then say whether 2 + 3 is 5.",
        model=MODEL,  # a name, so the SDK's default model: OpenAIResponsesModel
        # Not strict: with tool_choice auto, vLLM's grammar for a strict tool lets the model call it
        # again instead of answering; the gateway constrains a forced call to the schema either way.
        tools=[add_loose],
        output_type=Verdict,
        model_settings=ModelSettings(
            tool_choice="required",
            max_tokens=JSON_MAX_TOKENS,
            temperature=1.0,
            extra_body={"seed": 0},
        ),
    )

    async def run() -> Any:
        if not streamed:
            return await Runner.run(agent, "Add 2 and 3.", max_turns=3, auto_previous_response_id=True)
        result = Runner.run_streamed(agent, "Add 2 and 3.", max_turns=3, auto_previous_response_id=True)
        async for _ in result.stream_events():
            pass
        return result

    result = asyncio.run(run())
    return {
        "output": result.final_output.model_dump(),
        "calls": ADDED,
        "tool_schema": add_loose.params_json_schema,
        "response_ids": [response.response_id for response in result.raw_responses],
        "requests": result.context_wrapper.usage.requests,
    }


CASES = {"text": text, "tool": tool, "responses_tool": responses_tool}

"""openai-agents cases: an Agent on a chat-completions model (not the Responses API)."""

from __future__ import annotations

from typing import Any

from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

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
            tool_choice="required", max_tokens=JSON_MAX_TOKENS, temperature=1.0, extra_args={"seed": 0}
        ),
    )
    result = Runner.run_sync(agent, "Add 2 and 3.", max_turns=2)
    return {
        "output": result.final_output,
        "calls": ADDED,
        "tool_schema": add.params_json_schema,
        "strict": add.strict_json_schema,
    }


CASES = {"text": text, "tool": tool}

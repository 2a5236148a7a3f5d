"""pydantic-ai cases: an Agent on an OpenAI-compatible chat model."""

from __future__ import annotations

from typing import Any

from openai import AsyncOpenAI
from pydantic import BaseModel, Field
from pydantic_ai import Agent, NativeOutput, RunContext
from pydantic_ai.messages import ModelResponse, ToolCallPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings

from tests.clients.drivers.common import API_KEY, BASE_URL, JSON_MAX_TOKENS, MODEL, TIMEOUT


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def model() -> OpenAIChatModel:
    client = AsyncOpenAI(base_url=BASE_URL, api_key=API_KEY, timeout=TIMEOUT, max_retries=0)
    return OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))


def calls(messages: list[Any]) -> list[dict[str, Any]]:
    return [
        {"name": part.tool_name, "args": part.args_as_dict()}
        for m in messages
        if isinstance(m, ModelResponse)
        for part in m.parts
        if isinstance(part, ToolCallPart)
    ]


def text() -> dict[str, Any]:
    agent = Agent(model(), model_settings=ModelSettings(max_tokens=16, seed=0))
    result = agent.run_sync("What is a queue?")
    usage = result.usage
    return {
        "output": result.output,
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


def tool() -> dict[str, Any]:
    # The tool's return value is the agent's output: one forced call, then done.
    agent = Agent(
        model(),
        output_type=[add],
        model_settings=ModelSettings(max_tokens=JSON_MAX_TOKENS, seed=0, temperature=1.0),
    )
    result = agent.run_sync("Add 2 and 3.")
    return {"output": result.output, "calls": calls(result.all_messages()), "requests": result.usage.requests}


def add(ctx: RunContext[None], a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def output_type(mode: str) -> dict[str, Any]:
    # "tool": pydantic-ai's default, a forced `final_result` tool call; "native": response_format json_schema.
    agent = Agent(
        model(),
        output_type=Person if mode == "tool" else NativeOutput(Person),
        retries=0,
        model_settings=ModelSettings(max_tokens=JSON_MAX_TOKENS, seed=0, temperature=1.0),
    )
    result = agent.run_sync("Describe a person.")
    return {"output": result.output.model_dump(), "calls": calls(result.all_messages())}


CASES = {"text": text, "tool": tool, "output_type": output_type}

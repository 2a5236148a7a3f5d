"""LangChain `ChatOpenAI` cases: what a LangChain user gets back, as JSON."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from tests.clients.drivers.common import API_KEY, BASE_URL, JSON_MAX_TOKENS, MODEL, TIMEOUT

QUESTION = "What is the weather in Paris?"


class GetWeather(BaseModel):
    """The weather in a city"""  # LangChain sends the docstring as the tool's description

    city: str = Field(max_length=20)
    days: int = Field(ge=1, le=7)


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def chat(**kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=API_KEY, timeout=TIMEOUT, max_retries=0, **kwargs)


def message(m: BaseMessage) -> dict[str, Any]:
    assert isinstance(m, AIMessage)
    return {
        "content": m.content,
        "tool_calls": [{"name": c["name"], "args": c["args"], "id": c["id"]} for c in m.tool_calls],
        "invalid_tool_calls": [dict(c) for c in m.invalid_tool_calls],
        "usage": dict(m.usage_metadata) if m.usage_metadata else None,
        "finish_reason": m.response_metadata.get("finish_reason"),
        "model_name": m.response_metadata.get("model_name"),
    }


def invoke() -> dict[str, Any]:
    return message(chat(max_tokens=16, seed=0).invoke(QUESTION))


def stream() -> dict[str, Any]:
    chunks = list(chat(max_tokens=16, seed=0, stream_usage=True).stream(QUESTION))
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return {"chunks": len(chunks), "texts": [c.content for c in chunks], "whole": message(total)}


def batch() -> list[dict[str, Any]]:
    answers = chat(max_tokens=8, seed=0).batch(["hello", "what is a queue?", "say something"])
    return [message(m) for m in answers]


def bind_tools(tool_choice: str, strict: bool | None) -> dict[str, Any]:
    model = chat(max_tokens=JSON_MAX_TOKENS, seed=0, temperature=1.0)
    return message(model.bind_tools([GetWeather], tool_choice=tool_choice, strict=strict).invoke(QUESTION))


def structured_output(method: str) -> dict[str, Any]:
    model = chat(max_tokens=JSON_MAX_TOKENS, seed=0, temperature=1.0)
    result = model.with_structured_output(Person, method=method, include_raw=True).invoke("Describe a person.")
    parsed = result["parsed"]
    return {
        "parsed": parsed.model_dump() if isinstance(parsed, Person) else None,
        "parsing_error": repr(result["parsing_error"]) if result["parsing_error"] else None,
        "raw": message(result["raw"]),
    }


CASES = {
    "invoke": invoke,
    "stream": stream,
    "batch": batch,
    "bind_tools": bind_tools,
    "structured_output": structured_output,
}

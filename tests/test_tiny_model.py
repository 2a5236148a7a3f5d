"""The tiny model's chat template: plain ChatML, plus Hermes-style tools for `--tool-call-parser hermes`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def render(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs))


def test_a_conversation_without_tools_is_plain_chatml(tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert (
        render(tokenizer, messages)
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_are_listed_in_the_system_turn(tokenizer: Any) -> None:
    text = render(tokenizer, [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], tools=[WEATHER])
    system, _, rest = text.partition("<|im_end|>\n")
    assert system.startswith("<|im_start|>system\nS\n\n# Tools")
    listed = system.split("<tools>\n", 1)[1].split("\n</tools>", 1)[0]
    assert json.loads(listed) == WEATHER
    # the system message is not rendered a second time
    assert rest == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param('{"city": "Paris"}', id="arguments-as-json-text"),
        pytest.param({"city": "Paris"}, id="arguments-as-object"),  # what vLLM hands templates
    ],
)
def test_tool_calls_and_results_render_as_hermes_turns(tokenizer: Any, arguments: str | dict[str, str]) -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call, call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = render(tokenizer, messages, tools=[WEATHER])
    expected_call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert text.endswith(
        f"<|im_start|>assistant\n{expected_call}\n{expected_call}<|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )

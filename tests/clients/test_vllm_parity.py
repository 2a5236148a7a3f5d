"""Side by side: vLLM's own OpenAI server and the gateway answer the same requests alike.

Both serve the tiny model from the same files with the same flags (`--served-model-name tiny
--enable-auto-tool-choice --tool-call-parser hermes`). Every case is a greedy or seeded request
sent to both, one at a time (so both engines run the same batches); with `return_token_ids`
each answer shows the rendered prompt's tokens, and the two answers are compared field by
field (`parity.py`): prompt tokens, text, tool calls, finish reasons, tokens, logprobs, usage.
Streamed cases are compared too, chunk boundaries aside. Each case names the field it covers.

The gateway's answers are also checked against OpenAI's published schemas (vLLM's are not:
they do not conform, tests/openai_spec/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.clients.conftest import SERVED_MODEL, Target
from tests.clients.parity import (
    chat_stream_view,
    chat_view,
    completion_stream_view,
    completion_view,
    differences,
)
from tests.clients.schemas import ADD_PARAMETERS, WEATHER_PARAMETERS, function_tool
from tests.openai_spec import validate, validate_chat_sse, validate_completion, validate_completion_sse
from tests.sse_client import chunks

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
SYSTEM = [{"role": "system", "content": "You answer briefly."}, *USER]
MULTI_PART = [{"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}
HISTORY = [
    {"role": "developer", "content": "Be terse."},
    {"role": "user", "content": "Add 2 and 3.", "name": "alice"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "5"},
]
PREFILL = [*USER, {"role": "assistant", "content": "The weather"}]
ADD = [function_tool("add", ADD_PARAMETERS, strict=True)]
BOTH = [function_tool("get_weather", WEATHER_PARAMETERS), function_tool("add", ADD_PARAMETERS)]
GREEDY = {"temperature": 0, "max_tokens": 12}
SEEDED = {"temperature": 1.0, "seed": 7, "max_tokens": 12}
TOKENS = [474, 350, 415, 440]  # "hello world the queue" in the tiny model's vocabulary


@dataclass(frozen=True)
class Case:
    route: str  # "chat" or "completions"
    body: dict[str, Any]
    stream: bool = True  # also compare the streamed answer
    # Differences the gateway makes on purpose, by view path (each says why where it is used).
    expected: dict[str, Any] = field(default_factory=dict)


def chat(*presets: dict[str, Any], stream: bool = True, expected: dict[str, Any] | None = None, **body: Any) -> Case:
    """A chat case: greedy and 12 tokens unless `presets` (e.g. SEEDED) or `body` say otherwise."""
    return Case("chat", _merged({"messages": USER}, GREEDY, *presets, body), stream, expected or {})


def completion(
    *presets: dict[str, Any], stream: bool = True, expected: dict[str, Any] | None = None, **body: Any
) -> Case:
    return Case("completions", _merged({"prompt": "the queue is"}, GREEDY, *presets, body), stream, expected or {})


def _merged(*parts: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        merged.update(part)
    return merged


CASES = {
    # messages and rendering
    "plain": chat(),
    "system-role": chat(messages=SYSTEM),
    "multi-part-text": chat(messages=MULTI_PART),
    "history-developer-name-tool-calls-tool": chat(messages=HISTORY),
    # vLLM names the answer's role after the last message ("user" here); OpenAI's schema allows "assistant" only.
    "add-generation-prompt-false": chat(
        messages=SYSTEM, add_generation_prompt=False, expected={"choices.0.role": "always assistant"}
    ),
    "continue-final-message": chat(messages=PREFILL, add_generation_prompt=False, continue_final_message=True),
    "echo": chat(messages=PREFILL, add_generation_prompt=False, continue_final_message=True, echo=True),
    "chat-template-kwargs": chat(chat_template_kwargs={"enable_thinking": False}),
    "default-max-tokens": Case("chat", {"messages": SYSTEM, "temperature": 0}),
    "max-completion-tokens": chat(max_completion_tokens=5),
    # sampling
    "seed": chat(SEEDED),
    "n-2": chat(SEEDED, n=2),
    "presence-frequency-penalty": chat(SEEDED, presence_penalty=1.5, frequency_penalty=1.0),
    "repetition-penalty": chat(repetition_penalty=1.5),
    "logit-bias": chat(logit_bias={"415": 30}),
    "top-k-top-p-min-p": chat(SEEDED, top_k=5, top_p=0.8, min_p=0.1),
    "stop": chat(stop=["e", "!"]),
    "stop-include": chat(stop=["e"], include_stop_str_in_output=True),
    "stop-token-ids": chat(stop_token_ids=[71, 85]),
    "min-tokens": chat(min_tokens=8, stop_token_ids=[71]),
    "ignore-eos": chat(ignore_eos=True, max_tokens=20),
    "skip-special-tokens-false": chat(logit_bias={"1": 100}, skip_special_tokens=False, max_tokens=3),
    "bad-words-allowed-tokens": chat(allowed_token_ids=[71, 85, 415, 474], bad_words=["the"]),
    # output details
    "logprobs": chat(logprobs=True, top_logprobs=3),
    "logprobs-n-2": chat(SEEDED, n=2, logprobs=True, top_logprobs=2),
    "logprobs-as-token-ids": chat(logprobs=True, top_logprobs=1, return_tokens_as_token_ids=True),
    "prompt-logprobs": chat(stream=False, prompt_logprobs=2),
    # structured output
    "response-format-text": chat(response_format={"type": "text"}),
    "response-format-json-object": chat(response_format={"type": "json_object"}, max_tokens=48),
    "response-format-json-schema": chat(
        response_format={"type": "json_schema", "json_schema": {"name": "add", "schema": ADD_PARAMETERS}},
        max_tokens=48,
    ),
    "structured-outputs-regex": chat(structured_outputs={"regex": "[a-c]{3}x"}),
    "structured-outputs-choice": chat(structured_outputs={"choice": ["yes", "no"]}),
    "structured-outputs-grammar": chat(structured_outputs={"grammar": 'root ::= "ab" | "cd" "e"'}),
    "structured-outputs-json": chat(structured_outputs={"json": ADD_PARAMETERS}, max_tokens=48),
    # tools
    "tools-auto": chat(SEEDED, tools=BOTH, max_tokens=32),
    "tool-choice-none": chat(tools=BOTH, tool_choice="none"),
    "tool-choice-required": chat(SEEDED, tools=ADD, tool_choice="required", max_tokens=64),
    "tool-choice-named": chat(
        SEEDED, tools=ADD, tool_choice={"type": "function", "function": {"name": "add"}}, max_tokens=64
    ),
    "parallel-tool-calls-false": chat(
        SEEDED, tools=ADD, tool_choice="required", parallel_tool_calls=False, max_tokens=64
    ),
    # completions
    "completion-string": completion(logprobs=2),
    "completion-list-of-strings": completion(SEEDED, prompt=["the queue is", "hello"], n=2),
    "completion-token-ids": completion(prompt=TOKENS),
    "completion-token-id-lists": completion(prompt=[TOKENS, TOKENS[:2]], logprobs=1),
    "completion-echo-logprobs-max-tokens-1": completion(echo=True, logprobs=1, max_tokens=1),
    # vLLM reports the one token it generated and threw away as a completion token; the gateway does not.
    "completion-echo-logprobs-max-tokens-0": completion(
        echo=True,
        logprobs=1,
        max_tokens=0,
        expected={"usage": "no completion tokens", "choices.0.token_ids": "no completion tokens"},
    ),
    "completion-default-max-tokens": Case("completions", {"prompt": "the queue is", "temperature": 0}),
    "completion-prompt-logprobs": completion(stream=False, prompt_logprobs=1),
    "completion-seed-penalties": completion(SEEDED, presence_penalty=1.0, frequency_penalty=0.5, logprobs=0),
}


@pytest.fixture(scope="module")
def servers(gateway_target: Target, vllm_target: Target) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        httpx.Client(base_url=gateway_target.base_url, timeout=120) as gateway,
        httpx.Client(base_url=vllm_target.base_url, timeout=120) as vllm,
    ):
        yield gateway, vllm


def _answers(servers: tuple[httpx.Client, httpx.Client], path: str, body: dict[str, Any]) -> list[httpx.Response]:
    answers = [client.post(path, json={"model": SERVED_MODEL, **body}) for client in servers]
    for answer in answers:
        assert answer.status_code == 200, answer.text[:500]
    return answers


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
def test_the_gateway_answers_as_vllm_does(servers: tuple[httpx.Client, httpx.Client], case: Case) -> None:
    path = "/chat/completions" if case.route == "chat" else "/completions"
    body = {**case.body, "return_token_ids": True}
    gateway, vllm = _answers(servers, path, body)
    if case.route == "chat":
        validate("CreateChatCompletionResponse", gateway.json())
        found = differences(chat_view(gateway.json()), chat_view(vllm.json()))
    else:
        validate_completion(gateway.json(), echo=bool(body.get("echo")))
        found = differences(completion_view(gateway.json()), completion_view(vllm.json()))
    if case.stream:
        streamed = {**body, "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        gateway, vllm = _answers(servers, path, streamed)
        if case.route == "chat":
            validate_chat_sse(gateway.text)
            found += differences(chat_stream_view(chunks(gateway.text)), chat_stream_view(chunks(vllm.text)))
        else:
            validate_completion_sse(gateway.text, echo=bool(body.get("echo")))
            found += differences(
                completion_stream_view(chunks(gateway.text)), completion_stream_view(chunks(vllm.text))
            )
    found = [f for f in found if not any(f.startswith(f"$.{key}") for key in case.expected)]
    assert not found, "\n".join(found)


def test_multi_part_text_renders_as_vllm_renders_it(servers: tuple[httpx.Client, httpx.Client]) -> None:
    # Before the gateway rendered through vLLM's renderer, two text parts made 24 prompt tokens
    # there and 25 on vLLM (vLLM joins parts with a newline).
    gateway, vllm = _answers(servers, "/chat/completions", {"messages": MULTI_PART, "max_tokens": 1})
    assert gateway.json()["usage"]["prompt_tokens"] == vllm.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/tokenize", {"prompt": "hello world", "return_token_strs": True}, id="tokenize-prompt"),
        pytest.param("/tokenize", {"messages": HISTORY, "tools": BOTH}, id="tokenize-messages"),
        pytest.param("/detokenize", {"tokens": TOKENS}, id="detokenize"),
    ],
)
def test_tokenize_and_detokenize_answer_as_vllm_does(
    gateway_target: Target, vllm_target: Target, path: str, body: dict[str, Any]
) -> None:
    answers = [
        httpx.post(t.root_url + path, json={"model": SERVED_MODEL, **body}, timeout=60)
        for t in (gateway_target, vllm_target)
    ]
    assert [a.status_code for a in answers] == [200, 200]
    assert answers[0].json() == answers[1].json()


def test_the_model_list_names_the_model_and_its_context(servers: tuple[httpx.Client, httpx.Client]) -> None:
    gateway, vllm = (client.get("/models").json() for client in servers)
    validate("ListModelsResponse", gateway)
    assert [(m["id"], m["max_model_len"]) for m in gateway["data"]] == [
        (m["id"], m["max_model_len"]) for m in vllm["data"]
    ]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/chat/completions", {"messages": USER, "tool_choice": "required"}, id="tool-choice-without-tools"
        ),
        pytest.param("/chat/completions", {"messages": USER, "top_logprobs": 2}, id="top-logprobs-without-logprobs"),
        pytest.param(
            "/chat/completions",
            {"messages": USER, "stream_options": {"include_usage": True}},
            id="stream-options-without-stream",
        ),
        pytest.param("/chat/completions", {"messages": USER, "max_tokens": 5000}, id="over-the-context"),
        pytest.param("/chat/completions", {"messages": USER, "structured_outputs": {"regex": "(("}}, id="bad-regex"),
        pytest.param("/completions", {"prompt": "x", "suffix": "y"}, id="suffix-without-fim"),
        pytest.param("/completions", {"prompt": [1, 100000]}, id="token-out-of-vocabulary"),
    ],
)
def test_what_vllm_refuses_the_gateway_refuses_with_a_400_in_words(
    servers: tuple[httpx.Client, httpx.Client], path: str, body: dict[str, Any]
) -> None:
    gateway, vllm = (client.post(path, json={"model": SERVED_MODEL, **body}) for client in servers)
    assert (gateway.status_code, vllm.status_code) == (400, 400), (gateway.text, vllm.text)
    validate("ErrorResponse", gateway.json())
    message = gateway.json()["error"]["message"]
    assert message and "Traceback" not in message and "pydantic" not in message.lower()

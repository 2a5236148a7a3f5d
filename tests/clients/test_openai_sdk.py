"""The official `openai` SDK: what a user of `OpenAI(base_url=...)` receives, request by request."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam

from tests.clients.conftest import Target
from tests.clients.schemas import ADD_PARAMETERS, PERSON_SCHEMA, WEATHER_PARAMETERS, function_tool

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What is the weather in Paris?"},
]
# Seeds for the constrained cases: a random-weight model writes something different for each.
SEEDS = range(20)
JSON_SEEDS = range(4)
JSON_MAX_TOKENS = 600  # room for constrained JSON padded with whitespace to close

# What vLLM 0.32 does wrong that the gateway must not (issue 11); see tests/clients/README.md.
VLLM_LOOSE_TOOL_ARGUMENTS = (
    "vLLM 0.32 constrains forced tool-call arguments only under `strict`: without it a forced call "
    "returns arguments such as `69`, `Infinity` or `1900.0`"
)
VLLM_CONTROL_CHARACTERS = (
    "vLLM 0.32's strict grammar lets a raw control character (e.g. U+0008) into a JSON string; "
    "the hermes parser then rejects the call: finish_reason 'tool_calls' with tool_calls null and the "
    "raw <tool_call> text as content"
)
VLLM_CONTROL_CHARACTERS_IN_JSON = (
    "vLLM 0.32's json_schema grammar lets a raw control character (e.g. U+0008) into a JSON string, "
    "so the content is not JSON a strict parser (json.loads, pydantic) accepts"
)
VLLM_MAX_TOKENS_0_USAGE = (
    "vLLM 0.32 answers max_tokens 0 with echo with the prompt alone, but its usage reports completion_tokens 1"
)


def chat_prompt_tokens(tokenizer: Any, messages: list[ChatCompletionMessageParam], **kwargs: Any) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    return len(tokenizer.encode(text, add_special_tokens=False))


def only_choice(response: ChatCompletion) -> Any:
    assert [c.index for c in response.choices] == [0]
    return response.choices[0]


def test_chat_answers_one_assistant_message_with_usage_that_counts_its_tokens(
    openai_client: OpenAI, openai_target: Target, tokenizer: Any
) -> None:
    response = openai_client.chat.completions.create(
        model=openai_target.model, messages=MESSAGES, max_tokens=16, logprobs=True, seed=0
    )
    assert response.object == "chat.completion"
    assert response.model == openai_target.model
    choice = only_choice(response)
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert response.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    assert response.usage.completion_tokens == len(choice.logprobs.content)
    if choice.finish_reason == "length":
        assert response.usage.completion_tokens == 16
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_a_stream_sends_deltas_then_one_usage_chunk_that_matches_the_streamed_tokens(
    openai_client: OpenAI, openai_target: Target, tokenizer: Any
) -> None:
    request: dict[str, Any] = {
        "model": openai_target.model,
        "messages": MESSAGES,
        "max_tokens": 24,
        "temperature": 0,
        "logprobs": True,
    }
    chunks = list(openai_client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    *deltas, last = chunks
    assert last.choices == [] and last.usage is not None
    assert all(c.usage is None for c in deltas)
    assert all([ch.index for ch in c.choices] == [0] for c in deltas)
    finishes = [c.choices[0].finish_reason for c in deltas if c.choices[0].finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in deltas)
    streamed_tokens = sum(len(c.choices[0].logprobs.content) for c in deltas if c.choices[0].logprobs)
    assert last.usage.completion_tokens == streamed_tokens
    assert last.usage.prompt_tokens == chat_prompt_tokens(tokenizer, MESSAGES)
    # Greedy: the same request without streaming gives the same answer.
    whole = openai_client.chat.completions.create(**request)
    assert only_choice(whole).message.content == text
    assert whole.usage is not None and whole.usage.completion_tokens == streamed_tokens


def test_a_completion_of_a_text_prompt(openai_client: OpenAI, openai_target: Target, tokenizer: Any) -> None:
    prompt = "the gateway streams tokens to the"
    response = openai_client.completions.create(
        model=openai_target.model, prompt=prompt, max_tokens=12, logprobs=2, seed=0
    )
    assert response.object == "text_completion"
    [choice] = response.choices
    assert choice.index == 0 and isinstance(choice.text, str)
    assert choice.finish_reason in ("stop", "length")
    assert response.usage is not None
    assert response.usage.prompt_tokens == len(tokenizer.encode(prompt))
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    assert len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs or []) == response.usage.completion_tokens
    for top in choice.logprobs.top_logprobs or []:
        # The 2 most likely, plus the sampled token when it is not among them; the legacy format keys them
        # by text, so byte fragments of one character that all decode to "" collapse into one entry.
        assert 1 <= len(top) <= 3


def test_auto_tool_choice_answers_text_or_a_well_formed_call(openai_client: OpenAI, openai_target: Target) -> None:
    # A random-weight model rarely calls a tool by itself: accept either, but each well formed.
    tools = [function_tool("get_weather", WEATHER_PARAMETERS), function_tool("add", ADD_PARAMETERS)]
    for seed in range(3):
        response = openai_client.chat.completions.create(
            model=openai_target.model, messages=MESSAGES, tools=tools, tool_choice="auto", max_tokens=32, seed=seed
        )
        choice = only_choice(response)
        calls = choice.message.tool_calls or []
        if choice.finish_reason == "tool_calls":
            assert calls, "finish_reason 'tool_calls' with no tool call"
        else:
            assert choice.finish_reason in ("stop", "length") and not calls
            assert isinstance(choice.message.content, str)
        for call in calls:
            assert call.function.name in ("get_weather", "add")
            json.loads(call.function.arguments)


def forced_tool_call_cases() -> list[Any]:
    named = {"type": "function", "function": {"name": "get_weather"}}
    cases = []
    for strict, reason in ((True, VLLM_CONTROL_CHARACTERS), (False, VLLM_LOOSE_TOOL_ARGUMENTS)):
        for choice_id, choice in (("required", "required"), ("named", named)):
            cases.append(
                pytest.param(
                    choice,
                    strict,
                    id=f"{choice_id}-{'strict' if strict else 'not-strict'}",
                    marks=pytest.mark.gateway_only(reason),
                )
            )
    return cases


@pytest.mark.parametrize(("tool_choice", "strict"), forced_tool_call_cases())
def test_a_forced_tool_call_has_arguments_valid_against_the_function_schema(
    openai_client: OpenAI, openai_target: Target, tool_choice: Any, strict: bool
) -> None:
    tools = [function_tool("get_weather", WEATHER_PARAMETERS, strict=strict)]
    failures = []
    for seed in SEEDS:
        response = openai_client.chat.completions.create(
            model=openai_target.model,
            messages=MESSAGES,
            tools=tools,
            tool_choice=tool_choice,
            temperature=1.0,
            seed=seed,
            max_tokens=JSON_MAX_TOKENS,
        )
        choice = only_choice(response)
        calls = choice.message.tool_calls or []
        try:
            assert calls, f"no tool call (finish_reason {choice.finish_reason!r}, content {choice.message.content!r})"
            if tool_choice != "required":
                assert len(calls) == 1
            for call in calls:
                assert call.function.name == "get_weather"
                jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)
        except (AssertionError, ValueError, jsonschema.ValidationError) as e:
            failures.append(f"seed {seed}: {str(e)[:300]}")
    assert not failures, f"{len(failures)} of {len(SEEDS)} seeds:\n" + "\n".join(failures)


def test_a_streamed_named_tool_call_arrives_as_incremental_deltas_of_valid_arguments(
    openai_client: OpenAI, openai_target: Target
) -> None:
    tools = [function_tool("add", ADD_PARAMETERS, strict=True)]
    stream = openai_client.chat.completions.create(
        model=openai_target.model,
        messages=[{"role": "user", "content": "Add 2 and 3."}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "add"}},
        seed=0,
        max_tokens=JSON_MAX_TOKENS,
        stream=True,
    )
    deltas = [call for chunk in stream if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert deltas, "no tool_calls delta"
    assert {d.index for d in deltas} == {0}
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "add"
    arguments = "".join(d.function.arguments or "" for d in deltas if d.function)
    jsonschema.validate(json.loads(arguments), ADD_PARAMETERS)


@pytest.mark.parametrize("seed", JSON_SEEDS)
def test_json_object_output_is_a_json_object(openai_client: OpenAI, openai_target: Target, seed: int) -> None:
    response = openai_client.chat.completions.create(
        model=openai_target.model,
        messages=[{"role": "user", "content": "Answer in JSON."}],
        response_format={"type": "json_object"},
        seed=seed,
        max_tokens=JSON_MAX_TOKENS,
    )
    choice = only_choice(response)
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.gateway_only(VLLM_CONTROL_CHARACTERS_IN_JSON)
@pytest.mark.parametrize("strict", [pytest.param(True, id="strict"), pytest.param(False, id="not-strict")])
def test_json_schema_output_validates_against_the_schema(
    openai_client: OpenAI, openai_target: Target, strict: bool
) -> None:
    for seed in JSON_SEEDS:
        response = openai_client.chat.completions.create(
            model=openai_target.model,
            messages=[{"role": "user", "content": "Describe a person."}],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "person", "schema": PERSON_SCHEMA, "strict": strict},
            },
            seed=seed,
            max_tokens=JSON_MAX_TOKENS,
        )
        choice = only_choice(response)
        assert choice.finish_reason == "stop", f"seed {seed}"
        jsonschema.validate(json.loads(choice.message.content), PERSON_SCHEMA)


def test_chat_logprobs_give_one_entry_per_token_with_the_asked_number_of_alternatives(
    openai_client: OpenAI, openai_target: Target
) -> None:
    response = openai_client.chat.completions.create(
        model=openai_target.model, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3
    )
    choice = only_choice(response)
    assert choice.logprobs is not None and choice.logprobs.content is not None
    entries = choice.logprobs.content
    assert response.usage is not None and len(entries) == response.usage.completion_tokens > 0
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy decoding picks the most likely token.
        assert entry.token == entry.top_logprobs[0].token
        assert entry.logprob == pytest.approx(ranked[0])


def test_n_2_gives_two_choices_and_usage_counts_both(openai_client: OpenAI, openai_target: Target) -> None:
    response = openai_client.chat.completions.create(
        model=openai_target.model, messages=MESSAGES, n=2, max_tokens=10, temperature=1.0, seed=3, logprobs=True
    )
    assert [c.index for c in response.choices] == [0, 1]
    assert response.usage is not None
    assert response.usage.completion_tokens == sum(len(c.logprobs.content) for c in response.choices)


def test_a_streamed_n_2_finishes_each_choice_once(openai_client: OpenAI, openai_target: Target) -> None:
    stream = openai_client.chat.completions.create(
        model=openai_target.model, messages=MESSAGES, n=2, max_tokens=10, temperature=1.0, seed=3, stream=True
    )
    finished: dict[int, int] = {0: 0, 1: 0}
    for chunk in stream:
        for choice in chunk.choices:
            assert choice.index in finished
            finished[choice.index] += choice.finish_reason is not None
    assert finished == {0: 1, 1: 1}


@pytest.mark.parametrize(
    "max_tokens",
    [
        pytest.param(0, id="max_tokens-0", marks=pytest.mark.gateway_only(VLLM_MAX_TOKENS_0_USAGE)),
        pytest.param(1, id="max_tokens-1"),
    ],
)
def test_echo_with_logprobs_returns_the_prompt_tokens_and_their_logprobs(
    openai_client: OpenAI, openai_target: Target, tokenizer: Any, max_tokens: int
) -> None:
    # What lm-eval's loglikelihood asks of a completions server.
    prompt = "the answer is the cache"
    response = openai_client.completions.create(
        model=openai_target.model, prompt=prompt, echo=True, logprobs=1, max_tokens=max_tokens, temperature=0
    )
    [choice] = response.choices
    assert choice.text.startswith(prompt)
    prompt_tokens = len(tokenizer.encode(prompt))
    assert response.usage is not None and response.usage.prompt_tokens == prompt_tokens
    assert response.usage.completion_tokens == max_tokens
    assert choice.logprobs is not None and choice.logprobs.tokens is not None
    token_logprobs = choice.logprobs.token_logprobs or []
    assert len(choice.logprobs.tokens) == len(token_logprobs) == prompt_tokens + max_tokens
    assert "".join(choice.logprobs.tokens[:prompt_tokens]) == prompt
    assert token_logprobs[0] is None  # the first token has nothing before it
    assert all(lp is not None and lp <= 0 for lp in token_logprobs[1:])


def test_token_id_prompts_give_one_choice_per_prompt(
    openai_client: OpenAI, openai_target: Target, tokenizer: Any
) -> None:
    first, second = tokenizer.encode("hello world"), tokenizer.encode("the queue is busy")
    single = openai_client.completions.create(
        model=openai_target.model, prompt=first, max_tokens=4, echo=True, temperature=0
    )
    assert single.usage is not None and single.usage.prompt_tokens == len(first)
    assert single.choices[0].text.startswith("hello world")
    both = openai_client.completions.create(model=openai_target.model, prompt=[first, second], max_tokens=4, seed=0)
    assert [c.index for c in both.choices] == [0, 1]
    assert both.usage is not None and both.usage.prompt_tokens == len(first) + len(second)

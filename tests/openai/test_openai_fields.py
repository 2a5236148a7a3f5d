"""Each request field of the OpenAI routes changes the answer as it says, on the real engine.

The side-by-side suite (tests/clients/test_vllm_parity.py) shows the gateway means what vLLM
means by each field; these show that the meaning is there at all: a penalty or a bias that
changes the tokens, a stop that stops, a seed that repeats. The tiny model writes junk, so the
checks are on tokens and structure. Every answer is checked against OpenAI's schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.core.vllm_engine import VLLMEngine
from tests.gateway_app import Gateway, running_gateway
from tests.openai_spec import validate, validate_chat_sse, validate_completion
from tests.sse_client import chunks

pytestmark = pytest.mark.engine

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
PREFILL = [*USER, {"role": "assistant", "content": "The weather is"}]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if greeting is defined %}{{ greeting }}\n{% endif %}{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
async def gateway(real_engine: VLLMEngine) -> AsyncIterator[Gateway]:
    async with running_gateway(
        real_engine,
        lifespan="off",
        served_model_name=["tiny", "tiny-alias"],
        enable_auto_tool_choice=True,
        tool_call_parser="hermes",
    ) as gw:
        yield gw


@pytest.fixture(scope="module")
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url + "/v1", timeout=120) as c:
        yield c


async def chat(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    r = await client.post("/chat/completions", json={"model": "tiny", "messages": USER, "max_tokens": 16, **body})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    validate("CreateChatCompletionResponse", answer)
    return answer


async def tokens(client: httpx.AsyncClient, **body: Any) -> list[int]:
    """The token ids of the first choice's answer."""
    ids: list[int] = (await chat(client, return_token_ids=True, **body))["choices"][0]["token_ids"]
    return ids


async def test_a_seed_repeats_its_answer_and_another_seed_does_not(client: httpx.AsyncClient) -> None:
    first = [await tokens(client, temperature=1.0, seed=seed, max_tokens=24) for seed in (1, 1, 2)]
    assert first[0] == first[1] != first[2]


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"frequency_penalty": 2.0}, id="frequency_penalty"),
        pytest.param({"presence_penalty": 2.0}, id="presence_penalty"),
        pytest.param({"repetition_penalty": 2.0}, id="repetition_penalty"),
    ],
)
async def test_a_penalty_makes_the_answer_repeat_itself_less(client: httpx.AsyncClient, field: dict[str, Any]) -> None:
    plain = await tokens(client, temperature=0, max_tokens=32, ignore_eos=True)
    penalised = await tokens(client, temperature=0, max_tokens=32, ignore_eos=True, **field)
    # Greedy decoding of random weights loops over a few tokens; the penalty breaks the loop.
    assert len(set(penalised)) > len(set(plain))


async def test_logit_bias_forces_the_biased_token(client: httpx.AsyncClient) -> None:
    assert set(await tokens(client, temperature=1.0, seed=3, logit_bias={"415": 100})) == {415}


@pytest.mark.parametrize(
    "field",
    [
        pytest.param({"top_k": 1}, id="top_k"),
        pytest.param({"min_p": 1.0}, id="min_p"),
        pytest.param({"top_p": 1e-6}, id="top_p"),
    ],
)
async def test_a_sampling_cut_to_one_token_samples_as_greedy_does(
    client: httpx.AsyncClient, field: dict[str, Any]
) -> None:
    greedy = await tokens(client, temperature=0, max_tokens=24, ignore_eos=True)
    assert await tokens(client, temperature=1.5, seed=5, max_tokens=24, ignore_eos=True, **field) == greedy
    assert await tokens(client, temperature=1.5, seed=5, max_tokens=24, ignore_eos=True) != greedy


async def test_stop_strings_and_stop_token_ids_stop_the_answer(client: httpx.AsyncClient) -> None:
    free = (await chat(client, temperature=0, max_tokens=24, ignore_eos=True))["choices"][0]["message"]["content"]
    stop = free[5:7]
    stopped = (await chat(client, temperature=0, max_tokens=24, stop=[stop]))["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["stop_reason"] == stop
    assert stopped["message"]["content"] == free[: free.index(stop)]
    ids = await tokens(client, temperature=0, max_tokens=24, ignore_eos=True)
    cut = await chat(client, temperature=0, max_tokens=24, stop_token_ids=[ids[4]], return_token_ids=True)
    assert cut["choices"][0]["token_ids"] == ids[: ids.index(ids[4]) + 1]
    assert cut["choices"][0]["stop_reason"] == ids[4]


async def test_min_tokens_holds_back_a_stop_until_then(client: httpx.AsyncClient) -> None:
    ids = await tokens(client, temperature=0, max_tokens=24, ignore_eos=True)
    first = ids[0]
    assert len(await tokens(client, temperature=0, stop_token_ids=[first])) == 1
    assert len(await tokens(client, temperature=0, stop_token_ids=[first], min_tokens=6)) >= 6


async def test_ignore_eos_runs_to_max_tokens_and_the_default_fills_the_context(client: httpx.AsyncClient) -> None:
    answer = await chat(client, ignore_eos=True, max_tokens=40)
    assert answer["usage"]["completion_tokens"] == 40
    whole = await chat(client, ignore_eos=True, temperature=0, max_tokens=None)
    assert whole["usage"]["total_tokens"] == 1024  # the model's context: --max-model-len of the test engine
    assert whole["choices"][0]["finish_reason"] == "length"


async def test_skip_special_tokens_decides_whether_special_tokens_show(client: httpx.AsyncClient) -> None:
    shown = await chat(client, logit_bias={"1": 100}, max_tokens=3, skip_special_tokens=False)
    hidden = await chat(client, logit_bias={"1": 100}, max_tokens=3)
    assert shown["choices"][0]["message"]["content"] == "<|im_start|>" * 3
    assert hidden["choices"][0]["message"]["content"] == ""


async def test_logprobs_list_every_token_with_its_alternatives(client: httpx.AsyncClient) -> None:
    answer = await chat(client, temperature=0, logprobs=True, top_logprobs=4, prompt_logprobs=1, return_token_ids=True)
    choice = answer["choices"][0]
    entries = choice["logprobs"]["content"]
    assert len(entries) == len(choice["token_ids"]) == answer["usage"]["completion_tokens"]
    assert all(len(e["top_logprobs"]) == 4 and e["token"] == e["top_logprobs"][0]["token"] for e in entries)
    assert len(answer["prompt_logprobs"]) == answer["usage"]["prompt_tokens"]
    assert answer["prompt_logprobs"][0] is None  # nothing comes before the first prompt token


async def test_n_answers_are_n_choices_and_usage_counts_them_all(client: httpx.AsyncClient) -> None:
    answer = await chat(client, n=3, temperature=1.0, seed=2, return_token_ids=True)
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert answer["usage"]["completion_tokens"] == sum(len(c["token_ids"]) for c in answer["choices"])
    assert len({tuple(c["token_ids"]) for c in answer["choices"]}) > 1


@pytest.mark.parametrize(
    ("constraint", "check"),
    [
        pytest.param({"regex": "[a-c]{4}x"}, lambda text: re.fullmatch("[a-c]{4}x", text), id="regex"),
        pytest.param({"choice": ["yes", "no"]}, lambda text: text in ("yes", "no"), id="choice"),
        pytest.param({"grammar": 'root ::= "ab" | "cd" "e"'}, lambda text: text in ("ab", "cde"), id="grammar"),
        pytest.param(
            {"json": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}},
            lambda text: isinstance(json.loads(text)["a"], int),
            id="json",
        ),
    ],
)
async def test_structured_outputs_constrain_the_answer(
    client: httpx.AsyncClient, constraint: dict[str, Any], check: Any
) -> None:
    for seed in range(3):
        # Room for the whitespace a random model pads JSON with before it closes it.
        answer = await chat(client, temperature=1.0, seed=seed, max_tokens=600, structured_outputs=constraint)
        choice = answer["choices"][0]
        assert choice["finish_reason"] == "stop" and check(choice["message"]["content"]), choice


async def test_the_generation_prompt_and_continue_final_message_shape_the_prompt(client: httpx.AsyncClient) -> None:
    def prompt(answer: dict[str, Any]) -> str:
        text: str = answer["prompt_text"]
        return text

    plain = prompt(await chat(client, max_tokens=1, return_prompt_text=True))
    bare = prompt(await chat(client, max_tokens=1, return_prompt_text=True, add_generation_prompt=False))
    assert plain.endswith("<|im_start|>assistant\n") and plain == bare + "<|im_start|>assistant\n"
    continued = await chat(
        client,
        messages=PREFILL,
        max_tokens=4,
        add_generation_prompt=False,
        continue_final_message=True,
        return_prompt_text=True,
        echo=True,
    )
    assert prompt(continued).endswith("The weather is")  # no end of turn after the prefill
    assert continued["choices"][0]["message"]["content"].startswith("The weather is")  # echo


async def test_tool_choice_decides_whether_and_which_tool_is_called(client: httpx.AsyncClient) -> None:
    add = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}
    tools = [
        {"type": "function", "function": {"name": "add", "parameters": add}},
        {"type": "function", "function": {"name": "mul", "parameters": add}},
    ]
    named = {"type": "function", "function": {"name": "mul"}}
    body = {"tools": tools, "temperature": 1.0, "max_tokens": 200}
    counts = []
    for seed in range(6):
        called = (await chat(client, **body, seed=seed, tool_choice=named))["choices"][0]
        assert [c["function"]["name"] for c in called["message"]["tool_calls"]] == ["mul"]
        assert called["finish_reason"] in ("stop", "length")  # OpenAI: a named call finishes with "stop"
        nothing = (await chat(client, **body, seed=seed, tool_choice="none"))["choices"][0]
        assert "tool_calls" not in nothing["message"]
        single = (await chat(client, **body, seed=seed, tool_choice="required", parallel_tool_calls=False))["choices"]
        assert len(single[0]["message"]["tool_calls"]) == 1
        several = (await chat(client, **body, seed=seed, tool_choice="required"))["choices"][0]
        counts.append(len(several["message"]["tool_calls"]))
    assert max(counts) > 1  # without parallel_tool_calls false, the random model calls again


async def test_a_streamed_tool_call_arrives_in_several_argument_deltas(client: httpx.AsyncClient) -> None:
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    named = {"type": "function", "function": {"name": "add"}}
    r = await client.post(
        "/chat/completions",
        json={"model": "tiny", "messages": USER, "tools": tools, "tool_choice": named, "stream": True, "seed": 1},
    )
    validate_chat_sse(r.text)
    deltas = [d for c in chunks(r.text) for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert deltas[0]["function"]["name"] == "add" and deltas[0]["id"]
    assert len([d for d in deltas if d.get("function", {}).get("arguments")]) > 1
    json.loads("".join(d.get("function", {}).get("arguments", "") for d in deltas))


async def test_served_model_name_aliases_all_answer_under_the_first_name(client: httpx.AsyncClient) -> None:
    models = (await client.get("/models")).json()
    validate("ListModelsResponse", models)
    assert [m["id"] for m in models["data"]] == ["tiny", "tiny-alias"]
    assert (await chat(client, model="tiny-alias", max_tokens=2))["model"] == "tiny"
    r = await client.post("/chat/completions", json={"model": "other", "messages": USER})
    assert (r.status_code, r.json()["error"]["param"]) == (404, "model")


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param("the queue is", id="string"),
        pytest.param(["the queue is", "hello"], id="strings"),
        pytest.param([474, 350], id="token-ids"),
        pytest.param([[474, 350], [415]], id="token-id-lists"),
    ],
)
async def test_completions_answer_each_prompt_n_times_in_prompt_order(client: httpx.AsyncClient, prompt: Any) -> None:
    r = await client.post(
        "/completions",
        json={"model": "tiny", "prompt": prompt, "n": 2, "max_tokens": 3, "echo": True, "seed": 0, "temperature": 1},
    )
    validate_completion(r.json(), echo=True)
    prompts = [prompt] if isinstance(prompt, str) or isinstance(prompt[0], int) else prompt
    texts = [c["text"] for c in r.json()["choices"]]
    assert [c["index"] for c in r.json()["choices"]] == list(range(2 * len(prompts)))
    for i, one in enumerate(prompts):
        if isinstance(one, str):
            assert texts[2 * i].startswith(one) and texts[2 * i + 1].startswith(one)


async def test_chat_template_kwargs_and_the_served_chat_template(real_engine: VLLMEngine) -> None:
    async with (
        running_gateway(real_engine, lifespan="off", chat_template=TEMPLATE) as gw,
        httpx.AsyncClient(base_url=gw.url + "/v1", timeout=60) as client,
    ):
        body = {"max_tokens": 1, "return_prompt_text": True}
        plain = await chat(client, model=real_engine.model_name, **body)
        greeted = await chat(client, model=real_engine.model_name, chat_template_kwargs={"greeting": "hi!"}, **body)
    assert plain["prompt_text"] == "user: What is the weather in Paris?\nassistant:"
    assert greeted["prompt_text"] == "user: What is the weather in Paris?\nhi!\nassistant:"


async def test_a_reasoning_parser_splits_the_reasoning_from_the_answer(real_engine: VLLMEngine) -> None:
    # Qwen3's parser reads an answer as reasoning until the model closes it: the random model never does.
    async with (
        running_gateway(real_engine, lifespan="off", reasoning_parser="qwen3") as gw,
        httpx.AsyncClient(base_url=gw.url + "/v1", timeout=60) as client,
    ):
        answer = await chat(client, model=real_engine.model_name, max_tokens=8, temperature=0)
        hidden = await chat(client, model=real_engine.model_name, max_tokens=8, temperature=0, include_reasoning=False)
    message = answer["choices"][0]["message"]
    assert message["reasoning"] and not message["content"]
    assert answer["usage"]["completion_tokens_details"]["reasoning_tokens"] == 8
    assert "reasoning" not in hidden["choices"][0]["message"]

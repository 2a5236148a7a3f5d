"""Properties of conversations, for any text: budgets hold, nothing essential is dropped, Unicode survives.

Hypothesis generates the conversations; the streaming checks send arbitrary
Unicode through the whole HTTP path (fake engine), and random byte-level
tokens from the real engine, whose deltas can end inside a multibyte character.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from gateway.app import create_app
from gateway.core.vllm_engine import VLLMEngine
from gateway.sessions.codec import decode_value, encode_value
from prompts import ChatPrompt, TurnTooLong
from tests.fakes import FakeEngine
from tests.reliability.conftest import make_settings, rounds, running_gateway
from tests.sse_client import parse_sse

EXAMPLES = rounds(200, 2000)


class ByteTokenizer:
    """One token per UTF-8 byte, like a byte-level BPE with no merges (the worst case for budgets)."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8", "surrogatepass"))

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")


any_text = st.text(max_size=40)  # every code point Hypothesis knows, surrogates excluded
nonblank = any_text.filter(lambda s: bool(s.strip()))


@st.composite
def conversations(draw: st.DrawFn) -> ChatPrompt:
    """A conversation about to be answered: alternating turns that end with a user turn."""
    fmt = draw(st.sampled_from(["template", "chatml", "llama2", "vicuna"]))
    prompt = ChatPrompt(system=draw(st.none() | nonblank), format=fmt)
    for _ in range(draw(st.integers(0, 8))):
        prompt.add_user(draw(nonblank))
        prompt.add_assistant(draw(any_text))
    prompt.add_user(draw(nonblank))
    return prompt.bind(ByteTokenizer())


@settings(max_examples=EXAMPLES, deadline=None)
@given(prompt=conversations(), budget=st.integers(1, 2000))
def test_render_never_exceeds_the_budget_and_keeps_the_system_prompt_and_the_newest_turn(
    prompt: ChatPrompt, budget: int
) -> None:
    tokenizer = ByteTokenizer()
    newest = prompt.messages[-1]["content"]
    before = prompt.to_dict()
    try:
        rendered = prompt.render(budget)
    except TurnTooLong as err:
        # Refused only when the system prompt and the newest turn alone do not fit.
        last_user = max(i for i, m in enumerate(prompt.messages) if m["role"] == "user")
        alone = ChatPrompt(system=prompt.system, format=prompt.format).bind(tokenizer)
        alone.messages = prompt.messages[last_user:]
        assert len(tokenizer.encode(alone.create_prompt())) > budget
        assert err.budget == budget
        return
    assert len(rendered.token_ids) <= budget
    assert rendered.token_ids == tokenizer.encode(rendered.text)
    assert newest in rendered.text
    if prompt.system:
        assert prompt.system in rendered.text
    kept = prompt.messages[rendered.dropped_messages :]
    assert kept[0]["role"] == "user"  # whole turns are dropped, oldest first
    # no more was dropped than needed: one turn more would not have fitted
    earlier = [i for i, m in enumerate(prompt.messages[: rendered.dropped_messages]) if m["role"] == "user"]
    if earlier:
        wider = ChatPrompt(system=prompt.system, format=prompt.format).bind(tokenizer)
        wider.messages = prompt.messages[earlier[-1] :]
        assert len(tokenizer.encode(wider.create_prompt())) > budget
    assert prompt.to_dict() == before  # trimming is for the engine only: the conversation keeps everything


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    system=st.none() | st.text(st.characters(codec=None)),
    turns=st.lists(st.text(st.characters(codec=None)), max_size=10),
)
def test_a_conversation_round_trips_any_unicode_through_storage(system: str | None, turns: list[str]) -> None:
    # codec=None includes lone surrogates: JSON can carry them ("\\ud800"), so a client can send them.
    prompt = ChatPrompt(system=system, format="chatml")
    for i, text in enumerate(turns):
        prompt.add("user" if i % 2 == 0 else "assistant", text)
    stored = encode_value(prompt)
    stored.encode("utf-8")  # a store that keeps UTF-8 (Redis) can hold it
    restored = decode_value(stored)
    assert isinstance(restored, ChatPrompt)
    assert (restored.system, restored.messages) == (prompt.system, prompt.messages)
    assert ChatPrompt.from_dict(prompt.to_dict()).messages == prompt.messages


@settings(max_examples=EXAMPLES, deadline=None)
@given(prompt=conversations(), keep=st.integers(2, 12))
def test_forgetting_old_turns_keeps_at_most_keep_messages_and_the_newest_exchange(
    prompt: ChatPrompt, keep: int
) -> None:
    prompt.add_assistant("the newest answer")
    newest = prompt.messages[-2:]
    prompt.forget_oldest(keep)
    assert len(prompt.messages) <= keep
    assert prompt.messages[-2:] == newest
    assert prompt.messages[0]["role"] == "user"


# --- through the HTTP path ----------------------------------------------------------------


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # The in-process client: Hypothesis drives synchronous tests; the fake engine
    # answers with each example's text, one character per token.
    app = create_app(make_settings(max_input_chars=1000, max_new_tokens=100), engine=FakeEngine())
    with TestClient(app) as c:
        yield c


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(user_input=st.text(st.characters(codec=None), min_size=1, max_size=60), answer=st.text(min_size=1, max_size=60))
def test_any_unicode_in_and_out_is_valid_utf8_json_and_recorded_exactly(
    client: TestClient, user_input: str, answer: str
) -> None:
    client.app.state.chat_stream.engine.answer = answer  # type: ignore[attr-defined]
    client.cookies.clear()
    # ensure_ascii: lone surrogates travel as "\\udXXX" escapes, as any JSON client may send them
    r = client.post("/chat_stream", content=json.dumps({"user_input": user_input}).encode())
    assert r.status_code < 500
    if any(0xD800 <= ord(c) <= 0xDFFF for c in user_input):
        assert r.status_code == 422  # not text: refused before it reaches a tokenizer
        return
    if not user_input.strip():
        assert r.status_code == 400
        return
    assert r.status_code == 200
    events = parse_sse(r.content.decode("utf-8", "strict"))
    deltas = "".join(str(data["text"]) for kind, data in events if kind == "delta")
    assert deltas == answer
    messages = client.get("/get_prompt").json()["messages"]
    assert messages == [{"role": "user", "content": user_input}, {"role": "assistant", "content": answer}]


@pytest.mark.engine
async def test_real_engine_deltas_split_inside_multibyte_characters_arrive_as_valid_utf8(
    real_engine: VLLMEngine,
) -> None:
    # The tiny model's byte-level tokenizer knows Japanese and emoji bytes; sampled at random,
    # many tokens end inside a character. vLLM's detokenizer must hold or replace those bytes.
    settings_ = make_settings(max_new_tokens=48, temperature=1.0, ignore_eos=True)
    answers = non_ascii = replaced = 0
    async with running_gateway(real_engine, settings_, engine_started=True) as gw:
        for prompt in ("こんにちは 会話", "🙂 ✓ café", "émigré naïve 日本語", "ストリーム 履歴 🙂🙂"):
            for _ in range(3):
                async with httpx.AsyncClient(base_url=gw.url) as client:
                    r = await client.post("/chat_stream", json={"user_input": prompt})
                    assert r.status_code == 200
                    events = parse_sse(r.content.decode("utf-8", "strict"))
                    assert events[-1][0] == "done"
                    deltas = "".join(str(d["text"]) for kind, d in events if kind == "delta")
                    deltas.encode("utf-8", "strict")  # no lone surrogates from half characters
                    recorded = (await client.get("/get_prompt")).json()["messages"][-1]["content"]
                    assert recorded == deltas
                answers += 1
                non_ascii += any(ord(c) > 127 for c in deltas)
                replaced += "\ufffd" in deltas
    print(f"\nreal-engine answers: {answers}, with non-ASCII text: {non_ascii}, with U+FFFD: {replaced}")
    assert non_ascii > 0  # the check saw multibyte output

"""ChatPrompt: rendering in each format, trimming to a token budget, and persistence."""

from __future__ import annotations

import json

import pytest

from prompts import ChatPrompt, FormatName, TurnTooLong, get_format
from tests.fakes import CharTokenizer


def conversation(format: FormatName = "template", system: str | None = "S", turns: int = 2) -> ChatPrompt:
    """`turns` exchanges U1/A1 ... and a final open question U<turns+1>."""
    prompt = ChatPrompt(system=system, format=format).bind(CharTokenizer())
    for i in range(1, turns + 1):
        prompt.add_user(f"U{i}")
        prompt.add_assistant(f"A{i}")
    prompt.add_user(f"U{turns + 1}")
    return prompt


@pytest.mark.parametrize("format", ["template", "chatml", "llama2", "vicuna"])
def test_an_empty_conversation_renders_without_raising(format: FormatName) -> None:
    assert ChatPrompt(format=format).create_prompt() == ""
    assert ChatPrompt(format=format).bind(CharTokenizer()).create_prompt() == ""


@pytest.mark.parametrize(
    ("format", "text", "stop"),
    [
        pytest.param(
            "chatml",
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
            "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n",
            ("<|im_end|>", "<|im_start|>"),
            id="chatml",
        ),
        pytest.param(
            "llama2",
            "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST] A1 </s><s>[INST] U2 [/INST]",
            ("</s>", "[INST]"),
            id="llama2",
        ),
        pytest.param(
            "vicuna",
            "S\n\nUSER: U1\nASSISTANT: A1</s>\nUSER: U2\nASSISTANT:",
            ("</s>", "USER:"),
            id="vicuna",
        ),
        pytest.param(
            "template",
            "<system>S</system><user>U1</user><assistant>A1</assistant><user>U2</user><assistant>",
            (),
            id="template",
        ),
    ],
)
def test_each_format_renders_the_conversation_with_its_stop_strings(
    format: FormatName, text: str, stop: tuple[str, ...]
) -> None:
    prompt = conversation(format, turns=1)
    assert prompt.create_prompt() == text
    assert prompt.stop == stop


def test_a_finished_exchange_renders_without_a_generation_prompt() -> None:
    prompt = ChatPrompt(format="chatml")
    prompt.add_user("hi")
    prompt.add_assistant("hello")
    assert prompt.create_prompt() == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"


def test_the_template_format_needs_a_tokenizer_once_there_is_something_to_render() -> None:
    prompt = ChatPrompt()
    prompt.add_user("hi")
    with pytest.raises(RuntimeError, match="tokenizer"):
        prompt.create_prompt()
    with pytest.raises(RuntimeError, match="bind"):
        prompt.render(100)


def test_an_unknown_format_names_the_choices() -> None:
    with pytest.raises(ValueError, match="chatml, llama2, vicuna"):
        get_format("alpaca")


def test_render_keeps_everything_that_fits() -> None:
    prompt = conversation(turns=3)
    text = prompt.create_prompt()
    rendered = prompt.render(len(text))
    assert (rendered.text, rendered.dropped_messages) == (text, 0)
    assert rendered.token_ids == CharTokenizer().encode(text)


def test_trimming_drops_the_oldest_turns_first_and_keeps_as_many_as_fit() -> None:
    prompt = conversation(turns=3)
    newest_two = "<system>S</system><user>U3</user><assistant>A3</assistant><user>U4</user><assistant>"
    rendered = prompt.render(len(newest_two))
    assert rendered.text == newest_two
    assert rendered.dropped_messages == 4
    # The conversation itself keeps every turn; only the engine's view is trimmed.
    assert len(prompt) == 7
    assert prompt.create_prompt().startswith("<system>S</system><user>U1</user>")


def test_trimming_never_drops_the_system_prompt_or_the_newest_turn() -> None:
    prompt = conversation(turns=3)
    minimal = "<system>S</system><user>U4</user><assistant>"
    rendered = prompt.render(len(minimal))
    assert rendered.text == minimal
    with pytest.raises(TurnTooLong) as info:
        prompt.render(len(minimal) - 1)
    assert (info.value.needed, info.value.budget) == (len(minimal), len(minimal) - 1)
    assert "tokens" in str(info.value)


def test_a_single_turn_that_cannot_fit_is_turn_too_long() -> None:
    prompt = ChatPrompt().bind(CharTokenizer())
    prompt.add_user("x" * 100)
    with pytest.raises(TurnTooLong):
        prompt.render(50)


def test_a_trimmed_prompt_opens_with_a_user_turn() -> None:
    prompt = conversation(format="chatml", system=None, turns=3)
    # A budget that would fit "A2 + U3 + A3 + U4" but not "U2 ...": the cut must not start at an answer.
    rendered = prompt.render(len(prompt.create_prompt()) - 20)
    assert rendered.text.startswith("<|im_start|>user\n")


@pytest.mark.parametrize("format", ["template", "chatml", "llama2", "vicuna"])
def test_to_dict_and_from_dict_round_trip_through_json(format: FormatName) -> None:
    prompt = conversation(format)
    restored = ChatPrompt.from_dict(json.loads(json.dumps(prompt.to_dict())))
    assert (restored.system, restored.format.name, restored.messages) == (prompt.system, format, prompt.messages)
    assert restored.bind(CharTokenizer()).create_prompt() == prompt.create_prompt()


def test_from_dict_builds_the_subclass_it_is_called_on() -> None:
    class MyPrompt(ChatPrompt):
        pass

    assert type(MyPrompt.from_dict(conversation().to_dict())) is MyPrompt


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([{"role": "system", "content": "sneaky"}], id="system-role"),
        pytest.param([{"role": "tool", "content": "x"}], id="unknown-role"),
        pytest.param(["just text"], id="not-a-mapping"),
    ],
)
def test_from_dict_refuses_malformed_messages(messages: list[object]) -> None:
    with pytest.raises(ValueError, match="role"):
        ChatPrompt.from_dict({"system": None, "format": "chatml", "messages": messages})


def test_regenerate_helpers_pop_only_a_final_answer() -> None:
    prompt = conversation(turns=1)
    assert prompt.pop_answer() is None  # ends with a question
    prompt.add_assistant("A2")
    assert prompt.pop_answer() == "A2"
    assert prompt.last_user_text() == "U2"
    assert ChatPrompt().last_user_text() is None


def test_restore_brings_back_the_snapshot_whatever_happened_since() -> None:
    prompt = conversation(turns=1)
    snapshot = prompt.snapshot()
    prompt.add_assistant("partial")
    prompt.messages[0]["content"] = "edited in place"
    prompt.add("system", "new system")
    prompt.restore(snapshot)
    assert prompt.system == "S"
    assert [m["content"] for m in prompt.messages] == ["U1", "A1", "U2"]


def test_add_rejects_an_unknown_role() -> None:
    with pytest.raises(ValueError, match="role"):
        ChatPrompt().add("tool", "x")  # type: ignore[arg-type]


def test_clear_keeps_the_system_prompt_and_format() -> None:
    prompt = conversation("vicuna")
    prompt.clear()
    assert len(prompt) == 0 and prompt.system == "S" and prompt.format.name == "vicuna"

"""Prompt formats: how a conversation becomes the text a model was trained on.

The default, `template`, is the model's own chat template (from its tokenizer).
The presets render classic formats by hand and carry the stop strings a model
of that family needs, for models whose tokenizer has no template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["system", "user", "assistant"]
FormatName = Literal["template", "chatml", "llama2", "vicuna"]


class Tokenizer(Protocol):
    """What prompt rendering needs from a model's tokenizer."""

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; the format already spelled any special tokens."""
        ...

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        """The model's own chat template applied to `messages`."""
        ...


class PromptFormat(Protocol):
    @property
    def name(self) -> FormatName: ...

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings the model needs beyond its EOS token."""
        ...

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, tokenizer: Tokenizer | None
    ) -> str: ...


class FormatNeedsTokenizer(RuntimeError):
    """The `template` format was asked to render before a tokenizer was bound."""


class TemplateRejected(ValueError):
    """The model's chat template refused the conversation (a system prompt it does not take, turns out of order).

    The message names only the kind of error: a template's own text may quote the conversation.
    """


@dataclass(frozen=True)
class TemplateFormat:
    """The model's own chat template; needs the model's tokenizer."""

    name: FormatName = "template"
    stop: tuple[str, ...] = ()

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, tokenizer: Tokenizer | None
    ) -> str:
        # An empty conversation renders as nothing, with or without a tokenizer
        # (a callback may render a conversation that was rolled back to empty).
        if not messages:
            return ""
        if tokenizer is None:
            raise FormatNeedsTokenizer("the 'template' prompt format needs a tokenizer: call ChatPrompt.bind()")
        try:
            return tokenizer.render_chat(messages, add_generation_prompt)
        except Exception as exc:  # jinja2's TemplateError from `raise_exception(...)`, or whatever the template hit
            kind = type(exc).__name__
            raise TemplateRejected(f"the model's chat template refused the conversation ({kind})") from exc


@dataclass(frozen=True)
class ChatMLFormat:
    """`<|im_start|>role ... <|im_end|>` (Qwen, many fine-tunes)."""

    name: FormatName = "chatml"
    stop: tuple[str, ...] = ("<|im_end|>", "<|im_start|>")

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, tokenizer: Tokenizer | None
    ) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@dataclass(frozen=True)
class Llama2Format:
    """`<s>[INST] <<SYS>>...<</SYS>> user [/INST] answer </s>` (Llama 2 chat)."""

    name: FormatName = "llama2"
    stop: tuple[str, ...] = ("</s>", "[INST]")

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, tokenizer: Tokenizer | None
    ) -> str:
        system = "".join(m["content"] for m in messages if m["role"] == "system")
        parts: list[str] = []
        for m in messages:
            if m["role"] == "user":
                content = m["content"]
                if system and not parts:
                    content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
                parts.append(f"<s>[INST] {content} [/INST]")
            elif m["role"] == "assistant":
                parts.append(f" {m['content']} </s>")
        # Llama 2 has no separate generation prompt: the open [INST] block is it.
        return "".join(parts)


@dataclass(frozen=True)
class VicunaFormat:
    """`SYSTEM USER: ... ASSISTANT: ...</s>` (Vicuna v1.1 and its descendants)."""

    name: FormatName = "vicuna"
    stop: tuple[str, ...] = ("</s>", "USER:")

    def render(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool, tokenizer: Tokenizer | None
    ) -> str:
        parts: list[str] = []
        for m in messages:
            if m["role"] == "system":
                parts.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                parts.append(f"USER: {m['content']}\n")
            else:
                parts.append(f"ASSISTANT: {m['content']}</s>\n")
        return "".join(parts) + ("ASSISTANT:" if add_generation_prompt else "")


FORMATS: dict[str, PromptFormat] = {
    f.name: f for f in (TemplateFormat(), ChatMLFormat(), Llama2Format(), VicunaFormat())
}


def get_format(name: str) -> PromptFormat:
    """The format called `name`; a ValueError names the choices when it is unknown."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}") from None

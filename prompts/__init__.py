"""Conversations and the prompt formats that render them for a model."""

from prompts.chat_prompt import ChatPrompt, RenderedPrompt, TurnTooLong
from prompts.formats import (
    FORMATS,
    ChatMLFormat,
    FormatName,
    Llama2Format,
    PromptFormat,
    TemplateFormat,
    TemplateRejected,
    Tokenizer,
    VicunaFormat,
    get_format,
)
from prompts.token_counts import CountingTokenizer

__all__ = [
    "FORMATS",
    "ChatMLFormat",
    "ChatPrompt",
    "CountingTokenizer",
    "FormatName",
    "Llama2Format",
    "PromptFormat",
    "RenderedPrompt",
    "TemplateFormat",
    "TemplateRejected",
    "Tokenizer",
    "TurnTooLong",
    "VicunaFormat",
    "get_format",
]

"""Conversations and the prompt formats that render them for a model."""

from prompts.chat_prompt import ChatPrompt, RenderedPrompt, TurnTooLong
from prompts.formats import (
    FORMATS,
    ChatMLFormat,
    FormatName,
    Llama2Format,
    PromptFormat,
    TemplateFormat,
    Tokenizer,
    VicunaFormat,
    get_format,
)

__all__ = [
    "FORMATS",
    "ChatMLFormat",
    "ChatPrompt",
    "FormatName",
    "Llama2Format",
    "PromptFormat",
    "RenderedPrompt",
    "TemplateFormat",
    "Tokenizer",
    "TurnTooLong",
    "VicunaFormat",
    "get_format",
]

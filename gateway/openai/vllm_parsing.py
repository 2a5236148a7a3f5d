"""vLLM's tool and reasoning parser for one answer, seen through `AnswerParser`.

The decisions are vLLM's (serving_chat.py, reproduced branch for branch): a
forced call (`required` or named) always lists its calls and never leaves
`content` null; `auto` lists calls only when the parser found some;
`finish_reason` is "tool_calls" for an `auto` or `required` answer that
called a tool, "stop" for a named one; `parallel_tool_calls: false` keeps the
first call only.

One addition: a forced answer cut by `max_tokens` in the middle of a further
call still returns the calls it completed (vLLM's parsers drop them all with
the broken one). The grammar's own tags say where a call ends.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionNamedToolChoiceParam,
    ChatCompletionRequest,
)
from vllm.renderers.chat_utils import make_tool_call_id

from gateway.openai.frontend import Delta, Parsed


class VLLMAnswerParser:
    """One answer's parser: vLLM's `Parser` (stateful, so one per choice) and the request it reads for."""

    def __init__(self, parser: Any, request: ChatCompletionRequest, prompt_ids: list[int], auto_tools: bool) -> None:
        self._parser = parser
        self._request = request
        self._prompt_ids = prompt_ids
        self._auto_tools = auto_tools
        self._named = isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam)
        self._required = request.tool_choice == "required"
        self._single = request.parallel_tool_calls is False
        self._call_ends = sorted(set(_tag_ends(request.structured_outputs)), key=len, reverse=True)

    def delta(self, text: str, token_ids: Sequence[int], *, finished: bool) -> Delta | None:
        message = self._parser.parse_delta(
            delta_text=text,
            delta_token_ids=list(token_ids),
            request=self._request,
            prompt_token_ids=self._prompt_ids,
            finished=finished,
        )
        if message is None:
            return None
        calls = [
            call.model_dump(exclude_none=True) for call in message.tool_calls if not self._single or call.index == 0
        ]
        return Delta(content=message.content, reasoning=message.reasoning, tool_calls=calls)

    def whole(self, text: str, token_ids: Sequence[int], finish_reason: str) -> Parsed:
        request = self._request
        self._parser.set_prompt_token_ids(self._prompt_ids)
        reasoning, content, calls = self._parser.parse(
            text, request, enable_auto_tools=self._auto_tools, model_output_token_ids=token_ids
        )
        if (self._named or self._required) and not calls and finish_reason == "length":
            complete = self._completed_calls(text)
            if complete:
                reasoning, content, calls = self._parser.parse(
                    complete, request, enable_auto_tools=self._auto_tools, model_output_token_ids=token_ids
                )
        if not request.include_reasoning:
            reasoning = None
        has_tool_parser = type(self._parser).tool_parser_cls is not None
        listed: list[Any] = []
        auto_called = False
        if self._named or self._required:
            content, listed = content or "", calls or []
        elif self._auto_tools and has_tool_parser and request.tools and request.tool_choice in ("auto", None):
            listed = calls or []
            auto_called = bool(listed)
        tool_calls = [
            {
                "id": call.id or make_tool_call_id(),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in listed
        ]
        if self._single:
            tool_calls = tool_calls[:1]
        called = auto_called or (self._required and finish_reason == "stop")
        return Parsed(
            content=content,
            reasoning=reasoning,
            tool_calls=tool_calls,
            finish_reason="tool_calls" if called else finish_reason,
            reasoning_tokens=self.reasoning_tokens(token_ids),
        )

    def _completed_calls(self, text: str) -> str:
        """`text` up to the end of its last complete tool call ("" if it has none)."""
        ends = [text.rfind(end) + len(end) for end in self._call_ends if end in text]
        return text[: max(ends)] if ends else ""

    def finish_reason(self, finish_reason: str, *, streamed_tool_calls: bool) -> str:
        if streamed_tool_calls and not self._named and finish_reason == "stop":
            return "tool_calls"
        return finish_reason

    def reasoning_tokens(self, token_ids: Sequence[int]) -> int:
        return int(self._parser.count_reasoning_tokens(tuple(token_ids)))


def _tag_ends(structured_outputs: Any) -> Iterator[str]:
    """The `end` strings of the tags in a structural tag (where a constrained tool call ends)."""
    tag = getattr(structured_outputs, "structural_tag", None)
    if not tag:
        return
    stack: list[Any] = [json.loads(tag)]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "tag" and isinstance(node.get("end"), str) and node["end"]:
                yield node["end"]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)

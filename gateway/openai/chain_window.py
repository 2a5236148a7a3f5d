"""The part of a stored chain the engine is given: the newest turns that leave room for the answer.

A chain longer than the model's context is cut at a turn (a user message),
oldest turns first, as `/chat_stream` trims its conversations; the stored
items stay whole. With `max_output_tokens`, a cut also makes room for that
many answer tokens; when even the newest turn alone leaves less, the answer
gets the room there is (as the chat route clamps `max_tokens`). With
`truncation: "disabled"` nothing is cut: a prompt past the context is a 400.
"""

from __future__ import annotations

from typing import Any

from gateway.core.errors import PromptTooLong
from gateway.openai.format import dumps
from gateway.openai.frontend import Frontend, Prepared
from gateway.openai.response_items import chat_messages, turn_starts
from gateway.openai.responses_request import ResponsesRequest, chat_body


async def prepare_window(
    frontend: Frontend, req: ResponsesRequest, items: list[dict[str, Any]], context: int
) -> Prepared:
    """The chat request over the newest part of `items` that fits `context` (see the module)."""
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    messages = chat_messages(items)
    room = req.max_output_tokens or 1

    async def attempt(start: int, *, strict: bool = True) -> Prepared:
        prepared = await frontend.chat(dumps(chat_body(req, system + messages[start:], stream=req.stream)))
        prompt = len(prepared.prompts[0].token_ids)
        if strict and prompt + room > context:
            raise PromptTooLong(f"{prompt} prompt tokens leave no room for {room} more in {context}", param="input")
        return prepared

    cuts = [i for i in turn_starts(messages) if i > 0]
    if req.truncation == "disabled" or not cuts:
        return await attempt(0, strict=False)
    try:
        return await attempt(0)
    except PromptTooLong:
        pass
    # The earliest cut that fits (fitting only gets easier as the cut moves on): the newest turn
    # alone first, then a binary search renders about log2(turns) windows.
    try:
        best = await attempt(cuts[-1])
    except PromptTooLong:
        return await attempt(cuts[-1], strict=False)
    low, high = 0, len(cuts) - 1
    while low < high:
        mid = (low + high) // 2
        try:
            best, high = await attempt(cuts[mid]), mid
        except PromptTooLong:
            low = mid + 1
    return best

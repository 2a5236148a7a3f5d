"""`/v1/responses` answers: a `response` object, or OpenAI's typed events with sequence numbers.

A stream runs `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its content (`response.content_part.added`,
`response.output_text.delta` ..., or `response.function_call_arguments.delta`
...), the item's closing events, and `response.completed` (or
`response.incomplete` when the answer hit its token limit). The answer is read
by the chat route's tool and reasoning parser (`AnswerSpec.parser`), so a tool
call becomes a `function_call` item. The finished response is kept
(`final`) for the route to store.

A streamed background response's run also appends each event to its
replica's event log (`log`), which the streams of that response read; it
opens with `response.created` reading `queued` (`queued()`), and its last
event comes from the stored ending (event_log.py), not from here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.core.engine import EngineOutput
from gateway.core.errors import GatewayError
from gateway.core.generation import Outcome
from gateway.http.sse import PING, SSE_HEADERS
from gateway.openai.event_log import LAST_EVENTS, EventLog
from gateway.openai.format import JSON_HEADERS, dumps, openai_error_body
from gateway.openai.frontend import AnswerParser, AnswerSpec, Delta
from gateway.openai.response_items import function_call, new_id, output_message


@dataclass(eq=False, slots=True)
class _Item:
    """One output item being streamed: a message, a function call or reasoning."""

    kind: str
    index: int
    item_id: str
    parts: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)


class ResponsesFormat:
    """One generation spelled as a Responses stream or one `response` object."""

    ping = PING

    def __init__(self, spec: AnswerSpec, prompt_ids: list[int], response: dict[str, Any]) -> None:
        self.spec = spec
        self.streaming = spec.streaming
        self.headers = SSE_HEADERS if spec.streaming else JSON_HEADERS
        self.response = response  # the object's fields, as `response.created` shows them
        self.final: dict[str, Any] | None = None  # the finished response, once done
        self._parser: AnswerParser | None = None if spec.parser is None else spec.parser(prompt_ids)
        self._seq = 0
        self._started = False
        self._announced = False  # `response.created` sent already, reading queued
        self.log: EventLog | None = None  # a streamed background response's events, as they are spelled
        self._items: list[_Item] = []
        self._open: _Item | None = None
        self._calls: dict[int, _Item] = {}  # streamed tool calls by their chat index
        self._parts: list[str] = []
        self._token_ids: list[int] = []
        self._finish_reason: str | None = None
        # Events an item switch produces (one item closed, the next opened), sent ahead of the next event.
        self._queue: list[bytes] = []

    # --- per engine output -------------------------------------------------------------------

    def opening(self) -> bytes:
        # As OpenAI does: the client has the response's id and state while the prompt is prefilled.
        return self._start() if self.streaming else b""

    def delta(self, output: EngineOutput) -> bytes:
        finished = output.finish_reason is not None
        if finished:
            self._finish_reason = output.finish_reason
        self._token_ids.extend(output.token_ids)
        if not self.streaming:
            self._parts.append(output.text)
            return b""
        delta: Delta | None
        if self._parser is not None:
            delta = self._parser.delta(output.text, output.token_ids, finished=finished)
        else:
            delta = Delta(content=output.text) if output.text else None
        out = self._start()
        if delta is None:
            return out
        if delta.reasoning:
            item = self._item("reasoning")
            item.parts.append(delta.reasoning)
            out += self._event("response.reasoning_text.delta", **self._at(item), delta=delta.reasoning)
        if delta.content:
            item = self._item("message")
            item.parts.append(delta.content)
            out += self._event("response.output_text.delta", **self._at(item), delta=delta.content, logprobs=[])
        for call in delta.tool_calls:
            out += self._call_delta(call)
        return out

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        created = {**self.response, "status": "in_progress"}
        out = b"" if self._announced else self._event("response.created", response=created)
        return out + self._event("response.in_progress", response=created)

    def queued(self) -> None:
        """A streamed background response's first event, at once: `response.created`, reading queued."""
        self._announced = True
        self._event("response.created", response={**self.response, "status": "queued"})

    def _item(self, kind: str) -> _Item:
        """The open item of `kind`, opening it (and closing the one before) if need be."""
        if self._open is not None and self._open.kind == kind:
            return self._open
        self._close_open_into(self._queue)
        item = _Item(kind, len(self._items), new_id("msg" if kind == "message" else "rs"))
        self._items.append(item)
        self._open = item
        self._queue.append(self._added(item))
        return item

    def _call_delta(self, call: dict[str, Any]) -> bytes:
        index = int(call.get("index", len(self._calls)))
        function = call.get("function") or {}
        item = self._calls.get(index)
        out = b""
        if item is None:
            self._close_open_into(self._queue)
            self._open = None
            item = _Item("function_call", len(self._items), new_id("fc"), call_id=call.get("id") or new_id("call"))
            item.name = function.get("name") or ""
            self._items.append(item)
            self._calls[index] = item
            self._queue.append(self._added(item))
        arguments = function.get("arguments") or ""
        if arguments:
            item.parts.append(arguments)
            out = self._event("response.function_call_arguments.delta", **self._where(item), delta=arguments)
        return out

    def _added(self, item: _Item) -> bytes:
        out = self._event("response.output_item.added", output_index=item.index, item=self._shape(item, "in_progress"))
        if item.kind != "function_call":
            out += self._event("response.content_part.added", **self._at(item), part=self._part(item))
        return out

    def _close_open_into(self, queue: list[bytes]) -> None:
        if self._open is not None:
            queue.append(self._closing(self._open))
            self._open = None

    def _closing(self, item: _Item) -> bytes:
        where = self._where(item)
        if item.kind == "function_call":
            out = self._event("response.function_call_arguments.done", **where, name=item.name, arguments=item.text)
        else:
            if item.kind == "message":
                out = self._event("response.output_text.done", **where, content_index=0, text=item.text, logprobs=[])
            else:
                out = self._event("response.reasoning_text.done", **where, content_index=0, text=item.text)
            out += self._event("response.content_part.done", **where, content_index=0, part=self._part(item))
        return out + self._event("response.output_item.done", output_index=item.index, item=self._shape(item))

    # --- shapes --------------------------------------------------------------------------------

    def _shape(self, item: _Item, status: str = "completed") -> dict[str, Any]:
        if item.kind == "message":
            return output_message(item.text, item.item_id, status)
        if item.kind == "function_call":
            return function_call(item.call_id, item.name, item.text, item.item_id, status)
        content = [{"type": "reasoning_text", "text": item.text}]
        return {"type": "reasoning", "id": item.item_id, "summary": [], "content": content, "status": status}

    def _part(self, item: _Item) -> dict[str, Any]:
        if item.kind == "message":
            return {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": item.text}

    @staticmethod
    def _where(item: _Item) -> dict[str, Any]:
        return {"item_id": item.item_id, "output_index": item.index}

    def _at(self, item: _Item) -> dict[str, Any]:
        return {**self._where(item), "content_index": 0}

    def _event(self, kind: str, **fields: Any) -> bytes:
        queued = b"".join(self._queue)
        self._queue.clear()
        body = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        event = b"event: " + kind.encode() + b"\ndata: " + dumps(body) + b"\n\n"
        if self.log is not None and kind not in LAST_EVENTS:  # the log spells its own, from the stored ending
            self.log.append(event)
        return queued + event

    # --- at the end ----------------------------------------------------------------------------

    def finish(self, outcome: Outcome) -> dict[str, Any]:
        """The finished response, built once: it is stored before `done` tells the client it is complete."""
        if self.final is None:
            if self.streaming:
                # The events that close the stream's items go out ahead of whatever comes next:
                # `response.completed`, or `response.failed` if storing the response fails.
                self._queue.insert(0, self._start())
                if not self._items:  # an empty answer is still one (empty) message
                    self._item("message")
                self._close_open_into(self._queue)
                for item in self._calls.values():
                    self._queue.append(self._closing(item))
                output = [self._shape(item) for item in self._items]
            else:
                output = self._whole()
            self.final = self._finished(outcome, output)
        return self.final

    def done(self, outcome: Outcome) -> bytes:
        final = self.finish(outcome)
        if not self.streaming:
            return dumps(final)
        kind = "response.incomplete" if final["status"] == "incomplete" else "response.completed"
        return self._event(kind, response=final)

    def _whole(self) -> list[dict[str, Any]]:
        text, reason = "".join(self._parts), self._finish_reason or "stop"
        if self._parser is None:
            return [output_message(text, new_id("msg"))]
        parsed = self._parser.whole(text, self._token_ids, reason)
        output: list[dict[str, Any]] = []
        if parsed.reasoning:
            reasoning = _Item("reasoning", 0, new_id("rs"), [parsed.reasoning])
            output.append(self._shape(reasoning))
        if parsed.content or not parsed.tool_calls:
            output.append(output_message(parsed.content or "", new_id("msg")))
        for call in parsed.tool_calls:
            function = call.get("function") or {}
            call_id = call.get("id") or new_id("call")
            output.append(function_call(call_id, function.get("name", ""), function.get("arguments", ""), new_id("fc")))
        return output

    def _finished(self, outcome: Outcome, output: list[dict[str, Any]]) -> dict[str, Any]:
        incomplete = self._finish_reason == "length"
        reasoning = 0
        if self.spec.reasoning_details and self._parser is not None:
            reasoning = self._parser.reasoning_tokens(self._token_ids)
        usage = {
            "input_tokens": outcome.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": outcome.cached_tokens,
                "cache_write_tokens": outcome.cache_write_tokens,
            },
            "output_tokens": outcome.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
        }
        return {
            **self.response,
            "status": "incomplete" if incomplete else "completed",
            "completed_at": None if incomplete else int(time.time()),
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": output,
            "usage": usage,
        }

    def error(self, error: GatewayError) -> bytes:
        failed = {**self.response, "status": "failed", "error": {"code": "server_error", "message": error.message}}
        return self._start() + self._event("response.failed", response=failed)

    def refusal(self, error: GatewayError) -> bytes:
        return dumps(openai_error_body(error))

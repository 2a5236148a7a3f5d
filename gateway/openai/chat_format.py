"""`/v1/chat/completions` answers: `chat.completion.chunk` streams and `chat.completion` bodies.

The role travels in each choice's first chunk together with its first content
(or tool call), never in an empty chunk ahead of it, so a client's time to
first token is the time to the first real token. A choice's last chunk carries
its `finish_reason`; `include_usage` adds one chunk with `"choices": []` and
the usage, then `data: [DONE]`.
"""

from __future__ import annotations

from typing import Any

from gateway.core.engine import EngineOutput
from gateway.core.generation import GenerationRequest, Outcome
from gateway.http.sse import json_string
from gateway.openai.format import DONE, Answer, BaseFormat, dumps, event, usage
from gateway.openai.frontend import AnswerSpec, Delta, Prompt
from gateway.openai.logprobs import chat_entries, prompt_logprobs_json


class ChatFormat(BaseFormat):
    """One chat generation spelled as OpenAI chunks or one JSON body."""

    def __init__(self, gen: GenerationRequest, spec: AnswerSpec, prompt: Prompt) -> None:
        super().__init__(gen, spec, "chat.completion.chunk" if spec.streaming else "chat.completion")
        self.prompt = prompt
        self.fast = spec.streaming and spec.plain
        # Every plain chunk starts the same way: built once per generation.
        self._prefix = b"data: " + dumps(self.head)[:-1] + b',"choices":[{"index":0,'
        self._role = dumps(spec.role)
        self._first_chunk = True
        self._prompt_records: Any = None

    # --- per engine output -------------------------------------------------------------------

    def delta(self, output: EngineOutput) -> bytes:
        if self.fast:
            return self._plain_chunk(output)
        answer = self.answers.get(output.index)
        if answer is None:
            parser = None if self.spec.parser is None else self.spec.parser(self.prompt.token_ids)
            answer = self.answers[output.index] = Answer(output.index, parser=parser)
        if output.prompt_logprobs and self._prompt_records is None:  # sent once, with the first output
            self._prompt_records = output.prompt_logprobs
        answer.tokens += output.num_new_tokens
        finished = output.finish_reason is not None
        if finished:
            answer.finish_reason, answer.stop_reason = output.finish_reason, output.stop_reason
        entries = None
        if self.spec.logprobs is not None:
            entries = chat_entries(
                output.token_ids, output.logprobs, self.spec.logprobs, self.spec.all_top_logprobs, self.token_text
            )
        if not self.streaming:
            answer.parts.append(output.text)
            answer.token_ids.extend(output.token_ids)
            if entries is not None:
                answer.logprobs.extend(entries)
            return b""
        return self._chunk(answer, output, entries)

    def _plain_chunk(self, output: EngineOutput) -> bytes:
        text, reason = output.text, output.finish_reason
        if not text and reason is None:
            return b""
        if self._first_chunk:  # the role travels with the first content, never ahead of it
            self._first_chunk = False
            piece = b'"delta":{"role":' + self._role + b',"content":' + json_string(text) + b"}"
        elif text:
            piece = b'"delta":{"content":' + json_string(text) + b"}"
        else:
            piece = b'"delta":{}'
        if reason is None:
            return self._prefix + piece + b',"logprobs":null,"finish_reason":null}]}\n\n'
        ending = b',"logprobs":null,"finish_reason":' + dumps(reason) + b',"stop_reason":' + dumps(output.stop_reason)
        return self._prefix + piece + ending + b"}]}\n\n"

    def _chunk(self, answer: Answer, output: EngineOutput, entries: list[dict[str, Any]] | None) -> bytes:
        spec, reason = self.spec, output.finish_reason
        delta: Delta | None
        if answer.parser is not None:
            delta = answer.parser.delta(output.text, output.token_ids, finished=reason is not None)
            if delta is not None and delta.tool_calls:
                answer.streamed_tool_calls = True
        else:
            delta = Delta(content=output.text) if output.text else None
        answer.token_ids.extend(output.token_ids)
        if delta is None and reason is None and entries is None and not spec.return_token_ids:
            return b""
        body: dict[str, Any] = {}
        if not answer.opened:
            answer.opened = True
            body["role"] = spec.role
            body["content"] = spec.echo_text + (delta.content or "" if delta is not None else "")
        elif delta is not None and delta.content is not None:
            body["content"] = delta.content
        if delta is not None:
            if delta.reasoning is not None:
                body["reasoning"] = delta.reasoning
            if delta.tool_calls:
                body["tool_calls"] = delta.tool_calls
        choice: dict[str, Any] = {"index": answer.index, "delta": body, "logprobs": None}
        if entries is not None:
            choice["logprobs"] = {"content": entries, "refusal": None}
        if reason is None:
            choice["finish_reason"] = None
        else:
            choice["finish_reason"] = (
                reason
                if answer.parser is None
                else answer.parser.finish_reason(reason, streamed_tool_calls=answer.streamed_tool_calls)
            )
            choice["stop_reason"] = output.stop_reason
        if spec.return_token_ids:
            choice["token_ids"] = list(output.token_ids)
        chunk: dict[str, Any] = {**self.head, "choices": [choice]}
        if self._first_chunk:
            self._first_chunk = False
            if spec.return_token_ids:
                chunk["prompt_token_ids"] = self.prompt.token_ids
            if spec.return_prompt_text:
                chunk["prompt_text"] = self.prompt.text
        if spec.continuous_usage:
            chunk["usage"] = usage(output.num_prompt_tokens, answer.tokens)
        return event(chunk)

    # --- at the end ----------------------------------------------------------------------------

    def done(self, outcome: Outcome) -> bytes:
        reasoning = self._reasoning_tokens()
        if self.streaming:
            return self.usage_event(outcome, outcome.completion_tokens, reasoning) + DONE
        body: dict[str, Any] = {
            **self.head,
            "choices": [self._choice(answer) for answer in self.answers_in_order()],
            "usage": self.usage(outcome, outcome.completion_tokens, reasoning),
        }
        if self._prompt_records is not None:
            body["prompt_logprobs"] = prompt_logprobs_json(self._prompt_records)
        if self.spec.return_token_ids:
            body["prompt_token_ids"] = self.prompt.token_ids
        if self.spec.return_prompt_text:
            body["prompt_text"] = self.prompt.text
        return dumps(body)

    def _choice(self, answer: Answer) -> dict[str, Any]:
        text, reason = answer.text, answer.finish_reason or "stop"
        message: dict[str, Any] = {"role": self.spec.role}
        if answer.parser is None:
            message["content"] = text
        else:
            parsed = answer.parser.whole(text, answer.token_ids, reason)
            message["content"], reason = parsed.content, parsed.finish_reason
            if parsed.reasoning is not None:
                message["reasoning"] = parsed.reasoning
            if parsed.tool_calls:
                message["tool_calls"] = parsed.tool_calls
        if self.spec.echo_text:
            message["content"] = self.spec.echo_text + (message["content"] or "")
        message["refusal"] = None  # OpenAI's schema requires it; the gateway never refuses in words
        choice: dict[str, Any] = {
            "index": answer.index,
            "message": message,
            "logprobs": None if self.spec.logprobs is None else {"content": answer.logprobs, "refusal": None},
            "finish_reason": reason,
            "stop_reason": answer.stop_reason,
        }
        if self.spec.return_token_ids:
            choice["token_ids"] = answer.token_ids
        return choice

    def _reasoning_tokens(self) -> int | None:
        if not self.spec.reasoning_details:
            return None
        return sum(a.parser.reasoning_tokens(a.token_ids) for a in self.answers.values() if a.parser is not None)

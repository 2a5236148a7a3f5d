"""`/v1/completions` answers: `text_completion` chunks and bodies.

One choice per prompt and answer, numbered prompt by prompt as vLLM numbers
them (`prompt_index * n + index`). With `echo`, a choice starts with its
prompt (and, with `logprobs`, the prompt's logprobs: the first token has none,
so its logprob is null, as in vLLM and OpenAI). `max_tokens: 0` with `echo`
(lm-eval's loglikelihood) answers the prompt alone and counts no completion
tokens.
"""

from __future__ import annotations

from typing import Any

from gateway.core.engine import EngineOutput
from gateway.core.generation import GenerationRequest, Outcome
from gateway.http.sse import json_string
from gateway.openai.format import DONE, Answer, BaseFormat, dumps, event, usage
from gateway.openai.frontend import AnswerSpec, Prompt
from gateway.openai.logprobs import completion_logprobs, prompt_logprobs_json


class CompletionFormat(BaseFormat):
    """One completions generation (one or several prompts) spelled as OpenAI chunks or one JSON body."""

    def __init__(self, gen: GenerationRequest, spec: AnswerSpec, prompts: list[Prompt]) -> None:
        super().__init__(gen, spec, "text_completion")
        self.prompts = prompts
        self.fast = spec.streaming and spec.plain and len(prompts) == 1
        self._prefix = b"data: " + dumps(self.head)[:-1] + b',"choices":[{"index":0,'
        # Per prompt: the engine's prompt logprobs (they come once, with the prompt's first output).
        self._prompt_records: dict[int, Any] = {}
        self._offsets: dict[int, int] = {}  # per choice: where the next logprob token's text starts

    def delta(self, output: EngineOutput) -> bytes:
        if self.fast:
            reason = output.finish_reason
            if not output.text and reason is None:
                return b""
            if reason is None:
                return (
                    self._prefix
                    + b'"text":'
                    + json_string(output.text)
                    + b',"logprobs":null,"finish_reason":null}]}\n\n'
                )
            ending = b',"finish_reason":' + dumps(reason) + b',"stop_reason":' + dumps(output.stop_reason) + b"}]}\n\n"
            return self._prefix + b'"text":' + json_string(output.text) + b',"logprobs":null' + ending
        index = output.prompt_index * self.spec.n + output.index
        answer = self.answers.get(index)
        first = answer is None
        if answer is None:
            answer = self.answers[index] = Answer(index, prompt_index=output.prompt_index)
        if output.prompt_logprobs:  # sent once per prompt, with its first output
            self._prompt_records.setdefault(output.prompt_index, output.prompt_logprobs)
        if output.finish_reason is not None:
            answer.finish_reason, answer.stop_reason = output.finish_reason, output.stop_reason
        text, token_ids, records = self._piece(answer, output, first)
        answer.tokens += 0 if self.spec.max_tokens_zero else output.num_new_tokens
        if not self.streaming:
            answer.parts.append(text)
            answer.token_ids.extend(token_ids)
            if self.spec.logprobs is not None:
                answer.logprobs.extend(records)
            return b""
        if not text and not token_ids and output.finish_reason is None:
            return b""
        return self._chunk(answer, output, text, token_ids, records, first)

    def _piece(self, answer: Answer, output: EngineOutput, first: bool) -> tuple[str, list[int], list[Any]]:
        """The text, tokens and logprob records this output adds to its choice (the prompt first, with echo)."""
        if self.spec.max_tokens_zero and not first:
            return "", [], []
        records = list(output.logprobs or [None] * len(output.token_ids))
        if not (self.spec.echo and first):
            return output.text, list(output.token_ids), records
        prompt = self.prompts[answer.prompt_index]
        prompt_records = list(self._prompt_records.get(answer.prompt_index) or [None] * len(prompt.token_ids))
        if self.spec.max_tokens_zero:
            return prompt.text or "", list(prompt.token_ids), prompt_records
        return (prompt.text or "") + output.text, [*prompt.token_ids, *output.token_ids], prompt_records + records

    def _chunk(
        self, answer: Answer, output: EngineOutput, text: str, token_ids: list[int], records: list[Any], first: bool
    ) -> bytes:
        spec = self.spec
        choice: dict[str, Any] = {"index": answer.index, "text": text, "logprobs": None}
        if spec.logprobs is not None:
            offset = self._offsets.get(answer.index, 0)
            logprobs = completion_logprobs(
                token_ids, records, spec.logprobs, spec.all_top_logprobs, self.token_text, offset
            )
            if logprobs["tokens"]:
                self._offsets[answer.index] = logprobs["text_offset"][-1] + len(logprobs["tokens"][-1])
            choice["logprobs"] = logprobs
        choice["finish_reason"] = output.finish_reason
        if output.finish_reason is not None:
            choice["stop_reason"] = output.stop_reason
        if spec.return_token_ids:
            if first:
                choice["prompt_token_ids"] = self.prompts[answer.prompt_index].token_ids
            choice["token_ids"] = [] if spec.max_tokens_zero else list(output.token_ids)
        chunk: dict[str, Any] = {**self.head, "choices": [choice]}
        if spec.continuous_usage:
            chunk["usage"] = usage(output.num_prompt_tokens, answer.tokens)
        return event(chunk)

    def done(self, outcome: Outcome) -> bytes:
        completion_tokens = 0 if self.spec.max_tokens_zero else outcome.completion_tokens
        if self.streaming:
            return self.usage_event(outcome, completion_tokens) + DONE
        choices = [self._choice(answer) for answer in self.answers_in_order()]
        return dumps({**self.head, "choices": choices, "usage": self.usage(outcome, completion_tokens)})

    def _choice(self, answer: Answer) -> dict[str, Any]:
        spec = self.spec
        logprobs = None
        if spec.logprobs is not None:
            logprobs = completion_logprobs(
                answer.token_ids, answer.logprobs, spec.logprobs, spec.all_top_logprobs, self.token_text
            )
        choice: dict[str, Any] = {
            "index": answer.index,
            "text": answer.text,
            "logprobs": logprobs,
            "finish_reason": answer.finish_reason or "stop",
            "stop_reason": answer.stop_reason,
        }
        records = self._prompt_records.get(answer.prompt_index)
        if records is not None:
            choice["prompt_logprobs"] = prompt_logprobs_json(records)
        if spec.return_token_ids:
            prompt_ids = self.prompts[answer.prompt_index].token_ids
            choice["prompt_token_ids"] = prompt_ids
            # Echo put the prompt's tokens in front of the answer's (for the logprobs): only the answer's here.
            generated = answer.token_ids[len(prompt_ids) :] if spec.echo else answer.token_ids
            choice["token_ids"] = [] if spec.max_tokens_zero else generated
        return choice

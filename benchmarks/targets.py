"""The things a benchmark can drive, behind one small interface.

A `Target` sends one chat turn for one simulated user and returns what the
client measured. Users carry their own connection and cookie jar (sessions
on `/chat_stream`) and, for stateless APIs, the conversation so far.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from benchmarks.httpclient import Connection, HTTPError, sse_events
from benchmarks.records import RequestRecord

if TYPE_CHECKING:
    from gateway.core.engine import Engine


@dataclass
class User:
    """One simulated user: a connection with its cookies, and the conversation for stateless APIs."""

    conn: Connection | None = None
    messages: list[dict[str, str]] = field(default_factory=list)

    def new_conversation(self) -> None:
        """Forget the conversation (and, for /chat_stream, the session cookie: a new visitor)."""
        self.messages.clear()
        if self.conn is not None:
            self.conn.cookies.clear()


class Target(Protocol):
    """Something that answers chat turns."""

    name: str
    kind: str

    def new_user(self) -> User: ...

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord: ...

    async def close(self) -> None: ...


def _fail(record: RequestRecord, error: str) -> RequestRecord:
    record.error = error
    record.ended = time.perf_counter()
    return record


class _HTTPTarget:
    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._users: list[User] = []

    def new_user(self) -> User:
        user = User(conn=Connection(self.url))
        self._users.append(user)
        return user

    async def close(self) -> None:
        for user in self._users:
            if user.conn is not None:
                user.conn.close()
        self._users.clear()


class ChatStreamTarget(_HTTPTarget):
    """The gateway's `/chat_stream`: SSE `delta`/`done`/`error` events; the session cookie keeps the conversation.

    The answer length is the server's `--max-new-tokens` (the endpoint takes no length).
    """

    kind = "chat_stream"

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        assert user.conn is not None
        record = RequestRecord(started=time.perf_counter())
        try:
            response = await user.conn.request("POST", "/chat_stream", json_body={"user_input": text})
            record.status = response.status
            if response.status != 200:
                await response.read()
                record.ended = time.perf_counter()
                return record
            buffer = bytearray()
            async for chunk in response.chunks():
                now = time.perf_counter()
                for event, data in sse_events(buffer, chunk):
                    if event == "delta":
                        if json.loads(data).get("text"):
                            if record.first_token_at is None:
                                record.first_token_at = now
                            record.chunk_times.append(now)
                    elif event == "done":
                        done = json.loads(data)
                        record.state = done.get("state")
                        usage = done.get("usage") or {}
                        record.output_tokens = int(usage.get("completion_tokens", 0))
                        record.prompt_tokens = int(usage.get("prompt_tokens", 0))
                        record.ok = record.state == "success"
                    elif event == "error":
                        record.error = "error event: " + str(json.loads(data).get("error", {}).get("type"))
        except (HTTPError, ValueError) as exc:
            return _fail(record, f"{type(exc).__name__}: {exc}"[:120])
        record.ended = time.perf_counter()
        if not record.ok and record.error is None:
            record.error = "stream ended without a done event"
        return record


class OpenAIChatTarget(_HTTPTarget):
    """Any OpenAI-compatible `/v1/chat/completions` (vLLM's server, the gateway's OpenAI route).

    Sends `stream`, `stream_options.include_usage` and vLLM's `ignore_eos`, and
    reads `data:` chunks until `data: [DONE]`; tokens come from the usage chunk.
    The client keeps the conversation (the API is stateless).
    """

    kind = "openai"

    def __init__(self, name: str, url: str, model: str, temperature: float = 0.7, top_p: float = 0.95) -> None:
        super().__init__(name, url)
        self.model = model
        self.temperature = temperature
        self.top_p = top_p

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        assert user.conn is not None
        user.messages.append({"role": "user", "content": text})
        body = {
            "model": self.model,
            "messages": user.messages,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        record = RequestRecord(started=time.perf_counter())
        answer: list[str] = []
        finished = False
        try:
            response = await user.conn.request("POST", "/v1/chat/completions", json_body=body)
            record.status = response.status
            if response.status != 200:
                await response.read()
                user.messages.pop()
                record.ended = time.perf_counter()
                return record
            buffer = bytearray()
            async for chunk in response.chunks():
                now = time.perf_counter()
                for _, data in sse_events(buffer, chunk):
                    if data == "[DONE]":
                        finished = True
                        continue
                    payload: dict[str, Any] = json.loads(data)
                    if "error" in payload:
                        record.error = "error chunk: " + str(payload["error"].get("type"))
                        continue
                    for choice in payload.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            answer.append(content)
                            if record.first_token_at is None:
                                record.first_token_at = now
                            record.chunk_times.append(now)
                    if usage := payload.get("usage"):
                        record.output_tokens = int(usage.get("completion_tokens") or 0)
                        record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        except (HTTPError, ValueError) as exc:
            user.messages.pop()
            return _fail(record, f"{type(exc).__name__}: {exc}"[:120])
        record.ended = time.perf_counter()
        user.messages.append({"role": "assistant", "content": "".join(answer)})
        record.ok = finished and record.error is None and record.output_tokens > 0
        if not record.ok and record.error is None:
            record.error = "stream ended without [DONE] and usage"
        return record


class PlainTextTarget(_HTTPTarget):
    """The original ChatStream: `POST /chat_stream`, a plain-text body streamed in chunks.

    It reports no token counts; a complete 200 stream is counted as the
    `max_tokens` it was configured to force (see peers/original_chatstream.py).
    """

    kind = "plain_text"

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        assert user.conn is not None
        record = RequestRecord(started=time.perf_counter())
        try:
            response = await user.conn.request("POST", "/chat_stream", json_body={"user_input": text})
            record.status = response.status
            if response.status != 200:
                await response.read()
                record.ended = time.perf_counter()
                return record
            async for chunk in response.chunks():
                if chunk:
                    now = time.perf_counter()
                    if record.first_token_at is None:
                        record.first_token_at = now
                    record.chunk_times.append(now)
        except HTTPError as exc:
            return _fail(record, f"HTTPError: {exc}"[:120])
        record.ended = time.perf_counter()
        record.ok = record.first_token_at is not None
        record.output_tokens = max_tokens if record.ok else 0
        if not record.ok:
            record.error = "empty stream"
        return record


class EngineTarget:
    """The engine itself, in this process, with no HTTP: the physical limit.

    Prompts are rendered with the model's chat template and tokenized exactly
    as the gateway does, so the engine sees the same token ids.
    """

    kind = "engine"

    def __init__(self, name: str, engine: Engine, temperature: float = 0.7, top_p: float = 0.95) -> None:
        self.name = name
        self.engine = engine
        self.temperature = temperature
        self.top_p = top_p
        self._next_id = 0

    def new_user(self) -> User:
        return User()

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        from gateway.core.engine import SamplingOptions

        user.messages.append({"role": "user", "content": text})
        tokenizer = self.engine.tokenizer
        ids = tokenizer.encode(tokenizer.render_chat(user.messages, add_generation_prompt=True))
        options = SamplingOptions(
            max_tokens=max_tokens, temperature=self.temperature, top_p=self.top_p, ignore_eos=True
        )
        self._next_id += 1
        record = RequestRecord(started=time.perf_counter())
        answer: list[str] = []
        try:
            async for out in self.engine.generate(f"bench-{self._next_id}", ids, options):
                now = time.perf_counter()
                if out.num_new_tokens:
                    if record.first_token_at is None:
                        record.first_token_at = now
                    record.chunk_times.append(now)
                    record.output_tokens += out.num_new_tokens
                record.prompt_tokens = out.num_prompt_tokens
                answer.append(out.text)
                if out.finish_reason is not None:
                    record.ok = out.finish_reason != "abort"
        except Exception as exc:  # the engine's failure is the measurement, not a crash of the harness
            return _fail(record, f"{type(exc).__name__}: {exc}"[:120])
        record.status = 200
        record.ended = time.perf_counter()
        user.messages.append({"role": "assistant", "content": "".join(answer)})
        return record

    async def close(self) -> None:
        return None

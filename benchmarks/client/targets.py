"""The things a benchmark can drive, behind one small interface.

A `Target` sends one chat turn for one simulated user and returns what the
client measured. Users carry their own connection and cookie jar (sessions
on `/chat_stream`) and, for stateless APIs, the conversation so far. The
in-process engine, the fourth target, is in `engine.py`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from benchmarks.client.http import Connection, HTTPError, Response
from benchmarks.client.sse import SSEDecoder
from benchmarks.records import RequestRecord

# Reads a 200 response's body into the record (first token, chunk times, tokens, ok, error).
_BodyReader = Callable[[Response, RequestRecord], Awaitable[None]]


@dataclass
class User:
    """One simulated user: a connection with its cookies, and the conversation for stateless APIs.

    `conversation` names the current conversation (a router's session key).
    """

    conn: Connection | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    conversation: str = field(default_factory=lambda: uuid.uuid4().hex)

    def new_conversation(self) -> None:
        """Forget the conversation (and, for /chat_stream, the session cookie: a new visitor)."""
        self.messages.clear()
        self.conversation = uuid.uuid4().hex
        if self.conn is not None:
            self.conn.cookies.clear()


class Target(Protocol):
    """Something that answers chat turns."""

    name: str

    def new_user(self) -> User: ...

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord: ...

    async def close(self) -> None: ...


def token_arrived(record: RequestRecord, now: float) -> None:
    """A chunk carrying output text arrived at `now` (TTFT and ITL are taken from these)."""
    if record.first_token_at is None:
        record.first_token_at = now
    record.chunk_times.append(now)


class _HTTPTarget:
    """The HTTP part every server target shares: one connection per user, and one request's measurement.

    With `api_key`, every request carries `Authorization: Bearer <api_key>`.
    """

    def __init__(self, name: str, url: str, api_key: str | None = None) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self._headers = {"authorization": f"Bearer {api_key}"} if api_key else None
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

    async def _post(
        self, user: User, path: str, body: Any, read: _BodyReader, headers: dict[str, str] | None = None
    ) -> RequestRecord:
        """POST `body`; a 200 is read by `read`, any other status is a refusal (its body read and dropped)."""
        assert user.conn is not None
        record = RequestRecord(started=time.perf_counter())
        try:
            if self._headers is not None:
                headers = {**self._headers, **(headers or {})}
            response = await user.conn.request("POST", path, json_body=body, headers=headers)
            record.status = response.status
            record.replica = response.header("x-chatstream-replica")
            if (retry_after := response.header("retry-after")) is not None:
                record.retry_after = float(retry_after)
            if response.status == 200:
                await read(response, record)
            else:
                await response.read()
        except (HTTPError, ValueError) as exc:  # ValueError: a malformed JSON event
            record.error = f"{type(exc).__name__}: {exc}"[:120]
        record.ended = time.perf_counter()
        return record


class ChatStreamTarget(_HTTPTarget):
    """The gateway's `/chat_stream`: SSE `delta`/`done`/`error` events; the session cookie keeps the conversation.

    The answer length is the server's `--max-new-tokens` (the endpoint takes no length).
    """

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        return await self._post(user, "/chat_stream", {"user_input": text}, self._read)

    @staticmethod
    async def _read(response: Response, record: RequestRecord) -> None:
        decoder = SSEDecoder()
        async for chunk in response.chunks():
            now = time.perf_counter()
            for event, data in decoder.feed(chunk):
                if event == "delta":
                    if json.loads(data).get("text"):
                        token_arrived(record, now)
                elif event == "done":
                    done = json.loads(data)
                    usage = done.get("usage") or {}
                    record.output_tokens = int(usage.get("completion_tokens", 0))
                    record.prompt_tokens = int(usage.get("prompt_tokens", 0))
                    record.ok = done.get("state") == "success"
                elif event == "error":
                    record.error = "error event: " + str(json.loads(data).get("error", {}).get("type"))
        if not record.ok and record.error is None:
            record.error = "stream ended without a done event"


class OpenAIChatTarget(_HTTPTarget):
    """Any OpenAI-compatible `/v1/chat/completions` (vLLM's server, the gateway's OpenAI route).

    Sends `stream`, `stream_options.include_usage` and vLLM's `ignore_eos`, and
    reads `data:` chunks until `data: [DONE]`; tokens come from the usage chunk.
    The client keeps the conversation (the API is stateless).
    """

    def __init__(
        self,
        name: str,
        url: str,
        model: str,
        temperature: float = 0.7,
        top_p: float = 0.95,
        api_key: str | None = None,
        *,
        system: str | None = None,
        session_header: str | None = None,
    ) -> None:
        """`system` opens every conversation; `session_header` (e.g. X-Session-ID) names it for a router."""
        super().__init__(name, url, api_key)
        self.model = model
        self.temperature = temperature
        self.top_p = top_p
        self.system = system
        self.session_header = session_header

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        if not user.messages and self.system is not None:
            user.messages.append({"role": "system", "content": self.system})
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
        answer: list[str] = []

        async def read(response: Response, record: RequestRecord) -> None:
            await self._read(response, record, answer)

        headers = {self.session_header: user.conversation} if self.session_header else None
        record = await self._post(user, "/v1/chat/completions", body, read, headers)
        if record.ok:
            user.messages.append({"role": "assistant", "content": "".join(answer)})
        else:  # the turn did not happen: the next one must not follow an unanswered question
            user.messages.pop()
        return record

    @staticmethod
    async def _read(response: Response, record: RequestRecord, answer: list[str]) -> None:
        decoder = SSEDecoder()
        finished = False
        async for chunk in response.chunks():
            now = time.perf_counter()
            for _, data in decoder.feed(chunk):
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
                        token_arrived(record, now)
                if usage := payload.get("usage"):
                    record.output_tokens = int(usage.get("completion_tokens") or 0)
                    record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        record.ok = finished and record.error is None and record.output_tokens > 0
        if not record.ok and record.error is None:
            record.error = "stream ended without [DONE] and usage"


class PlainTextTarget(_HTTPTarget):
    """The original ChatStream: `POST /chat_stream`, a plain-text body streamed in chunks.

    It reports no token counts; a complete 200 stream is counted as the
    `max_tokens` it was configured to force (see peers/original_chatstream.py).
    """

    async def chat(self, user: User, text: str, max_tokens: int) -> RequestRecord:
        async def read(response: Response, record: RequestRecord) -> None:
            async for chunk in response.chunks():
                if chunk:
                    token_arrived(record, time.perf_counter())
            record.ok = record.first_token_at is not None
            record.output_tokens = max_tokens if record.ok else 0
            if not record.ok:
                record.error = "empty stream"

        return await self._post(user, "/chat_stream", {"user_input": text}, read)

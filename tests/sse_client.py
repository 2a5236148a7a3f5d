"""Reading streams as a client does: SSE events of `/chat_stream`, OpenAI `data:` chunks, and
connections a test can cut. The suite's one SSE parser."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx


class Event(NamedTuple):
    event: str
    data: dict[str, Any]


def _event(block: list[str]) -> Event:
    fields = dict(line.split(": ", 1) for line in block)
    # The contract: every event is exactly one `event:` line and one JSON `data:` line.
    assert sorted(fields) == ["data", "event"], block
    return Event(fields["event"], json.loads(fields["data"]))


def parse_sse(text: str) -> list[Event]:
    """The events of a whole SSE body (keep-alive comments skipped)."""
    blocks = text.replace("\r\n", "\n").split("\n\n")
    lines = ([line for line in b.split("\n") if line and not line.startswith(":")] for b in blocks)
    return [_event(block) for block in lines if block]


async def iter_events(response: httpx.Response) -> AsyncGenerator[Event, None]:
    """The events of a streamed response as they arrive."""
    block: list[str] = []
    async for line in response.aiter_lines():
        if line:
            if not line.startswith(":"):
                block.append(line)
        elif block:
            yield _event(block)
            block = []


async def first_event(response: httpx.Response) -> Event:
    async with aclosing(iter_events(response)) as events:
        return await anext(events)


def answer_of(events: list[Event]) -> str:
    return "".join(e.data["text"] for e in events if e.event == "delta")


def raw_events(body: str) -> list[tuple[str | None, str]]:
    """The (`event:` name or None, `data:`) pairs of any SSE body; multi-line data joined as SSE does."""
    events = []
    for block in body.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        if data:
            events.append((name, "\n".join(data)))
    return events


def data_lines(body: str) -> list[str]:
    """The payloads of an OpenAI stream's `data:` events, in order."""
    return [data for _, data in raw_events(body)]


def chunks(body: str) -> list[dict[str, Any]]:
    """The JSON chunks of an OpenAI stream (everything before `[DONE]`)."""
    lines = data_lines(body)
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def eventually(predicate: Callable[[], bool], timeout: float = 30) -> None:
    """Wait until `predicate()` holds (bounded: a hang fails the test instead of stalling CI)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def open_raw_post(
    base_url: str, path: str, body: dict[str, Any], cookie: str | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send a whole POST on a bare socket and leave the response unread, so the test can hang up at will."""
    url = urlsplit(base_url)
    assert url.hostname == "127.0.0.1" and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    payload = json.dumps(body).encode()
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
    ]
    if cookie is not None:
        head.append(f"Cookie: {cookie}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
    await writer.drain()
    return reader, writer


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()

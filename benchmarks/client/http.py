"""A minimal HTTP/1.1 client on raw asyncio streams, for load generation.

The benchmark client shares two cores with the server it measures, so every
microsecond it spends parsing is taken from the server. httpx costs more CPU
per streamed chunk than reading the socket directly (scenario 5 measures
both), so the load generator speaks HTTP/1.1 itself: one keep-alive
connection per simulated user, chunked bodies decoded as they arrive, and an
`abort()` that cuts the TCP connection mid-stream the way a closed browser
tab does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

_READ_LIMIT = 1 << 20


class HTTPError(Exception):
    """The connection failed or the server broke the protocol."""


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise HTTPError(f"bad chunk size line {line[:80]!r}") from None


@dataclass
class Response:
    """A response whose body is read incrementally with `chunks()` or all at once with `read()`."""

    status: int
    headers: dict[str, list[str]]
    _conn: Connection
    _chunked: bool
    _length: int | None
    _done: bool = False

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (one item per chunk the server flushed)."""
        reader = self._conn.reader
        assert reader is not None
        try:
            if self._chunked:
                while True:
                    size_line = await reader.readline()
                    if not size_line:
                        raise HTTPError("connection closed inside a chunked body")
                    size = _chunk_size(size_line)
                    if size == 0:
                        await reader.readline()  # the empty trailer
                        break
                    data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._length is not None:
                left = self._length
                while left:
                    data = await reader.read(min(left, 65536))
                    if not data:
                        raise HTTPError("connection closed before the body ended")
                    left -= len(data)
                    yield data
            else:
                while data := await reader.read(65536):
                    yield data
                self._conn.close()
            self._done = True
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            self._conn.close()
            raise HTTPError(str(exc) or type(exc).__name__) from exc
        finally:
            if not self._done or (self.header("connection") or "").lower() == "close":
                self._conn.close()

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    async def json(self) -> Any:
        return json.loads(await self.read())


@dataclass
class Connection:
    """One keep-alive connection (opened lazily, reopened after a close), with its own cookie jar."""

    url: str
    cookies: dict[str, str] = field(default_factory=dict)
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.base_path = parts.path.rstrip("/")

    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> Response:
        """Send one request and read its status line and headers."""
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"content-type": "application/json", **(headers or {})}
        lines = [f"{method} {self.base_path}{path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if self.cookies:
            lines.append("cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        lines.append(f"content-length: {len(body or b'')}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            fresh = self.writer is None
            if fresh:
                await self._open()
            assert self.reader is not None and self.writer is not None
            try:
                self.writer.write(head + (body or b""))
                return await self._read_head()
            except (ConnectionError, asyncio.IncompleteReadError, HTTPError) as exc:
                self.close()
                # A keep-alive connection the server closed while idle: retry once on a new one.
                if fresh or attempt:
                    raise HTTPError(str(exc) or type(exc).__name__) from exc
        raise AssertionError("unreachable")

    async def _open(self) -> None:
        try:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=_READ_LIMIT)
        except OSError as exc:
            raise HTTPError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc

    async def _read_head(self) -> Response:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise HTTPError("the server closed the connection")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
            raise HTTPError(f"bad status line {status_line[:80]!r}")
        headers: dict[str, list[str]] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        for cookie in headers.get("set-cookie", []):
            pair = cookie.split(";", 1)[0]
            key, _, val = pair.partition("=")
            self.cookies[key.strip()] = val.strip()
        chunked = "chunked" in (headers.get("transfer-encoding", [""])[0]).lower()
        length = headers.get("content-length")
        return Response(int(parts[1]), headers, self, chunked, int(length[0]) if length else None)

    def abort(self) -> None:
        """Cut the connection at once (RST), like a client that vanishes mid-stream."""
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

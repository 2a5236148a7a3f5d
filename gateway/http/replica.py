"""ReplicaHeaders: what one replica tells the router in front of it, on every response.

Several replicas behind a router share their conversations through Redis, but
a conversation's earlier turns are in the prefix cache of one replica's engine
only. The router can keep the conversation there only if it knows which
replica that is, from the very first turn, so each response says:

- `X-Chatstream-Replica: <id>`: the replica that answered (refusals too, for
  the logs);
- `Set-Cookie: chatstream_replica=<id>` on every response it served (status
  below 400) unless the request's cookie already names it: browsers and
  `/chat_stream` clients send it back with the next turn, and the router
  (`deploy/nginx/chatstream.conf`) pins the turn to this replica. A turn that
  spilled over to another replica is re-pinned there, where its whole prefix
  now is. API clients that keep no cookies echo the header as a request header
  of the same name instead;
- `X-Chatstream-Load: running=R, waiting=W, capacity=C, queue_size=Q` (an RFC
  8941 dictionary): the admission load as the response starts, for a router's
  access log or a router that weighs replicas by it.

With `overload_status=503`, a full queue is answered 503 instead of 429 (body
and `Retry-After` unchanged): routers such as vllm-router retry a 429 on the
same replica and move a request elsewhere only after a 5xx.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.core.admission import Load
from gateway.http.asgi import add_headers, on_response_start

REPLICA_HEADER = "X-Chatstream-Replica"
LOAD_HEADER = "X-Chatstream-Load"
REPLICA_COOKIE = "chatstream_replica"


class ReplicaHeaders:
    """Names the replica and its load on every HTTP response, and pins clients to it with a cookie."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        replica_id: str | None,
        load: Callable[[], Load],
        secure: bool = True,
        overload_status: int = 429,
    ) -> None:
        self.app = app
        self.load = load
        self.overload_status = overload_status
        self._id = replica_id.encode() if replica_id else None
        flags = "; Secure" if secure else ""
        self._cookie = f"{REPLICA_COOKIE}={replica_id}; Path=/; SameSite=Lax; HttpOnly{flags}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pinned_here = self._id is not None and _cookie(scope, REPLICA_COOKIE.encode()) == self._id

        def edit(message: Message) -> None:
            if message["status"] == 429:
                message["status"] = self.overload_status
            load = self.load()
            value = f"running={load.running}, waiting={load.waiting}, capacity={load.capacity}"
            headers = [(b"x-chatstream-load", f"{value}, queue_size={load.queue_size}".encode())]
            if self._id is not None:
                headers.append((b"x-chatstream-replica", self._id))
                if message["status"] < 400 and not pinned_here:
                    headers.append((b"set-cookie", self._cookie))
            add_headers(message, headers)

        await self.app(scope, receive, on_response_start(send, edit))


def _cookie(scope: Scope, name: bytes) -> bytes | None:
    """The value of cookie `name` in the request, if it has one."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key != b"cookie":
            continue
        for pair in value.split(b";"):
            k, _, v = pair.partition(b"=")
            if k.strip() == name:
                return v.strip()
    return None

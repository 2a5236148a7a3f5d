"""Admission on arrival: a generation request claims its place before any work, or is refused at once.

Pure ASGI, outside the session middleware: for the generation routes it names
the request's user from its headers (gateway/http/identity.py) and claims an
admission place. A refusal (503 while draining or with the engine down, 429
when the queue is full or a key's limit is reached, each with `Retry-After`)
is answered in microseconds, before the body is read, the session loaded or
the prompt rendered, in the error shape of the path's API.

An accepted claim travels in `scope["state"]` (`CLAIM_STATE`); the runner
confirms it once the prompt is rendered and releases it when the generation
ends. Whatever else ends the request (a 400 from the route, a session busy, the
client gone, an exception), the claim is released here when the app returns;
releasing is idempotent, so a claim is given back exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.admission import CLAIM_STATE
from gateway.core.claims import Admission
from gateway.core.errors import EngineUnavailable, GatewayError, Overloaded, SessionBusy, error_headers
from gateway.http.asgi import route_path
from gateway.http.identity import Identify
from gateway.http.keys import SESSION_CLASS

SESSION_BUSY = "a generation is already running in this session; wait for it or stop it"
GENERATION_PATHS = frozenset({"/chat_stream", "/v1/chat/completions", "/v1/completions", "/v1/responses"})

# (route, error, user class): counts a refusal in the metrics.
OnRefusal = Callable[[str, GatewayError, str], None]


class AdmissionMiddleware:
    """Claims an admission place for every POST to `paths`, or refuses it before the app sees it.

    `error_body(path, error)` spells a refusal in the path's API shape;
    `ready()` says whether the engine can serve at all.
    """

    def __init__(
        self,
        app: ASGIApp,
        admission: Admission,
        identify: Identify,
        error_body: Callable[[str, GatewayError], Any],
        ready: Callable[[], bool],
        on_refusal: OnRefusal | None = None,
        paths: Collection[str] = GENERATION_PATHS,
    ) -> None:
        self.app = app
        self.admission = admission
        self.identify = identify
        self.error_body = error_body
        self.ready = ready
        self.on_refusal = on_refusal
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope) if scope["type"] == "http" and scope["method"] == "POST" else ""
        if path not in self.paths:
            await self.app(scope, receive, send)
            return
        principal = self.identify(scope)
        try:
            if not self.ready():
                raise EngineUnavailable("the engine is not available", retry_after=5)
            try:
                claim = await self.admission.aclaim(principal)
            except Overloaded:
                # A session runs one generation at a time: if its own is still in flight, that
                # is the truthful answer (the page says so), not that the server is busy.
                if principal.user_class == SESSION_CLASS and await self.admission.aholds_place(principal.user):
                    raise SessionBusy(SESSION_BUSY) from None
                raise
        except GatewayError as error:
            if self.on_refusal is not None:
                self.on_refusal(path.lstrip("/"), error, principal.user_class)
            await self._refuse(send, path, error)
            return
        state = scope.setdefault("state", {})
        state[CLAIM_STATE] = claim
        try:
            await self.app(scope, receive, send)
        finally:
            # A claim the runner took, it releases exactly once; a background response's run
            # takes it past the request's end. What nobody took (a refusal before any
            # generation, an error) is given back here.
            if state.get(CLAIM_STATE) is claim:
                claim.release()

    async def _refuse(self, send: Send, path: str, error: GatewayError) -> None:
        body = json.dumps(self.error_body(path, error)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in error_headers(error).items()]
        await send({"type": "http.response.start", "status": error.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

"""What a route accepts as a body: the one size bound every route shares, and the JSON routes' media type."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request

from gateway.core.errors import BadChatRequest, BodyTooLarge, UnsupportedMediaType


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) past `limit` bytes without reading the rest.

    A declared `Content-Length` over the limit is refused before anything is
    read; a chunked or lying body is cut as soon as it passes the limit.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadChatRequest("the client disconnected while sending the body") from None
    return b"".join(chunks)


def require_json(headers: Headers) -> None:
    """A JSON route's body is declared JSON (`application/json`, `application/*+json`) or not declared at all.

    Anything else (a form, `text/plain`) is refused with 415: HTML forms can
    send only those, so another site's form can never post a turn, and a
    client that forgot the header hears so instead of "not valid JSON".
    """
    declared = headers.get("content-type")
    if declared is None:
        return
    media = declared.partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise UnsupportedMediaType("the body must be JSON: send it with Content-Type: application/json")

"""The one bound on request bodies, shared by every route that reads one."""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from gateway.core.errors import BadChatRequest, BodyTooLarge


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

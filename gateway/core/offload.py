"""Offload: request work that would block the event loop runs on one worker thread instead.

Rendering a conversation (a Jinja chat template) and tokenizing it takes a
few hundred microseconds for one short turn, milliseconds for a few turns and
far longer for a long history; on the event loop that time is a stall in every
other stream's tokens. `/chat_stream` renders through `Core.offload` all but a
short conversation, whose render costs less than the trip here and back
(`gateway.chat.chat_stream`); the OpenAI routes render through vLLM's renderer,
which has its own thread pool. One worker: long renders queue behind each other
rather than compete with the loop for the interpreter. (The tokenizer is shared
with the loop and with vLLM's pool; the gateway's own calls never reconfigure it,
as a call with other truncation settings would.)
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """`await offload(fn, *args)`: `fn(*args)` on the worker thread, its result or its exception back here."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chatstream-render")

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

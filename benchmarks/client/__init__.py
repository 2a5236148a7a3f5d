"""The load client: how the harness talks to what it measures.

- `http`: HTTP/1.1 on raw asyncio streams (one keep-alive connection per user);
- `sse`: the one server-sent-events decoder;
- `targets`: `/chat_stream`, OpenAI chat completions and the original's plain text, behind `Target`;
- `engine`: the in-process engine as a `Target` (no HTTP);
- `load`: load shapes (fixed concurrency, Poisson arrivals, multi-turn) over any `Target`;
- `metrics`: readings of a gateway's `/metrics`;
- `lag`: how late the client's own event loop wakes (a starved client inflates what it measures).
"""

from benchmarks.client.http import Connection, HTTPError, Response
from benchmarks.client.lag import loop_lag
from benchmarks.client.load import LoadResult, fixed_concurrency, make_prompt, multi_turn, poisson
from benchmarks.client.metrics import Metrics, read_metrics
from benchmarks.client.sse import Event, SSEDecoder
from benchmarks.client.targets import ChatStreamTarget, OpenAIChatTarget, PlainTextTarget, Target, User

__all__ = [
    "ChatStreamTarget",
    "Connection",
    "Event",
    "HTTPError",
    "LoadResult",
    "Metrics",
    "OpenAIChatTarget",
    "PlainTextTarget",
    "Response",
    "SSEDecoder",
    "Target",
    "User",
    "fixed_concurrency",
    "loop_lag",
    "make_prompt",
    "multi_turn",
    "poisson",
    "read_metrics",
]

"""What the runner is given to stream one generation: how its API spells it, and the stream's time limits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from gateway.core.engine import EngineOutput
from gateway.core.errors import GatewayError
from gateway.core.generation import Outcome


class StreamFormat(Protocol):
    """How one API spells the response of one generation."""

    streaming: bool
    headers: list[tuple[bytes, bytes]]
    ping: bytes

    def opening(self) -> bytes:
        """What to send once the engine has accepted the generation (`ACCEPTED`), before its first output.

        b"" sends nothing: the status line then waits for the first output. A format that
        opens here (Responses: the client learns the response id while prefill runs) still
        gets a real status for a request the engine refuses, since a refusal comes before
        `ACCEPTED`; the format's first output must open it too (an engine may not tell).
        """
        ...

    def delta(self, output: EngineOutput) -> bytes:
        """What to send for one engine output; b"" sends nothing (a body spelled at the end, held-back text)."""
        ...

    def done(self, outcome: Outcome) -> bytes: ...

    def error(self, error: GatewayError) -> bytes: ...

    def refusal(self, error: GatewayError) -> bytes:
        """The JSON body of a refusal sent instead of a stream."""
        ...


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Seconds: the longest wait for a slot, for one send to a client, and between keep-alive pings."""

    queue_timeout: float
    send_timeout: float
    ping_interval: float

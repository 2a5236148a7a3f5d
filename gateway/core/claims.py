"""What the HTTP layer and the runner need from admission: the `Admission` and `Claim` protocols.

Two implementations: the `AdmissionController` itself (one process, every
call answered in place) and `gateway.processes.remote.RemoteAdmission` (one
of several front-end processes, asking the one controller the gateway's
parent process owns). The calls that may cross a process boundary are
coroutines (`aclaim`, `aconfirm`, ...); on the controller they return without
ever suspending, so the single-process path pays nothing for them.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.core.admission import Load
from gateway.core.principal import ANONYMOUS, Principal


class Claim(Protocol):
    """One request's place: confirm it with the prompt's cost, wait for a slot, release it exactly once."""

    @property
    def principal(self) -> Principal: ...

    @property
    def queue_seconds(self) -> float: ...

    async def aconfirm(
        self, prompt_tokens: int = 0, max_tokens: int = 0, priority: int = 0, user: str | None = None
    ) -> None: ...

    async def wait(self, timeout: float | None) -> None: ...

    def release(self, output_tokens: int = 0) -> None: ...


class Admission(Protocol):
    """The gateway's admission: one for the whole gateway, however many processes serve it."""

    @property
    def draining(self) -> bool: ...

    def load(self) -> Load:
        """The load now (in a front-end process: as of its last exchange with the controller)."""
        ...

    async def aload(self) -> Load:
        """The load now, exactly."""
        ...

    async def aclaim(self, principal: Principal = ANONYMOUS) -> Claim: ...

    async def aholds_place(self, user: str) -> bool: ...

    async def afairness(self) -> dict[str, Any]: ...

    def start_draining(self) -> None: ...

    async def wait_idle(self) -> None:
        """Return once nothing this process admitted runs or waits."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

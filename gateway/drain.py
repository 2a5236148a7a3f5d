"""Graceful shutdown: drain on SIGTERM, then let uvicorn exit.

Uvicorn's own SIGTERM handling closes the listening socket at once, so new
clients get "connection refused" rather than an answer, and it cuts streams
still running after `timeout_graceful_shutdown`. A load balancer handles a
clear 503 better, and a stream should finish if it can, so the first SIGTERM
here only starts draining:

1. the admission controller refuses new generations (503 `engine_unavailable`
   with `Retry-After`), and `/ready` answers 503 so the balancer stops
   sending traffic; the listener stays open;
2. admitted and queued generations run to their end, for at most
   `drain_timeout` seconds;
3. then uvicorn shuts down as usual (closes the listener and idle
   connections, waits `grace` seconds for the rest, runs the lifespan
   shutdown) and the process exits with status 0.

A second SIGTERM, or SIGINT (Ctrl-C), skips the wait.

The engine dying is the other way the process ends: vLLM's engine cannot be
restarted in place, so (unless `exit_on_engine_death` is off) the server
stops and the CLI exits with status 1, for systemd, Kubernetes or any
supervisor to start a fresh process. In-flight streams have already been
told (an `error` event) by then.

Once started, the server also sets the objects of its start-up aside from the
garbage collector (`gc.freeze`, as vLLM's own server does): vLLM, torch and
the tokenizer leave over half a million objects that every full collection
would walk, about a third of a second of the event loop each time here,
which under load came to several µs per streamed token and a stall of every
stream whenever it ran.

A process killed outright runs none of this: with `watch_children`, the
server starts a watchdog once its engine runs (gateway.processes.watchdog),
which stops vLLM's processes should the server end without stopping them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
from types import FrameType

import uvicorn

from gateway.core.claims import Admission
from gateway.core.engine import Engine
from gateway.processes.watchdog import Watchdog

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that drains `admission` on SIGTERM, stops if `engine` dies, and freezes its start-up heap.

    With `watch_children`, a watchdog stops the process's children (vLLM's engine
    core) if the process ends without stopping them.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        admission: Admission,
        drain_timeout: float,
        engine: Engine | None = None,
        watch_children: bool = False,
    ) -> None:
        super().__init__(config)
        self.admission = admission
        self.drain_timeout = drain_timeout
        self.engine = engine
        self.engine_died = False
        self.watch_children = watch_children
        self.watchdog: Watchdog | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan has started the engine: its processes run
        if self.watch_children:
            self.watchdog = Watchdog.start()
        # The start-up's garbage goes first, then what is left of it is never scanned again.
        gc.collect()
        gc.freeze()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)  # the lifespan has stopped the engine
        if self.watchdog is not None:
            self.watchdog.close()

    async def on_tick(self, counter: int) -> bool:
        # uvicorn ticks every 0.1 s; look at the engine once a second.
        if self.engine is not None and counter % 10 == 0 and self.started and not self.engine.is_healthy():
            if not self.engine_died:
                logger.error("the engine has died: stopping so a supervisor can restart the process")
            self.engine_died = True
            self.should_exit = True
        return await super().on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self._drain_task is not None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        # Python runs signal handlers in the main thread, where the server's loop runs.
        loop = asyncio.get_running_loop()
        self._drain_task = loop.create_task(self.drain())

    async def drain(self) -> None:
        """Stop admitting, wait for running generations (up to `drain_timeout`), then exit."""
        self.admission.start_draining()
        load = self.admission.load()
        logger.info(
            "SIGTERM: draining %d running and %d queued generations (up to %.0f s)",
            load.running,
            load.waiting,
            self.drain_timeout,
        )
        try:
            await asyncio.wait_for(self.admission.wait_idle(), self.drain_timeout)
            logger.info("drained: shutting down")
        except TimeoutError:
            load = self.admission.load()
            logger.warning("drain timeout: shutting down with %d generations still running", load.running)
        self.should_exit = True

"""One front-end process of several: the whole gateway app, on a shared socket, as a client of one engine.

vLLM's `APIServerProcessManager` starts it (spawned) with the listening
socket, its vLLM client config (the engine core's addresses, its index) and
the gateway's `FrontEndArgs`. It serves exactly what a single-process gateway
serves; only its engine (an AsyncLLM client of the shared engine core) and its
admission (`RemoteAdmission`, the parent's one controller) differ.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import MutableSequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from vllm.entrypoints.launchers.launcher import NoSignalServer

from gateway.core.engine import Engine
from gateway.drain import DrainingServer
from gateway.processes.remote import RemoteAdmission
from gateway.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrontEndArgs:
    """What every front end is given: the settings and where the admission coordinator listens."""

    settings: Settings
    coordinator_path: str


class FrontEndServer(DrainingServer, NoSignalServer):  # type: ignore[misc]
    """The gateway's server (SIGTERM drains) accepting on the shared socket as vLLM's workers do.

    vLLM's `NoSignalServer` hands each pending connection to the front end with
    the fewest open ones (the kernel would give a burst to whichever wakes first);
    its signal handling is not taken: the gateway's own drains on SIGTERM.
    """

    capture_signals = uvicorn.Server.capture_signals

    def __init__(
        self,
        config: uvicorn.Config,
        admission: RemoteAdmission,
        drain_timeout: float,
        engine: Engine | None,
        peer_loads: tuple[MutableSequence[int], int] | None,
    ) -> None:
        DrainingServer.__init__(self, config, admission, drain_timeout, engine=engine)
        self.peer_loads = peer_loads
        self.remote = admission
        self.link_lost = False

    async def on_tick(self, counter: int) -> bool:
        if self.remote.stop_requested:
            self.should_exit = True
        elif self.remote.lost and self.started and not self.should_exit:
            logger.error("the admission link to the parent process is gone: stopping")
            self.link_lost = True
            self.should_exit = True
        return await DrainingServer.on_tick(self, counter)


def run_front_end(listen_address: str, sock: socket.socket, args: FrontEndArgs, client_config: dict[str, Any]) -> None:
    """The body of one front-end process (vLLM's `target_server_fn`)."""
    from vllm.utils.system_utils import set_process_title

    from gateway.app import create_app, make_chat_stream
    from gateway.core.vllm_engine import VLLMEngine

    settings = args.settings
    index = client_config["client_index"]
    set_process_title("APIServer", str(index))
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [front end {index} pid %(process)d] %(name)s: %(message)s",
    )
    loads = client_config.pop("api_server_loads", None)
    model = settings.model or str(settings.tiny_model_dir)
    engine = VLLMEngine(model, settings.engine_args(), chat_template=settings.chat_template, client=client_config)
    admission = RemoteAdmission(args.coordinator_path, index, settings.concurrency, settings.queue_size)
    app = create_app(settings, chat_stream=make_chat_stream(settings, engine, admission=admission))
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        access_log=False,  # the gateway writes its own line per request
        lifespan="on",
    )
    watched = engine if settings.exit_on_engine_death else None
    peer_loads = None if loads is None else (loads, index)
    server = FrontEndServer(config, admission, settings.drain_timeout, watched, peer_loads)
    logger.info("front end %d serving on %s", index, listen_address)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group: the parent stops the gateway
        return
    if not server.started:
        sys.exit(3)
    if server.engine_died or server.link_lost:
        sys.exit(1)

"""`--api-processes N`: N front-end processes sharing one engine core and one admission controller.

The same layout as vLLM's API server with `--api-server-count N`
(vllm/entrypoints/cli/serve.py `run_multi_api_server`), with vLLM's own
machinery: one listening socket bound here with SO_REUSEPORT and handed to
every front end; `bind_engine_zmq_listeners` and `launch_core_engines` start
the engine core; `APIServerProcessManager` spawns the front ends
(gateway/processes/front_end.py), each an AsyncLLM client of that engine
core; Prometheus runs in multiprocess mode (`setup_multiprocess_prometheus`).

What vLLM does not have is shared admission: this process owns the gateway's
one `AdmissionController` and serves it to the front ends over a unix socket
(gateway/processes/coordinator.py), so the cap, queue, fair share and key
limits are those of one gateway, not N smaller ones.

How it ends: SIGTERM drains the whole gateway (every front end refuses new
generations with 503 and `/ready` answers 503; admitted ones run for up to
`drain_timeout`), then the front ends stop (told over the admission link;
uvicorn's few seconds' grace), then the engine core. SIGINT, or a second SIGTERM, skips the drain. A front
end or the engine core that dies stops the rest, and the exit status is 1
(3 if a front end could not start), for a supervisor to restart the gateway.
Should this process itself be killed outright, a watchdog
(gateway.processes.watchdog) stops the front ends and the engine core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import tempfile
from multiprocessing.process import BaseProcess
from types import FrameType

from gateway.core.admission import AdmissionController
from gateway.processes.coordinator import AdmissionCoordinator
from gateway.processes.watchdog import Watchdog
from gateway.settings import Settings

logger = logging.getLogger(__name__)

# Seconds a stopping front end gets after the drain before it is terminated (uvicorn's own grace is 5).
FRONT_END_GRACE = 10.0


def serve_processes(settings: Settings) -> int:
    """Serve the gateway with `settings.api_processes` front ends until it is stopped; the exit status."""
    from vllm.entrypoints.launchers.launcher import create_server_socket
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.utils import bind_engine_zmq_listeners, launch_core_engines
    from vllm.v1.executor import Executor
    from vllm.v1.metrics.prometheus import setup_multiprocess_prometheus
    from vllm.v1.utils import APIServerProcessManager

    from gateway.core.vllm_engine import async_engine_args
    from gateway.processes.front_end import FrontEndArgs, run_front_end

    count = settings.api_processes
    # Until the supervisor's own handlers are in place, a signal unwinds through the cleanups below.
    signal.signal(signal.SIGTERM, _raise_exit)
    setup_multiprocess_prometheus()  # the front ends inherit PROMETHEUS_MULTIPROC_DIR
    engine_args = async_engine_args(settings.model or str(settings.tiny_model_dir), settings.engine_args())
    engine_args._api_process_count, engine_args._api_process_rank = count, -1
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
    sock = create_server_socket((settings.host, settings.port), reuse_port=True)
    listen_address = f"http://{settings.host}:{sock.getsockname()[1]}"
    with tempfile.TemporaryDirectory(prefix="chatstream-") as directory:
        link_path = os.path.join(directory, "admission.sock")
        link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        link.bind(link_path)
        link.listen(count * 4)
        listeners = bind_engine_zmq_listeners(vllm_config, count)
        front_ends = None
        engines = None
        watchdog = None
        try:
            with launch_core_engines(vllm_config, Executor.get_class(vllm_config), True, listeners.addresses) as launch:
                engines = launch.engine_manager
                front_ends = APIServerProcessManager(
                    listen_address,
                    sock,
                    FrontEndArgs(settings, link_path),  # vLLM passes it on to each front end as `args`
                    count,
                    listeners.inputs,
                    listeners.outputs,
                    target_server_fn=run_front_end,
                    tensor_queue=launch.tensor_queue,
                )
                launch.watched_frontend_processes = front_ends.processes
            logger.info("engine core ready: %d front-end processes on %s", count, listen_address)
            admission = AdmissionController(
                settings.concurrency, settings.queue_size, token_budget=settings.token_budget
            )
            watchdog = Watchdog.start()  # every child runs now: the engine core and the front ends
            engine_processes = list(getattr(engines, "processes", []))
            supervisor = _Supervisor(AdmissionCoordinator(admission), front_ends.processes, engine_processes)
            return asyncio.run(supervisor.run(link, settings.drain_timeout))
        finally:
            if front_ends is not None:
                front_ends.shutdown(timeout=FRONT_END_GRACE)
            if engines is not None:
                engines.shutdown()
            if watchdog is not None:
                watchdog.close()
            listeners.cleanup()
            del listeners  # now, not at interpreter exit (where its __del__ fails on a torn-down module)
            sock.close()
            link.close()


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(1)


class _Supervisor:
    """Serves admission to the front ends and watches every child until the gateway stops."""

    def __init__(
        self, coordinator: AdmissionCoordinator, front_ends: list[BaseProcess], engines: list[BaseProcess]
    ) -> None:
        self.coordinator = coordinator
        self.front_ends = front_ends
        self.engines = engines
        self.status = 0
        self._stop = asyncio.Event()
        self._drain_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._drain_timeout = 0.0

    async def run(self, link: socket.socket, drain_timeout: float) -> int:
        loop = asyncio.get_running_loop()
        await self.coordinator.serve(link)
        for process in [*self.front_ends, *self.engines]:
            loop.add_reader(process.sentinel, self._exited, process)
        self._drain_timeout = drain_timeout
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm, drain_timeout)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        await self._stop.wait()
        self._stopping = True
        # The front ends stop first; the coordinator answers them until they are gone,
        # so the places of the streams they still end are given back.
        self.coordinator.stop_front_ends()
        await asyncio.gather(*(asyncio.to_thread(p.join, FRONT_END_GRACE) for p in self.front_ends))
        await self.coordinator.close()
        return self.status

    def _exited(self, process: BaseProcess) -> None:
        asyncio.get_running_loop().remove_reader(process.sentinel)
        process.join(0)
        code = process.exitcode
        if self._stopping:
            return
        if code == 0 and process in self.front_ends:
            # It was told to stop (its own SIGTERM: systemd signals every process): so is the gateway.
            if self._drain_task is None:
                self._on_sigterm(self._drain_timeout)
            return
        logger.error("%s (pid %s) exited with status %s: stopping the gateway", process.name, process.pid, code)
        self.status = 3 if code == 3 else 1
        self._stop.set()

    def _on_sigterm(self, drain_timeout: float) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain(drain_timeout))
        else:
            self._stop.set()

    async def _drain(self, drain_timeout: float) -> None:
        admission = self.coordinator.admission
        self.coordinator.start_draining()
        load = admission.load()
        logger.info(
            "SIGTERM: draining %d running and %d queued generations (up to %.0f s)",
            load.running,
            load.waiting,
            drain_timeout,
        )
        try:
            await asyncio.wait_for(admission.wait_idle(), drain_timeout)
            logger.info("drained: shutting down")
        except TimeoutError:
            logger.warning("drain timeout: shutting down with %d generations still running", admission.load().running)
        self._stop.set()

"""Core: what both APIs share, built from one `Config`.

One engine, one admission controller, one set of metrics and one generation
runner. `/chat_stream` and the OpenAI routes each turn their request bodies
into a `GenerationRequest` and a `StreamFormat`, and hand both to
`Core.run`; neither API touches the other's objects.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from gateway.core.admission import AdmissionController
from gateway.core.claims import Admission
from gateway.core.engine import Engine
from gateway.core.errors import GatewayError
from gateway.core.metrics import Metrics
from gateway.core.offload import Offload
from gateway.core.principal import ANONYMOUS
from gateway.core.runner import GenerationRunner
from gateway.core.stream_format import StreamLimits
from gateway.settings import Config


class Core:
    """The engine and everything around it that does not depend on an API.

    Without `engine`, vLLM serves `config.model` (or the tiny offline model),
    with `config`'s engine arguments updated by `engine_args`. Without
    `admission`, an `AdmissionController` of its own (one process); a front-end
    process of several gives the gateway-wide one it shares (gateway.processes).
    """

    def __init__(
        self,
        config: Config,
        engine: Engine | None = None,
        *,
        engine_args: Mapping[str, Any] | None = None,
        metrics: Metrics | None = None,
        admission: Admission | None = None,
    ) -> None:
        if engine is None:
            from gateway.core.vllm_engine import VLLMEngine  # vLLM is heavy: import it only when used

            model = config.model or str(config.tiny_model_dir)
            engine_args = {**config.engine_args(), **(engine_args or {})}
            engine = VLLMEngine(model, engine_args, chat_template=config.chat_template)
        self.config = config
        self.engine: Engine = engine
        self.admission: Admission = admission or AdmissionController(
            config.concurrency, config.queue_size, token_budget=config.token_budget
        )
        self.metrics = metrics or Metrics()
        self.metrics.watch(self.admission.load, self.engine.stats)
        limits = StreamLimits(config.queue_timeout, config.send_timeout, config.ping_interval)
        self.runner = GenerationRunner(self.engine, self.admission, self.metrics, limits)
        # The one entry point both APIs use: admit, stream and finish one generation on a connection.
        self.run = self.runner.run
        # Where both APIs render prompts: off the event loop, so no stream stalls meanwhile.
        self.offload = Offload()

    @asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Run the engine (and reach the shared admission) for the app's lifetime (use as `FastAPI(lifespan=...)`)."""
        await self.engine.start()
        try:
            await self.admission.start()
            try:
                async with self.metrics.publishing():
                    yield
            finally:
                await self.admission.stop()
        finally:
            await self.engine.stop()

    def count_refusal(self, route: str, error: GatewayError, user_class: str = ANONYMOUS.user_class) -> None:
        """Count a request refused before it reached the queue."""
        self.metrics.count_refusal(route, error, user_class)

    @property
    def ready(self) -> bool:
        """The engine is up and the gateway is not draining."""
        return self.engine.is_healthy() and not self.admission.draining

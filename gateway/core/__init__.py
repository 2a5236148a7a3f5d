"""The core: the engine, admission, the generation runner, completion states and metrics.

It imports nothing from the APIs (`gateway.chat`, `gateway.openai`) nor from
where state lives (`gateway.sessions`, `gateway.conversations`): both APIs
are faces over one `Core`.
"""

from gateway.core.admission import AdmissionController, Load
from gateway.core.completion import CompletionCallback, CompletionState
from gateway.core.engine import Engine, EngineDead, EngineOutput, EngineStats, SamplingOptions
from gateway.core.errors import GatewayError
from gateway.core.generation import GenerationRequest, Outcome
from gateway.core.metrics import Metrics
from gateway.core.service import Core
from gateway.core.stream_format import StreamFormat

__all__ = [
    "AdmissionController",
    "CompletionCallback",
    "CompletionState",
    "Core",
    "Engine",
    "EngineDead",
    "EngineOutput",
    "EngineStats",
    "GatewayError",
    "GenerationRequest",
    "Load",
    "Metrics",
    "Outcome",
    "SamplingOptions",
    "StreamFormat",
]

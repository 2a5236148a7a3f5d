"""chatstream-gateway: streaming chat over vLLM, with sessions, admission and SSE.

Everything a README example imports comes from here.
"""

from gateway.app import create_app
from gateway.chat import ChatStream, ChatStreamOptions, GenerationParams
from gateway.conversations import (
    Conversation,
    ConversationHandler,
    ConversationIdHeader,
    PersistentConversations,
    SessionConversations,
)
from gateway.core import (
    AdmissionController,
    CompletionCallback,
    CompletionState,
    Core,
    Engine,
    EngineDead,
    EngineOutput,
    EngineStats,
    GatewayError,
    Load,
    Metrics,
    SamplingOptions,
)
from gateway.http.auth import UserKeys
from gateway.sessions import MemoryStore, RedisStore, Session, SessionContext, SessionMiddleware, SessionStore
from gateway.settings import Config, Settings
from prompts import ChatPrompt

__all__ = [
    "AdmissionController",
    "ChatPrompt",
    "ChatStream",
    "ChatStreamOptions",
    "CompletionCallback",
    "CompletionState",
    "Config",
    "Conversation",
    "ConversationHandler",
    "ConversationIdHeader",
    "Core",
    "Engine",
    "EngineDead",
    "EngineOutput",
    "EngineStats",
    "GatewayError",
    "GenerationParams",
    "Load",
    "MemoryStore",
    "Metrics",
    "PersistentConversations",
    "RedisStore",
    "SamplingOptions",
    "Session",
    "SessionContext",
    "SessionConversations",
    "SessionMiddleware",
    "SessionStore",
    "Settings",
    "UserKeys",
    "create_app",
]

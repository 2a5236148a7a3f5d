"""chatstream-gateway: streaming chat over vLLM, with sessions, admission and SSE."""

from gateway.admission import AdmissionController, Load
from gateway.app import create_app
from gateway.chat_stream import ChatStream, GenerationParams
from gateway.completion import CompletionCallback, CompletionState
from gateway.conversations import Conversation, ConversationHandler, SessionConversations
from gateway.engine import Engine, EngineDead, EngineOutput, EngineStats, SamplingOptions
from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.persistent import ConversationIdHeader, PersistentConversations
from gateway.sessions import Session, SessionContext, SessionMiddleware
from gateway.settings import Settings
from gateway.stores import MemoryStore, SessionStore
from gateway.users import UserKeys
from prompts import ChatPrompt

__all__ = [
    "AdmissionController",
    "ChatPrompt",
    "ChatStream",
    "CompletionCallback",
    "CompletionState",
    "Conversation",
    "ConversationHandler",
    "ConversationIdHeader",
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

"""The OpenAI-compatible API: chat completions, completions, the model list, and the stateful
Responses and Conversations APIs, on the shared core."""

from gateway.openai.conversations import add_conversation_routes
from gateway.openai.response_store import ResponseStore
from gateway.openai.responses import add_responses_routes
from gateway.openai.routes import OpenAIRoutes, add_openai_routes

__all__ = ["OpenAIRoutes", "ResponseStore", "add_conversation_routes", "add_openai_routes", "add_responses_routes"]

"""The OpenAI-compatible API: chat completions, completions and the model list, on the shared core."""

from gateway.openai.routes import OpenAIRoutes, add_openai_routes

__all__ = ["OpenAIRoutes", "add_openai_routes"]

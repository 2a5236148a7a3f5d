"""The ChatStream API: the seed documents' `/chat_stream` endpoint and helpers, a thin face over the core."""

from gateway.chat.chat_stream import ChatStream, ChatStreamOptions
from gateway.chat.schema import ChatStreamBody, GenerationParams

__all__ = ["ChatStream", "ChatStreamBody", "ChatStreamOptions", "GenerationParams"]

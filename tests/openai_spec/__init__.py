"""OpenAI's published response schemas, and checks that name every way a payload breaks them.

The schemas are a transcription of the `openai/openai-openapi` repository (MIT; see
README.md and LICENSE beside this file). A test validates one decoded JSON body::

    from tests.openai_spec import validate, validate_chat_sse

    validate("CreateChatCompletionResponse", response.json())
    chunks = validate_chat_sse(streamed_response.text)
"""

from __future__ import annotations

from tests.openai_spec._validator import (
    schema_names,
    validate,
    validate_chat_sse,
    validate_chat_stream,
    validate_completion,
    validate_completion_sse,
    validate_response_events,
    validate_responses_sse,
    validate_sse,
    violations,
)

__all__ = [
    "schema_names",
    "validate",
    "validate_chat_sse",
    "validate_chat_stream",
    "validate_completion",
    "validate_completion_sse",
    "validate_response_events",
    "validate_responses_sse",
    "validate_sse",
    "violations",
]

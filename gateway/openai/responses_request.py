"""The body of `POST /v1/responses`, and the chat request it becomes for the engine.

A Responses request is answered through the chat route's own request handling
(vLLM's `ChatCompletionRequest`, renderer, tool and reasoning parsers, or the
plain frontend): `chat_body` spells the request, with the stored chain's
items as messages, as the chat body that means the same. Fields the gateway
cannot honour are refused by name, never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.core.errors import BadChatRequest

# `include` values that never apply here (the tools they describe are not offered), so accepting them
# changes nothing; the one that would (logprobs of the output text) is refused.
_INCLUDES = frozenset(
    {
        "reasoning.encrypted_content",
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
    }
)
# Chat-route parameter names as the Responses API calls them (to name them in a 400).
PARAM_NAMES = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


class ResponsesRequest(BaseModel):
    """OpenAI's `POST /v1/responses` body, as far as this gateway serves it."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, max_length=256)
    input: str | list[Any] = ""
    instructions: str | None = None
    previous_response_id: str | None = Field(None, max_length=256)
    conversation: str | dict[str, Any] | None = None
    store: bool = True
    background: bool = False
    stream: bool = False
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    include: list[str] | None = None
    user: str | None = Field(None, max_length=256)
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # vLLM's extension, as on the chat route (`extra_body`): the same seed, the same answer.
    seed: int | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_metadata(value)

    @property
    def conversation_id(self) -> str | None:
        if isinstance(self.conversation, dict):
            found = self.conversation.get("id")
            if not isinstance(found, str):
                raise BadChatRequest("conversation.id must be a string", param="conversation")
            return found
        return self.conversation

    def check(self) -> None:
        """Refuse, by name, what the gateway cannot honour."""
        if self.previous_response_id is not None and self.conversation is not None:
            raise BadChatRequest(
                "previous_response_id and conversation cannot both be given: a response continues one or the other",
                param="conversation",
            )
        if self.background and not self.store:
            raise BadChatRequest("a background response must be stored: set store to true", param="background")
        if self.top_logprobs:
            raise BadChatRequest("top_logprobs is not supported by this server", param="top_logprobs")
        for name in self.include or ():
            if name not in _INCLUDES:
                raise BadChatRequest(f"include: {name[:80]!r} is not supported by this server", param="include")
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            raise BadChatRequest("reasoning options are not supported by this server", param="reasoning")

    @property
    def text_format(self) -> dict[str, Any]:
        found = (self.text or {}).get("format") or {"type": "text"}
        if not isinstance(found, dict):
            raise BadChatRequest("text.format must be an object", param="text.format")
        return found


def check_metadata(value: dict[str, str] | None) -> dict[str, str] | None:
    """OpenAI's bounds: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if value is not None and (len(value) > 16 or any(len(k) > 64 or len(v) > 512 for k, v in value.items())):
        raise ValueError("metadata takes at most 16 pairs, keys of up to 64 characters and values of up to 512")
    return value


def chat_body(request: ResponsesRequest, messages: list[dict[str, Any]], *, stream: bool) -> dict[str, Any]:
    """The chat completions body that asks the engine what `request` asks, over `messages`."""
    body: dict[str, Any] = {"messages": messages, "stream": stream}
    optional = {
        "model": request.model,
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "parallel_tool_calls": request.parallel_tool_calls,
        "user": request.user,
        "seed": request.seed,
    }
    body.update((key, value) for key, value in optional.items() if value is not None)
    if request.tools:
        body["tools"] = [_chat_tool(tool, i) for i, tool in enumerate(request.tools)]
    if request.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(request.tool_choice)
    response_format = _response_format(request.text_format)
    if response_format is not None:
        body["response_format"] = response_format
    return body


def _chat_tool(tool: dict[str, Any], index: int) -> dict[str, Any]:
    if tool.get("type") != "function":
        kind = str(tool.get("type"))[:64]
        raise BadChatRequest(f"tools[{index}]: tools of type {kind!r} are not supported by this server", param="tools")
    if not isinstance(tool.get("name"), str):
        raise BadChatRequest(f"tools[{index}].name must be a string", param="tools")
    function = {key: tool[key] for key in ("name", "description", "parameters", "strict") if tool.get(key) is not None}
    return {"type": "function", "function": function}


def _chat_tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise BadChatRequest("tool_choice must be auto, none, required or a function", param="tool_choice")
        return choice
    if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
        raise BadChatRequest("tool_choice: only {type: function, name} is supported", param="tool_choice")
    return {"type": "function", "function": {"name": choice["name"]}}


def _response_format(fmt: dict[str, Any]) -> dict[str, Any] | None:
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        if not isinstance(fmt.get("schema"), dict) or not isinstance(fmt.get("name"), str):
            raise BadChatRequest("text.format: a json_schema format needs a name and a schema", param="text.format")
        schema = {key: fmt[key] for key in ("name", "schema", "strict", "description") if fmt.get(key) is not None}
        return {"type": "json_schema", "json_schema": schema}
    raise BadChatRequest(f"text.format: the type {str(kind)[:64]!r} is not supported", param="text.format")


def response_tools(request: ResponsesRequest) -> list[dict[str, Any]]:
    """The tools as a Response shows them (OpenAI's FunctionTool: `strict` and `parameters` always present)."""
    return [
        {
            "type": "function",
            "name": tool["name"],
            "description": tool.get("description"),
            "parameters": tool.get("parameters"),
            "strict": tool.get("strict"),
        }
        for tool in request.tools
    ]

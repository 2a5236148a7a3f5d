"""The OpenAI schema validator: OpenAI-shaped payloads pass, and each non-conformance a server
is known to commit fails with a message that names the field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.openai_spec import (
    schema_names,
    validate,
    validate_chat_sse,
    validate_chat_stream,
    validate_responses_sse,
    validate_sse,
    violations,
)

HERE = Path(__file__).parent
_DROP = object()


def edited(payload: dict[str, Any], path: str, value: Any = _DROP) -> dict[str, Any]:
    """A copy of `payload` with the value at the dotted `path` replaced (or dropped when no value)."""
    result = copy.deepcopy(payload)
    keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
    node: Any = result
    for key in keys[:-1]:
        node = node[key]
    if value is _DROP:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return result


# --- payloads shaped as OpenAI documents them --------------------------------------------

USAGE = {
    "prompt_tokens": 9,
    "completion_tokens": 3,
    "total_tokens": 12,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
TOKEN_LOGPROB = {
    "token": "Hi",
    "logprob": -0.25,
    "bytes": [72, 105],
    "top_logprobs": [
        {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
        {"token": "Yo", "logprob": -2.5, "bytes": None},
    ],
}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Kyoto"}'}}


def chat_choice(index: int = 0, content: str | None = "Hi there", logprobs: Any = None) -> dict[str, Any]:
    message = {"role": "assistant", "content": content, "refusal": None}
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": "stop"}


CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "tiny",
    "choices": [chat_choice()],
    "usage": USAGE,
}
CHAT_TOOLS = {
    **CHAT,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [TOOL_CALL]},
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
}
CHAT_N2_LOGPROBS = {
    **CHAT,
    "choices": [chat_choice(i, logprobs={"content": [TOKEN_LOGPROB], "refusal": None}) for i in range(2)],
}


def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    body = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1767225600, "model": "tiny"}
    return {**body, "choices": [choice], **extra}


CHUNKS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Hi"}),
    chunk(
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]}
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 1}'}}]}),
    chunk({}, "tool_calls"),
    {**chunk({}), "choices": [], "usage": USAGE},
]
CHUNK_LOGPROBS = edited(chunk({"content": "Hi"}), "choices.0.logprobs", {"content": [TOKEN_LOGPROB], "refusal": None})

COMPLETION = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1767225600,
    "model": "tiny",
    "choices": [
        {
            "index": i,
            "text": " world",
            "finish_reason": "length",
            "logprobs": {
                "tokens": ["Hello", " world"],
                "token_logprobs": [-0.1, -1.5],
                "top_logprobs": [{"Hello": -0.1}, {" world": -1.5}],
                "text_offset": [0, 5],
            },
        }
        for i in range(2)
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
MODELS = {
    "object": "list",
    "data": [{"id": "tiny", "object": "model", "created": 1767225600, "owned_by": "chatstream"}],
}
ERROR = {"error": {"message": "model: field required", "type": "invalid_request_error", "param": "model", "code": None}}

OUTPUT_TEXT = {"type": "output_text", "text": "Hi there", "annotations": [], "logprobs": []}
OUTPUT_MESSAGE = {
    "type": "message",
    "id": "msg_1",
    "status": "completed",
    "role": "assistant",
    "content": [OUTPUT_TEXT],
}
FUNCTION_CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city": "Kyoto"}',
    "status": "completed",
}
FUNCTION_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": None,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    "strict": False,
}
RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1767225600,
    "status": "completed",
    "completed_at": 1767225601,
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "tiny",
    "output": [OUTPUT_MESSAGE, FUNCTION_CALL],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [FUNCTION_TOOL],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 9,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 3,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    },
    "metadata": {},
}
# `usage` left out: the schema does not allow it to be null (though OpenAI's own examples send null)
IN_PROGRESS = {key: value for key, value in RESPONSE.items() if key != "usage"} | {
    "status": "in_progress",
    "completed_at": None,
    "output": [],
}
EVENTS: list[dict[str, Any]] = [
    {"type": "response.created", "sequence_number": 0, "response": IN_PROGRESS},
    {"type": "response.in_progress", "sequence_number": 1, "response": IN_PROGRESS},
    {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 0,
        "item": {**OUTPUT_MESSAGE, "status": "in_progress", "content": []},
    },
    {
        "type": "response.content_part.added",
        "sequence_number": 3,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "part": {**OUTPUT_TEXT, "text": ""},
    },
    {
        "type": "response.output_text.delta",
        "sequence_number": 4,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "delta": "Hi there",
        "logprobs": [],
    },
    {
        "type": "response.output_text.done",
        "sequence_number": 5,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "text": "Hi there",
        "logprobs": [],
    },
    {
        "type": "response.content_part.done",
        "sequence_number": 6,
        "item_id": "msg_1",
        "output_index": 0,
        "content_index": 0,
        "part": OUTPUT_TEXT,
    },
    {"type": "response.output_item.done", "sequence_number": 7, "output_index": 0, "item": OUTPUT_MESSAGE},
    {
        "type": "response.output_item.added",
        "sequence_number": 8,
        "output_index": 1,
        "item": {**FUNCTION_CALL, "arguments": "", "status": "in_progress"},
    },
    {
        "type": "response.function_call_arguments.delta",
        "sequence_number": 9,
        "item_id": "fc_1",
        "output_index": 1,
        "delta": '{"city": "Kyoto"}',
    },
    {
        "type": "response.function_call_arguments.done",
        "sequence_number": 10,
        "item_id": "fc_1",
        "name": "get_weather",
        "output_index": 1,
        "arguments": '{"city": "Kyoto"}',
    },
    {"type": "response.output_item.done", "sequence_number": 11, "output_index": 1, "item": FUNCTION_CALL},
    {"type": "response.completed", "sequence_number": 12, "response": RESPONSE},
]
ENDINGS: list[dict[str, Any]] = [
    {
        "type": "response.failed",
        "sequence_number": 3,
        "response": {**IN_PROGRESS, "status": "failed", "error": {"code": "server_error", "message": "engine failed"}},
    },
    {
        "type": "response.incomplete",
        "sequence_number": 3,
        "response": {**RESPONSE, "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}},
    },
    {"type": "error", "sequence_number": 3, "code": "server_error", "message": "engine failed", "param": None},
]
USER_ITEM = {
    "type": "message",
    "id": "msg_0",
    "status": "completed",
    "role": "user",
    "content": [{"type": "input_text", "text": "Hi"}],
}
FUNCTION_OUTPUT = {
    "type": "function_call_output",
    "id": "fco_1",
    "call_id": "call_1",
    "output": "18C",
    "status": "completed",
}
ITEM_LIST = {
    "object": "list",
    "data": [USER_ITEM, FUNCTION_OUTPUT],
    "first_id": "msg_0",
    "last_id": "fco_1",
    "has_more": False,
}
CONVERSATION = {"id": "conv_1", "object": "conversation", "created_at": 1767225600, "metadata": {"topic": "weather"}}
CONVERSATION_ITEMS = {
    "object": "list",
    "data": [USER_ITEM, OUTPUT_MESSAGE, FUNCTION_CALL, FUNCTION_OUTPUT],
    "first_id": "msg_0",
    "last_id": "fco_1",
    "has_more": False,
}
DELETED_CONVERSATION = {"id": "conv_1", "object": "conversation.deleted", "deleted": True}


@pytest.mark.parametrize(
    ("schema", "payload"),
    [
        pytest.param("CreateChatCompletionResponse", CHAT, id="chat"),
        pytest.param("CreateChatCompletionResponse", CHAT_TOOLS, id="chat-tool-calls"),
        pytest.param("CreateChatCompletionResponse", CHAT_N2_LOGPROBS, id="chat-n2-logprobs"),
        *(pytest.param("CreateChatCompletionStreamResponse", c, id=f"chunk-{i}") for i, c in enumerate(CHUNKS)),
        pytest.param("CreateChatCompletionStreamResponse", CHUNK_LOGPROBS, id="chunk-logprobs"),
        pytest.param("CreateChatCompletionStreamResponse", {**chunk({}), "usage": None}, id="chunk-usage-null"),
        pytest.param("CreateCompletionResponse", COMPLETION, id="completion-n2-logprobs"),
        pytest.param("ListModelsResponse", MODELS, id="models"),
        pytest.param("Model", MODELS["data"][0], id="model"),
        pytest.param("ErrorResponse", ERROR, id="error"),
        pytest.param("ErrorResponse", edited(ERROR, "error.code", "model_not_found"), id="error-string-code"),
        pytest.param("Response", RESPONSE, id="response"),
        *(pytest.param("ResponseStreamEvent", e, id=e["type"] + f"-{e['sequence_number']}") for e in EVENTS),
        *(pytest.param("ResponseStreamEvent", e, id=e["type"]) for e in ENDINGS),
        pytest.param("ResponseItemList", ITEM_LIST, id="input-items"),
        pytest.param("ConversationResource", CONVERSATION, id="conversation"),
        pytest.param("ConversationItemList", CONVERSATION_ITEMS, id="conversation-items"),
        pytest.param("ConversationItem", OUTPUT_MESSAGE, id="conversation-item"),
        pytest.param("DeletedConversationResource", DELETED_CONVERSATION, id="deleted-conversation"),
        pytest.param("DeletedConversation", DELETED_CONVERSATION, id="deleted-conversation-wrapper"),
    ],
)
def test_openai_shaped_payloads_validate(schema: str, payload: dict[str, Any]) -> None:
    validate(schema, payload)


@pytest.mark.parametrize(
    ("schema", "payload", "violation"),
    [
        # the gateway's plain chat answer before issue 11; OpenAI requires `refusal`, null or not
        pytest.param(
            "CreateChatCompletionResponse",
            edited(CHAT, "choices.0.message.refusal"),
            "at $.choices[0].message: 'refusal' is a required property",
            id="message-without-refusal",
        ),
        # vLLM: HTTP status as the error code
        pytest.param(
            "ErrorResponse", edited(ERROR, "error.code", 400), "at $.error.code: 400 is not of type", id="integer-code"
        ),
        pytest.param("ErrorResponse", edited(ERROR, "error.param"), "'param' is a required property", id="no-param"),
        pytest.param("ErrorResponse", ERROR["error"], "'error' is a required property", id="bare-error"),
        # vLLM: usage details sent as null instead of left out
        pytest.param(
            "CreateChatCompletionResponse",
            edited(CHAT, "usage.prompt_tokens_details", None),
            "at $.usage.prompt_tokens_details: None is not of type 'object'",
            id="usage-details-null",
        ),
        pytest.param(
            "CreateChatCompletionStreamResponse",
            edited(CHUNKS[-1], "usage.completion_tokens_details", None),
            "at $.usage.completion_tokens_details: None is not of type 'object'",
            id="chunk-usage-details-null",
        ),
        # vLLM: a Response without `error`
        pytest.param(
            "Response", edited(RESPONSE, "error"), "at $: 'error' is a required property", id="response-without-error"
        ),
        pytest.param(
            "CreateChatCompletionStreamResponse",
            edited(CHUNKS[1], "object", "chat.completion"),
            "at $.object: 'chat.completion' is not one of ['chat.completion.chunk']",
            id="chunk-wrong-object",
        ),
        pytest.param(
            "CreateChatCompletionResponse",
            edited(CHAT_TOOLS, "choices.0.message.tool_calls.0.function.arguments", {"city": "Kyoto"}),
            "at $.choices[0].message.tool_calls[0].function.arguments: {'city': 'Kyoto'} is not of type 'string'",
            id="tool-arguments-not-a-string",
        ),
        pytest.param(
            "CreateChatCompletionStreamResponse",
            edited(CHUNKS[3], "choices.0.delta.tool_calls.0.index"),
            "at $.choices[0].delta.tool_calls[0]: 'index' is a required property",
            id="tool-delta-without-index",
        ),
        pytest.param(
            "CreateChatCompletionResponse",
            edited(CHAT_N2_LOGPROBS, "choices.1.logprobs.content.0.bytes"),
            "at $.choices[1].logprobs.content[0]: 'bytes' is a required property",
            id="logprob-without-bytes",
        ),
        pytest.param(
            "CreateChatCompletionStreamResponse",
            edited(CHUNKS[1], "choices.0.finish_reason"),
            "at $.choices[0]: 'finish_reason' is a required property",
            id="chunk-without-finish-reason",
        ),
        # OpenAI's spec says a streamed completion chunk is a whole CreateCompletionResponse,
        # whose finish_reason is not nullable: a chunk before the last cannot conform.
        pytest.param(
            "CreateCompletionResponse",
            edited(COMPLETION, "choices.0.finish_reason", None),
            "at $.choices[0].finish_reason: None is not one of ['stop', 'length', 'content_filter']",
            id="completion-chunk-finish-reason-null",
        ),
        # with `echo`, a server has no logprob for the first prompt token; the spec has no null for it
        pytest.param(
            "CreateCompletionResponse",
            edited(COMPLETION, "choices.0.logprobs.token_logprobs.0", None),
            "at $.choices[0].logprobs.token_logprobs[0]: None is not of type 'number'",
            id="echo-first-logprob-null",
        ),
        pytest.param(
            "ListModelsResponse",
            edited(MODELS, "data.0.owned_by"),
            "'owned_by' is a required property",
            id="model-no-owner",
        ),
        pytest.param(
            "ResponseStreamEvent",
            edited(EVENTS[4], "logprobs"),
            "at $: 'logprobs' is a required property",
            id="text-delta-without-logprobs",
        ),
        pytest.param(
            "ResponseStreamEvent",
            edited(EVENTS[10], "name"),
            "at $: 'name' is a required property",
            id="arguments-done-without-name",
        ),
        pytest.param(
            "ResponseStreamEvent",
            edited(EVENTS[12], "response.output.0.content.0.annotations"),
            "at $.response.output[0].content[0]: 'annotations' is a required property",
            id="output-text-without-annotations",
        ),
        pytest.param(
            "Response",
            edited(RESPONSE, "usage.input_tokens_details.cache_write_tokens"),
            "at $.usage.input_tokens_details: 'cache_write_tokens' is a required property",
            id="usage-without-cache-writes",
        ),
        pytest.param(
            "Response",
            edited(RESPONSE, "usage", None),
            "at $.usage: None is not of type 'object'",
            id="response-usage-null",
        ),
        pytest.param(
            "Response", edited(RESPONSE, "tools.0.strict"), "'strict' is a required property", id="tool-without-strict"
        ),
        pytest.param(
            "ResponseStreamEvent",
            edited(EVENTS[4], "type", "response.text.delta"),
            "at $: its type 'response.text.delta' is none of the 58 variants' types",
            id="event-unknown-type",
        ),
        pytest.param(
            "Response",
            edited(RESPONSE, "output.0.role", "user"),
            "at $.output[0].role: 'user' is not one of ['assistant']",
            id="output-message-of-user",
        ),
        pytest.param(
            "ResponseStreamEvent",
            edited(EVENTS[0], "sequence_number"),
            "at $: 'sequence_number' is a required property",
            id="event-without-sequence-number",
        ),
        pytest.param(
            "ConversationResource",
            edited(CONVERSATION, "metadata"),
            "'metadata' is a required property",
            id="conversation-no-metadata",
        ),
        pytest.param(
            "ResponseItemList",
            edited(ITEM_LIST, "first_id"),
            "at $: 'first_id' is a required property",
            id="item-list-no-first-id",
        ),
    ],
)
def test_non_conforming_payloads_fail_naming_the_field(schema: str, payload: object, violation: str) -> None:
    found = violations(schema, payload)
    assert any(violation in v for v in found), found
    with pytest.raises(AssertionError, match=re.escape(violation)):
        validate(schema, payload)


def test_every_violation_is_listed_not_only_the_first() -> None:
    broken = edited(edited(CHAT, "choices.0.message.refusal"), "usage.prompt_tokens_details", None)
    assert violations("CreateChatCompletionResponse", broken) == [
        "at $.choices[0].message: 'refusal' is a required property",
        "at $.usage.prompt_tokens_details: None is not of type 'object'",
    ]


def test_a_union_reports_the_branch_the_value_meant_to_be() -> None:
    # A text delta event missing one field fails against all 58 kinds of stream event; the
    # message must be about the text delta, not 57 mismatched `type` values.
    assert violations("ResponseStreamEvent", edited(EVENTS[4], "delta")) == ["at $: 'delta' is a required property"]


@pytest.mark.parametrize(
    ("filters", "valid"),
    [
        pytest.param({"type": "and", "filters": [{"type": "eq", "key": "a", "value": 1}]}, True, id="flat"),
        pytest.param(
            {"type": "or", "filters": [{"type": "and", "filters": [{"type": "gt", "key": "a", "value": 1}]}]},
            True,
            id="nested",
        ),
        # the recursion (`$recursiveRef` in OpenAI's text) must constrain, not accept anything
        pytest.param(
            {"type": "or", "filters": [{"type": "and", "filters": [{"type": "eq"}]}]}, False, id="nested-broken"
        ),
    ],
)
def test_compound_filters_recurse(filters: dict[str, Any], valid: bool) -> None:
    assert (violations("CompoundFilter", filters) == []) is valid


def test_an_unknown_schema_name_is_an_error_not_a_pass() -> None:
    with pytest.raises(KeyError, match="ChatCompletion"):
        validate("ChatCompletion", CHAT)


def sse(*events: object, name: bool = False) -> str:
    blocks = []
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        head = f"event: {e['type']}\n" if name and isinstance(e, dict) else ""
        blocks.append(f"{head}data: {data}\n\n")
    return ": keep-alive\n\n" + "".join(blocks)


def test_a_chat_sse_body_validates_chunk_by_chunk() -> None:
    assert validate_chat_sse(sse(*CHUNKS, "[DONE]")) == CHUNKS
    validate_chat_stream(CHUNKS)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(sse(*CHUNKS), "does not end with data: [DONE]", id="no-done"),
        pytest.param(sse(CHUNKS[0], edited(CHUNKS[1], "id"), "[DONE]"), "'id' is a required property", id="bad-chunk"),
        pytest.param(
            sse(CHUNKS[0], ERROR, CHUNKS[1], "[DONE]"), "is an error but the stream goes on", id="error-mid-stream"
        ),
        pytest.param(
            sse(CHUNKS[0], edited(ERROR, "error.code", 500), "[DONE]"), "not an OpenAI ErrorResponse", id="bad-error"
        ),
    ],
)
def test_a_bad_chat_sse_body_fails(body: str, message: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(message)):
        validate_chat_sse(body)


def test_an_sse_body_may_end_with_an_error_event() -> None:
    # how an OpenAI stream reports a failure once the 200 status is sent
    assert validate_sse(sse(CHUNKS[0], ERROR, "[DONE]"), "CreateChatCompletionStreamResponse")[-1] == ERROR


def test_a_responses_sse_body_validates_event_by_event() -> None:
    assert validate_responses_sse(sse(*EVENTS, name=True)) == EVENTS
    mislabelled = sse(*EVENTS[:2], name=True).replace("event: response.in_progress", "event: response.created")
    with pytest.raises(AssertionError, match=re.escape("event: response.created carries")):
        validate_responses_sse(mislabelled)


# --- the transcription itself --------------------------------------------------------------

# Every keyword the transcription may use: those JSON Schema 2020-12 asserts, the annotations
# kept from OpenAI's text, and the two older constructs the loader reads (see README.md). A
# re-transcription that brings another keyword must teach the validator about it first.
KNOWN_KEYWORDS = {
    "type", "enum", "properties", "required", "items", "additionalProperties", "anyOf", "oneOf",
    "allOf", "$ref", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "maxProperties", "propertyNames", "pattern", "format", "default", "deprecated",
    "discriminator", "nullable", "$recursiveRef", "$recursiveAnchor",
}  # fmt: skip


def schemas() -> dict[str, Any]:
    spec = json.loads((HERE / "schemas.json").read_text(encoding="utf-8"))
    found: dict[str, Any] = spec["components"]["schemas"]
    return found


def keywords_and_refs(node: Any, keywords: set[str], refs: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            keywords_and_refs(item, keywords, refs)
    elif isinstance(node, dict):
        for key, value in node.items():
            keywords.add(key)
            if key == "$ref":
                refs.add(value)
            elif key == "properties":
                # property names are data, not keywords
                for sub in value.values():
                    keywords_and_refs(sub, keywords, refs)
            elif key not in ("enum", "default", "required", "discriminator"):
                keywords_and_refs(value, keywords, refs)


def test_the_transcription_is_closed_and_uses_only_known_keywords() -> None:
    keywords: set[str] = set()
    refs: set[str] = set()
    keywords_and_refs(list(schemas().values()), keywords, refs)
    assert keywords <= KNOWN_KEYWORDS, keywords - KNOWN_KEYWORDS
    assert {r.removeprefix("#/components/schemas/") for r in refs} <= set(schemas()), refs
    assert schema_names() == set(schemas())


def test_the_readme_lists_exactly_the_transcribed_schemas() -> None:
    readme = (HERE / "README.md").read_text(encoding="utf-8")
    listed = readme.split("(the roots and everything they reference):", 1)[1]
    assert set(re.findall(r"[A-Za-z0-9-]+", listed)) == set(schemas())

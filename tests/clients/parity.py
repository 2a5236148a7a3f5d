"""What two OpenAI-compatible servers' answers mean, side by side.

A *view* keeps what a client reads from an answer (per choice: text, tool calls, finish
reason, tokens, logprobs; the prompt's tokens; usage) and drops what differs by nature
between two servers (ids, timestamps, fingerprints, tool call ids) or by shape only (how a
stream is cut into chunks). Two views are compared field by field, floats within a bound.
"""

from __future__ import annotations

import json
import math
from typing import Any

# Same engine, same batch, same tokens: logprobs agree to float32 rounding.
TOLERANCE = 1e-4


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # compared as text: both servers must produce the same (broken) string


def _chat_logprob(entry: dict[str, Any]) -> list[Any]:
    top = [[t["token"], t["logprob"], t.get("bytes")] for t in entry.get("top_logprobs") or []]
    return [entry["token"], entry["logprob"], entry.get("bytes"), top]


def _calls(calls: list[dict[str, Any]] | None) -> list[Any]:
    return [[c["function"]["name"], _arguments(c["function"]["arguments"])] for c in calls or []]


def chat_view(body: dict[str, Any]) -> dict[str, Any]:
    choices = {}
    for choice in body["choices"]:
        message = choice["message"]
        logprobs = choice.get("logprobs") or {}
        choices[choice["index"]] = {
            "role": message["role"],
            "content": message.get("content"),
            "reasoning": message.get("reasoning"),
            "tool_calls": _calls(message.get("tool_calls")),
            "finish_reason": choice["finish_reason"],
            "token_ids": choice.get("token_ids"),
            "logprobs": [_chat_logprob(e) for e in logprobs.get("content") or []],
        }
    return {
        "choices": choices,
        "prompt_token_ids": body.get("prompt_token_ids"),
        "prompt_logprobs": body.get("prompt_logprobs"),
        "usage": _usage(body["usage"]),
    }


def chat_stream_view(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    choices: dict[int, dict[str, Any]] = {}
    calls: dict[int, dict[int, dict[str, str]]] = {}
    prompt_ids, usage = None, None
    for chunk in chunks:
        prompt_ids = prompt_ids or chunk.get("prompt_token_ids")
        if not chunk["choices"]:
            usage = _usage(chunk["usage"])
        for choice in chunk["choices"]:
            i, delta = choice["index"], choice["delta"]
            seen = choices.setdefault(
                i,
                {
                    "role": None,
                    "content": None,
                    "reasoning": None,
                    "finish_reason": None,
                    "token_ids": None,
                    "logprobs": [],
                },
            )
            seen["role"] = seen["role"] or delta.get("role")
            for key in ("content", "reasoning"):
                if delta.get(key) is not None:
                    seen[key] = (seen[key] or "") + delta[key]
            for call in delta.get("tool_calls") or []:
                merged = calls.setdefault(i, {}).setdefault(call["index"], {"name": "", "arguments": ""})
                function = call.get("function") or {}
                merged["name"] += function.get("name") or ""
                merged["arguments"] += function.get("arguments") or ""
            if choice.get("token_ids") is not None:
                seen["token_ids"] = (seen["token_ids"] or []) + choice["token_ids"]
            seen["logprobs"] += [_chat_logprob(e) for e in (choice.get("logprobs") or {}).get("content") or []]
            seen["finish_reason"] = choice.get("finish_reason") or seen["finish_reason"]
    for i, seen in choices.items():
        ordered = [calls.get(i, {})[k] for k in sorted(calls.get(i, {}))]
        seen["tool_calls"] = [[c["name"], _arguments(c["arguments"])] for c in ordered]
    return {"choices": choices, "prompt_token_ids": prompt_ids, "prompt_logprobs": None, "usage": usage}


def _completion_logprobs(logprobs: dict[str, Any] | None) -> Any:
    if not logprobs:
        return None
    return [logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], logprobs["text_offset"]]


def completion_view(body: dict[str, Any]) -> dict[str, Any]:
    choices = {
        c["index"]: {
            "text": c["text"],
            "finish_reason": c["finish_reason"],
            "token_ids": c.get("token_ids"),
            "prompt_token_ids": c.get("prompt_token_ids"),
            "logprobs": _completion_logprobs(c.get("logprobs")),
            "prompt_logprobs": c.get("prompt_logprobs"),
        }
        for c in body["choices"]
    }
    return {"choices": choices, "usage": _usage(body["usage"])}


def completion_stream_view(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in chunks:
        if not chunk["choices"]:
            usage = _usage(chunk["usage"])
        for c in chunk["choices"]:
            seen = choices.setdefault(
                c["index"],
                {"text": "", "finish_reason": None, "token_ids": None, "prompt_token_ids": None, "logprobs": None},
            )
            seen["text"] += c["text"]
            seen["finish_reason"] = c.get("finish_reason") or seen["finish_reason"]
            seen["prompt_token_ids"] = seen["prompt_token_ids"] or c.get("prompt_token_ids")
            if c.get("token_ids") is not None:
                seen["token_ids"] = (seen["token_ids"] or []) + c["token_ids"]
            part = _completion_logprobs(c.get("logprobs"))
            if part is not None:
                seen["logprobs"] = (
                    part if seen["logprobs"] is None else [a + b for a, b in zip(seen["logprobs"], part, strict=True)]
                )
    return {"choices": choices, "usage": usage}


def _usage(usage: dict[str, Any] | None) -> Any:
    return None if usage is None else [usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]]


def differences(gateway: Any, vllm: Any, path: str = "$") -> list[str]:
    """Every place where the two views differ (floats within TOLERANCE)."""
    if isinstance(gateway, float) and isinstance(vllm, (int, float)) and not isinstance(vllm, bool):
        same = math.isclose(gateway, vllm, abs_tol=TOLERANCE)
        return [] if same else [f"{path}: gateway {gateway!r}, vLLM {vllm!r}"]
    if isinstance(gateway, dict) and isinstance(vllm, dict):
        found = [f"{path}: keys gateway {sorted(gateway)}, vLLM {sorted(vllm)}"] if set(gateway) != set(vllm) else []
        for key in set(gateway) & set(vllm):
            found += differences(gateway[key], vllm[key], f"{path}.{key}")
        return found
    if isinstance(gateway, list) and isinstance(vllm, list):
        if len(gateway) != len(vllm):
            return [f"{path}: {len(gateway)} items on the gateway, {len(vllm)} on vLLM"]
        return [
            d for i, (a, b) in enumerate(zip(gateway, vllm, strict=True)) for d in differences(a, b, f"{path}[{i}]")
        ]
    return [] if gateway == vllm else [f"{path}: gateway {gateway!r:.200}, vLLM {vllm!r:.200}"]

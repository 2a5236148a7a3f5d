"""Log probabilities in OpenAI's two spellings, from the engine's per-token records.

Each record is what vLLM gives for one token: a dict from token id to an
object with `logprob`, `rank` and `decoded_token`, the sampled token first,
then the most likely ones (or the `logprob_token_ids` asked for). The choices
below (which entries are listed, how many, -9999.0 for minus infinity, the
sampled token's own entry when the engine has none) are vLLM's, so both
servers give the same numbers for the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

# OpenAI's JSON has no -inf: vLLM writes this instead, and so does the gateway.
FLOOR = -9999.0

Records = Sequence[Mapping[int, Any] | None]
Decode = Callable[[int], str]


class TokenText:
    """The text a token id is listed under: the engine's decoding, else the tokenizer's."""

    def __init__(self, decode: Decode | None, as_ids: bool) -> None:
        self._decode = decode
        self._as_ids = as_ids

    def __call__(self, token_id: int, record: Any = None) -> str:
        if self._as_ids:
            return f"token_id:{token_id}"
        if record is not None and record.decoded_token is not None:
            return str(record.decoded_token)
        if self._decode is None:
            return ""
        return self._decode(token_id)


def _value(record: Any) -> float:
    return max(float(record.logprob), FLOOR)


def _utf8(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_entries(
    token_ids: Sequence[int], records: Records, top: int, all_top: bool, text: TokenText
) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` entries for these tokens (top: how many alternatives; -1 all)."""
    entries: list[dict[str, Any]] = []
    for token_id, step in zip(token_ids, records, strict=False):
        record = None if step is None else step.get(token_id)
        if step is None or record is None:
            token = text(token_id)
            entries.append({"token": token, "logprob": FLOOR, "bytes": _utf8(token), "top_logprobs": []})
            continue
        alternatives = [
            {"token": (alt := text(tid, rec)), "logprob": _value(rec), "bytes": _utf8(alt)}
            for i, (tid, rec) in enumerate(step.items())
            if all_top or top == -1 or i < top
        ]
        decoded = record.decoded_token
        entries.append(
            {
                "token": text(token_id, record),
                "logprob": _value(record),
                "bytes": None if decoded is None else _utf8(decoded),
                "top_logprobs": alternatives,
            }
        )
    return entries


def completion_logprobs(
    token_ids: Sequence[int], records: Records, top: int, all_top: bool, text: TokenText, offset: int = 0
) -> dict[str, Any]:
    """A completions choice's `logprobs` for these tokens; `offset`: where their text starts."""
    offsets: list[int] = []
    values: list[float | None] = []
    tokens: list[str] = []
    tops: list[dict[str, float] | None] = []
    for token_id, step in zip(token_ids, records, strict=False):
        if step is None:  # the first prompt token has no logprob (echo)
            token = text(token_id)
            values.append(None)
            tops.append(None)
        else:
            record = step[token_id]
            token = text(token_id, record)
            values.append(_value(record))
            # OpenAI's legacy format: the top `logprobs` alternatives plus the sampled token.
            tops.append(
                {
                    text(tid, rec): _value(rec)
                    for i, (tid, rec) in enumerate(step.items())
                    if all_top or top == -1 or top >= i
                }
            )
        offsets.append(offsets[-1] + len(tokens[-1]) if offsets else offset)
        tokens.append(token)
    return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens, "top_logprobs": tops}


def prompt_logprobs_json(records: Records | None) -> list[dict[str, dict[str, Any]] | None] | None:
    """vLLM's `prompt_logprobs` field: per prompt token, its listed tokens with logprob, rank and text."""
    if records is None:
        return None
    return [
        None
        if step is None
        else {
            str(tid): {"logprob": _value(rec), "rank": rec.rank, "decoded_token": rec.decoded_token}
            for tid, rec in step.items()
        }
        for step in records
    ]

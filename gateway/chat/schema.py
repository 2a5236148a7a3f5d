"""The request bodies of `/chat_stream` and `/set_generation_params`, and how their errors are told."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ChatStreamBody(BaseModel):
    """The JSON body of `POST /chat_stream`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    user_input: str = ""
    regenerate: bool = False

    @field_validator("user_input")
    @classmethod
    def _utf8_encodable(cls, value: str) -> str:
        # JSON can spell lone surrogates ("\ud800"): no tokenizer, store or UTF-8
        # response can carry them, so they are refused here rather than failing later.
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (it contains a lone surrogate)") from None
        return value


class GenerationParams(BaseModel):
    """Per-session sampling settings; unset fields keep the server's defaults."""

    # strict: `true` is not a temperature, nor "0.5" (the schema fuzzer found both accepted)
    model_config = ConfigDict(extra="forbid", strict=True)

    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0, le=1000)
    max_new_tokens: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0)


def range_of(name: str) -> list[Any]:
    """A GenerationParams field's [lowest, highest] value, read from its constraints (None: unbounded)."""
    low: Any = None
    high: Any = None
    for constraint in GenerationParams.model_fields[name].metadata:
        low = getattr(constraint, "ge", getattr(constraint, "gt", low))
        high = getattr(constraint, "le", high)
    return [low, high]


def describe_validation_error(err: ValidationError) -> str:
    """A client-facing summary of what is wrong, without echoing the input."""
    parts = []
    for e in err.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in e["loc"]) or "body"
        parts.append(f"{where}: {e['msg']}")
    return "; ".join(parts)

"""instructor cases: a pydantic model extracted in JSON and TOOLS modes."""

from __future__ import annotations

from typing import Any

import instructor
from openai import OpenAI
from pydantic import BaseModel, Field

from tests.clients.drivers.common import API_KEY, BASE_URL, JSON_MAX_TOKENS, MODEL, TIMEOUT


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)


def extract(mode: str) -> dict[str, Any]:
    client = instructor.from_openai(
        OpenAI(base_url=BASE_URL, api_key=API_KEY, timeout=TIMEOUT, max_retries=0), mode=instructor.Mode[mode]
    )
    person, completion = client.chat.completions.create_with_completion(
        model=MODEL,
        response_model=Person,
        messages=[{"role": "user", "content": "Describe a person."}],
        max_retries=0,  # a retry would hide what the server answered
        max_tokens=JSON_MAX_TOKENS,
        temperature=1.0,
        seed=0,
    )
    message = completion.choices[0].message
    return {
        "person": person.model_dump(),
        "finish_reason": completion.choices[0].finish_reason,
        "tool_calls": [c.function.name for c in message.tool_calls or []],
    }


CASES = {"extract": extract}

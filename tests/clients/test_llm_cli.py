"""The `llm` CLI with the target declared in extra-openai-models.yaml: streamed and not."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import Target, run_program


@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"), pytest.param(False, id="no-stream")])
def test_a_prompt_prints_the_answer_and_logs_its_usage(
    client_bin: Callable[[str], str],
    client_env_for: dict[str, str],
    openai_target: Target,
    tmp_path: Path,
    tokenizer: Any,
    stream: bool,
) -> None:
    user_path = tmp_path / "llm"
    user_path.mkdir()
    (user_path / "extra-openai-models.yaml").write_text(
        f"- model_id: tiny-target\n  model_name: {openai_target.model}\n  api_base: {openai_target.base_url}\n"
    )
    env = {**client_env_for, "LLM_USER_PATH": str(user_path)}
    llm = client_bin("llm")
    prompt = "What is a queue?"
    flags = [] if stream else ["--no-stream"]
    printed = run_program(
        [llm, "-m", "tiny-target", *flags, "-o", "max_tokens", "16", "-o", "seed", "0", prompt], env, tmp_path
    )
    [logged] = json.loads(run_program([llm, "logs", "-n", "1", "--json"], env, tmp_path).stdout)
    assert printed.stdout == logged["response"] + "\n"
    assert logged["prompt"] == prompt and logged["model"] == "tiny-target"
    messages = [{"role": "user", "content": prompt}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert logged["input_tokens"] == len(tokenizer.encode(rendered, add_special_tokens=False))
    assert 0 < logged["output_tokens"] <= 16

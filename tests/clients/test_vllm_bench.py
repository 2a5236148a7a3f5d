"""`vllm bench serve`, vLLM's own load client, against the target: no failed request."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.clients.conftest import Target, run_program
from tests.servers import REPO

PROMPTS = 8
OUTPUT_LEN = 16


@pytest.mark.parametrize(
    ("backend", "endpoint"),
    [
        pytest.param("openai", "/v1/completions", id="completions"),
        pytest.param("openai-chat", "/v1/chat/completions", id="chat"),
    ],
)
def test_bench_serve_completes_every_request_with_the_asked_output_length(
    openai_target: Target, tiny_model_dir: Path, tmp_path: Path, backend: str, endpoint: str
) -> None:
    command = [
        sys.executable,
        "-m",
        "tests.clients.vllm_bench",
        "bench",
        "serve",
        "--backend",
        backend,
        "--base-url",
        openai_target.root_url,
        "--endpoint",
        endpoint,
        "--model",
        openai_target.model,
        "--tokenizer",
        str(tiny_model_dir),
        "--dataset-name",
        "random",
        "--random-input-len",
        "32",
        "--random-output-len",
        str(OUTPUT_LEN),
        "--num-prompts",
        str(PROMPTS),
        "--max-concurrency",
        "4",
        "--ignore-eos",
        "--save-result",
        "--result-dir",
        str(tmp_path),
        "--result-filename",
        "result.json",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    run_program(command, env, tmp_path)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["completed"] == PROMPTS
    assert result["failed"] == 0
    assert result["total_output_tokens"] == PROMPTS * OUTPUT_LEN  # ignore_eos: every answer at full length

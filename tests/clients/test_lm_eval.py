"""lm-eval's `local-completions` and `local-chat-completions` on a local task file (no dataset hub)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.clients.conftest import Target, run_program

DATA = Path(__file__).parent / "data" / "lm_eval"


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """The task YAMLs, pointed at the committed JSONL file by absolute path."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for yaml in DATA.glob("*.yaml"):
        (tasks / yaml.name).write_text(yaml.read_text().replace("DATA_DIR", str(DATA)))
    return tasks


def lm_eval(
    client_bin: Callable[[str], str], env: dict[str, str], task_dir: Path, model: str, model_args: str, tasks: str
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Run lm_eval; its results file and its logged samples per task."""
    out = task_dir.parent / "out"
    command = [
        client_bin("lm_eval"),
        "--model",
        model,
        "--model_args",
        model_args,
        "--tasks",
        tasks,
        "--include_path",
        str(task_dir),
        "--output_path",
        str(out),
        "--log_samples",
        "--limit",
        "4",
    ]
    if model == "local-chat-completions":
        command.append("--apply_chat_template")
    run_program(command, env, task_dir.parent)
    [results] = out.rglob("results_*.json")
    # samples_<task>_<timestamp>.jsonl
    samples = {
        path.name.removeprefix("samples_").rsplit("_", 1)[0]: [
            json.loads(line) for line in path.read_text().splitlines()
        ]
        for path in out.rglob("samples_*.jsonl")
    }
    return json.loads(results.read_text()), samples


def test_local_completions_generates_and_scores_loglikelihoods_the_server_computed(
    client_bin: Callable[[str], str],
    client_env_for: dict[str, str],
    task_dir: Path,
    openai_target: Target,
    openai_client: OpenAI,
    tiny_model_dir: Path,
    tokenizer: Any,
) -> None:
    # Token-id prompts with echo and logprobs: the loglikelihood requests lm-eval sends by default.
    model_args = (
        f"model={openai_target.model},base_url={openai_target.base_url}/completions,tokenizer={tiny_model_dir},"
        "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1"
    )
    results, samples = lm_eval(
        client_bin, client_env_for, task_dir, "local-completions", model_args, "tiny_generate,tiny_choice"
    )
    assert results["n-samples"]["tiny_generate"]["effective"] == 4
    assert results["n-samples"]["tiny_choice"]["effective"] == 4
    assert 0 <= results["results"]["tiny_choice"]["acc,none"] <= 1
    for sample in samples["tiny_generate"]:
        [answer] = sample["resps"][0]
        assert isinstance(answer, str) and "\n" not in answer  # `until` stopped it
    for sample in samples["tiny_choice"]:
        assert len(sample["resps"]) == 3
        for [[loglikelihood, _is_greedy]] in sample["resps"]:
            assert math.isfinite(float(loglikelihood)) and float(loglikelihood) < 0
    # The first choice's loglikelihood is the sum of the continuation's echoed prompt logprobs.
    first = samples["tiny_choice"][0]
    context, continuation = first["arguments"]["gen_args_0"]["arg_0"], first["arguments"]["gen_args_0"]["arg_1"]
    whole = tokenizer.encode(context + continuation)
    context_tokens = len(tokenizer.encode(context))
    response = openai_client.completions.create(
        model=openai_target.model, prompt=whole, echo=True, logprobs=1, max_tokens=1, temperature=0
    )
    token_logprobs = response.choices[0].logprobs.token_logprobs
    assert float(first["resps"][0][0][0]) == pytest.approx(sum(token_logprobs[context_tokens : len(whole)]), abs=1e-3)


def test_local_chat_completions_generates(
    client_bin: Callable[[str], str], client_env_for: dict[str, str], task_dir: Path, openai_target: Target
) -> None:
    model_args = (
        f"model={openai_target.model},base_url={openai_target.base_url}/chat/completions,num_concurrent=1,max_retries=1"
    )
    results, samples = lm_eval(
        client_bin, client_env_for, task_dir, "local-chat-completions", model_args, "tiny_generate"
    )
    assert results["n-samples"]["tiny_generate"]["effective"] == 4
    assert len(samples["tiny_generate"]) == 4
    for sample in samples["tiny_generate"]:
        [answer] = sample["resps"][0]
        assert isinstance(answer, str) and "\n" not in answer

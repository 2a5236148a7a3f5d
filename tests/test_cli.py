"""The `chatstream-gateway` command: documented flags, settings from env and flags, the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import Settings, cli
from tests.live import free_port

COMMAND = Path(sys.executable).parent / "chatstream-gateway"


def run_command(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(COMMAND), *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_serve_help_documents_every_setting_with_its_environment_variable() -> None:
    result = run_command("serve", "--help")
    assert result.returncode == 0, result.stderr
    # argparse wraps help text: compare with the line breaks folded away.
    text = " ".join(result.stdout.split())
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        assert flag in text, flag
        assert f"env CHATSTREAM_{name.upper()}" in text, name
        assert field.description and " ".join(field.description.split()) in text, name


def test_help_never_shows_a_secret_from_the_environment() -> None:
    result = run_command("serve", "--help", env={"CHATSTREAM_SESSION_SECRET": '["do-not-print-me-0123456789"]'})
    assert result.returncode == 0 and "do-not-print-me" not in result.stdout


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Settings]:
    """Run `main(["serve", ...])` up to the point where it would start serving, keeping its Settings."""
    for name in Settings.model_fields:
        monkeypatch.delenv(f"CHATSTREAM_{name.upper()}", raising=False)
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "serve", seen.append)
    return seen


def test_settings_come_from_the_environment_and_flags_win(
    served: list[Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHATSTREAM_QUEUE_SIZE", "3")
    monkeypatch.setenv("CHATSTREAM_CONCURRENCY", "5")
    monkeypatch.setenv("CHATSTREAM_SECURE_COOKIES", "false")
    monkeypatch.setenv("CHATSTREAM_SYSTEM_PROMPT", "from the environment")
    monkeypatch.setenv("CHATSTREAM_SESSION_SECRET", '["env-key-0123456789abcdef"]')
    argv = ["serve", "--queue-size", "7", "--secure-cookies", "--session-secret", "flag-key-0123456789abcdef"]
    assert cli.main([*argv, "--session-secret", "older-flag-key-0123456789", "--prompt-format", "vicuna"]) == 0
    [settings] = served
    assert settings.queue_size == 7  # flag over environment
    assert settings.concurrency == 5  # environment over default
    assert settings.secure_cookies is True
    assert settings.system_prompt == "from the environment"
    assert settings.prompt_format == "vicuna"
    assert settings.session_secrets() == ["flag-key-0123456789abcdef", "older-flag-key-0123456789"]
    assert settings.max_new_tokens == 256  # untouched: the default


def test_no_flags_and_no_environment_give_the_defaults(served: list[Settings]) -> None:
    assert cli.main(["serve"]) == 0
    assert served == [Settings()]
    assert served[0].host == "127.0.0.1" and served[0].model is None and served[0].secure_cookies


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--queue-size", "-1"], id="negative-queue"),
        pytest.param(["--concurrency", "many"], id="not-a-number"),
        pytest.param(["--prompt-format", "alpaca"], id="unknown-format"),
        pytest.param(["--top-p", "1.5"], id="out-of-range"),
        pytest.param(["--engine-arg", "no-equals-sign"], id="engine-arg-without-value"),
        # Regression (issue 13): these were found on the first request, then answered 500 to every one.
        pytest.param(["--session-secret", "too-short"], id="short-session-secret"),
        pytest.param(["--session-store", "memcached://cache:11211"], id="unknown-session-store"),
        pytest.param(["--conversation-db", "sqlite:///c.db"], id="conversation-db-without-users"),
        pytest.param(["--max-session-bytes", str(2**30)], id="session-larger-than-the-store"),
        # Each front-end process would keep its own users' sessions: a shared store is required.
        pytest.param(["--api-processes", "2"], id="api-processes-with-per-process-sessions"),
        # A flag the front ends could not honour: refused, not ignored.
        pytest.param(
            ["--no-exit-on-engine-death", "--api-processes", "2", "--session-store", "redis://cache:6379"],
            id="api-processes-that-outlive-the-engine",
        ),
    ],
)
def test_a_bad_setting_is_a_usage_error_before_anything_starts(
    served: list[Settings], capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["serve", *argv])
    assert exited.value.code == 2
    assert served == []
    err = capsys.readouterr().err
    assert "chatstream-gateway: error:" in err
    assert argv[0][2:].replace("-", "_") in err  # names the setting at fault
    assert "Traceback" not in err


def test_api_processes_answers_to_vllms_name_too(served: list[Settings]) -> None:
    assert cli.main(["serve", "--api-server-count", "3", "--session-store", "redis://cache:6379"]) == 0
    assert served[0].api_processes == 3


def test_engine_args_reach_vllm_settings(served: list[Settings]) -> None:
    cli.main(
        ["serve", "--max-model-len", "512", "--engine-arg", "max_num_seqs=4", "--engine-arg", "kv_cache_dtype=auto"]
    )
    args = served[0].engine_args()
    assert args["max_model_len"] == 512 and args["max_num_seqs"] == 4 and args["kv_cache_dtype"] == "auto"


def test_make_tiny_model_is_deterministic(tmp_path: Path, tiny_model_dir: Path) -> None:
    """The command, in its own process, writes byte for byte the model the test run uses (same seed)."""
    result = run_command("make-tiny-model", str(tmp_path / "tiny"))
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / "tiny"
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (tmp_path / "tiny" / name).read_bytes() == (tiny_model_dir / name).read_bytes(), name


def test_a_session_store_that_cannot_be_reached_stops_the_start_with_a_clear_message(tiny_model_dir: Path) -> None:
    # Regression (issue 13): the server started and answered every request with an error instead.
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = run_command("serve", "--model", str(tiny_model_dir), "--session-store", closed, "--port", "0", timeout=60)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "the session store cannot be reached" in result.stderr
    assert "engine ready" not in result.stderr  # it fails before the engine is started


def test_a_setting_only_a_file_can_break_is_an_error_before_serving(tmp_path: Path) -> None:
    secret_file = tmp_path / "session-secret"
    secret_file.write_text("short\n")
    result = run_command("serve", "--session-secret-file", str(secret_file), timeout=60)
    assert result.returncode == 2
    assert "chatstream-gateway: error:" in result.stderr and "at least 16 characters" in result.stderr
    assert "Traceback" not in result.stderr

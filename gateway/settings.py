"""The gateway's configuration: one frozen object, built once and passed in.

`Config` holds every knob of one gateway (engine, admission, generation
defaults, limits, sessions, access), as uvicorn's `Config` does for a server;
the core, both APIs and the app read their parts of it. `Settings` is the
same object read from the command line and the environment: every field is a
`serve` flag (`--queue-size`) and an environment variable
(`CHATSTREAM_QUEUE_SIZE`); flags win over the environment. A library user
builds a plain `Config` (or passes keywords to `ChatStream`), which reads no
environment at all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_tiny_model_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "chatstream-gateway" / "tiny-model"


class Config(BaseModel):
    """How one gateway runs. Every field has a default; see `chatstream-gateway serve --help`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- the model and engine
    model: str | None = Field(None, description="model directory or Hugging Face id (default: the built-in tiny model)")
    served_model_name: str | None = Field(None, description="model name the OpenAI API reports (default: --model)")
    tiny_model_dir: Path = Field(
        default_factory=default_tiny_model_dir, description="where the tiny model is built when no --model is given"
    )
    max_model_len: int | None = Field(None, ge=16, description="context length (default: the model's)")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per engine (vLLM tensor parallelism)")
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1, description="fraction of GPU memory vLLM may use")
    dtype: str | None = Field(None, description="weight dtype (auto, bfloat16, float16, float32)")
    enable_prefix_caching: bool = Field(True, description="reuse the KV cache of a conversation's earlier turns")
    engine_arg: list[str] = Field(
        default_factory=list, description="extra vLLM AsyncEngineArgs as KEY=JSON (repeatable)"
    )

    # --- the HTTP server
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    # --- admission
    concurrency: int = Field(32, ge=1, description="generations running at once (num_of_concurrent_executions)")
    queue_size: int = Field(128, ge=0, description="requests that may wait for a slot; the next gets 429")
    queue_timeout: float = Field(60.0, gt=0, description="seconds a request may wait for a slot before a 503")
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight streams get to finish on SIGTERM")
    exit_on_engine_death: bool = Field(
        True, description="exit with status 1 when the engine dies, so a supervisor restarts the process"
    )

    # --- generation defaults
    max_new_tokens: int = Field(256, ge=1, description="most tokens an answer may have")
    temperature: float = Field(0.7, ge=0, le=2, description="default sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="default nucleus sampling cut")
    top_k: int = Field(0, ge=0, description="default top-k cut (0 = off)")
    repetition_penalty: float = Field(1.0, gt=0, le=2, description="default repetition penalty (1 = off)")
    ignore_eos: bool = Field(False, description="generate max_new_tokens every time (benchmarks)")
    system_prompt: str | None = Field(None, description="system prompt of new conversations")
    prompt_format: Literal["template", "chatml", "llama2", "vicuna"] = Field(
        "template", description="prompt format of new conversations"
    )

    # --- limits
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="largest request body (413 beyond)")
    max_input_chars: int = Field(32_000, ge=1, description="longest user_input")
    max_history_messages: int = Field(
        1000, ge=2, description="messages a conversation keeps (the oldest are forgotten beyond it)"
    )
    send_timeout: float = Field(30.0, gt=0, description="seconds a client may stall a stream before it is cut")
    ping_interval: float = Field(15.0, gt=0, description="seconds between SSE keep-alive comments")

    # --- sessions
    session_secret: list[SecretStr] = Field(
        default_factory=list, description="cookie signing keys, newest first (default: random per process)"
    )
    session_secret_file: Path | None = Field(None, description="file with one signing key per line, newest first")
    session_store: str = Field("memory", description="'memory' or a redis:// URL")
    session_idle_timeout: float = Field(3600.0, gt=0, description="seconds an unused session lives")
    max_sessions: int = Field(10_000, ge=1, description="sessions kept in memory (least recently used dropped)")
    secure_cookies: bool = Field(True, description="send the session cookie over HTTPS only")
    cookie_name: str = Field("chatstream_session", description="session cookie name")
    conversation_db: str | None = Field(
        None, description="keep each user's conversations in sqlite:///PATH or postgresql://... (needs --users-file)"
    )
    users_file: Path | None = Field(None, description="file of 'API_KEY USER_ID' lines for --conversation-db")

    # --- routing (several replicas behind a router: deploy/README.md)
    replica_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9._-]{1,64}$",
        description="this replica's name, sent in X-Chatstream-Replica and the chatstream_replica cookie "
        "so the router brings a conversation's next turns back to its cache",
    )
    overload_status: int = Field(
        429, description="status of a refusal because the queue is full: 429, or 503 for vllm-router"
    )

    # --- access
    api_key: list[SecretStr] = Field(default_factory=list, description="bearer keys for the API routes (repeatable)")
    api_key_file: Path | None = Field(None, description="file with one API key per line")
    metrics_auth: bool = Field(False, description="require an API key for /metrics")
    cors_origin: list[str] = Field(
        default_factory=list, description="origins allowed to call the API from a browser (repeatable)"
    )

    @field_validator("engine_arg")
    @classmethod
    def _check_engine_args(cls, value: list[str]) -> list[str]:
        for item in value:
            if "=" not in item:
                raise ValueError(f"engine_arg {item!r} is not KEY=VALUE")
        return value

    @field_validator("overload_status")
    @classmethod
    def _check_overload_status(cls, value: int) -> int:
        if value not in (429, 503):
            raise ValueError("overload_status is 429 or 503")
        return value

    def engine_args(self) -> dict[str, Any]:
        """The vLLM AsyncEngineArgs these settings ask for."""
        args: dict[str, Any] = {"enable_prefix_caching": self.enable_prefix_caching}
        if self.tensor_parallel_size != 1:
            args["tensor_parallel_size"] = self.tensor_parallel_size
        for name in ("max_model_len", "gpu_memory_utilization", "dtype"):
            value = getattr(self, name)
            if value is not None:
                args[name] = value
        for item in self.engine_arg:
            key, _, raw = item.partition("=")
            try:
                args[key.strip()] = json.loads(raw)
            except ValueError:
                args[key.strip()] = raw
        if self.served_model_name:
            args["served_model_name"] = self.served_model_name
        return args

    def session_secrets(self) -> list[str]:
        keys = [s.get_secret_value() for s in self.session_secret]
        if self.session_secret_file is not None:
            keys += [line.strip() for line in self.session_secret_file.read_text().splitlines() if line.strip()]
        return keys

    def api_keys(self) -> list[str]:
        keys = [k.get_secret_value() for k in self.api_key]
        if self.api_key_file is not None:
            keys += [line.strip() for line in self.api_key_file.read_text().splitlines() if line.strip()]
        return keys


class Settings(Config, BaseSettings):
    """A `Config` read from `CHATSTREAM_*` environment variables (and, through the CLI, flags)."""

    model_config = SettingsConfigDict(env_prefix="CHATSTREAM_", frozen=True, extra="forbid")

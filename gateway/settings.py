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
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from gateway.sql import SQL_URL_FORMS, sql_dialect

REDIS_URL_PREFIXES = ("redis://", "rediss://", "unix://")
MiB = 1 << 20
# A shorter signing key is guessable; the middleware refuses it too.
MIN_SECRET_CHARS = 16


def default_tiny_model_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "chatstream-gateway" / "tiny-model"


class Config(BaseModel):
    """How one gateway runs. Every field has a default; see `chatstream-gateway serve --help`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # --- the model and engine
    model: str | None = Field(None, description="model directory or Hugging Face id (default: the built-in tiny model)")
    served_model_name: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="names the OpenAI API answers to; the first is the one it reports (default: --model)",
    )
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

    # --- the OpenAI API (vLLM's flags, same names and meaning)
    chat_template: str | None = Field(
        None, description="chat template of both APIs: a file or the template itself (default: the model's)"
    )
    chat_template_content_format: Literal["auto", "string", "openai"] = Field(
        "auto", description="how message content reaches the chat template (vLLM's --chat-template-content-format)"
    )
    trust_request_chat_template: bool = Field(False, description="let requests bring their own chat template")
    enable_auto_tool_choice: bool = Field(False, description="let the model call tools by itself (tool_choice auto)")
    tool_call_parser: str | None = Field(
        None, description="vLLM tool parser reading the model's tool calls (e.g. hermes, llama3_json, mistral)"
    )
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        "auto",
        description="constrain tool calls for tool_choice auto: per tool's strict, the call envelope, or the "
        "arguments too (forced calls always constrain their arguments)",
    )
    exclude_tools_when_tool_choice_none: bool = Field(
        False, description="leave tools out of the prompt for tool_choice none"
    )
    reasoning_parser: str | None = Field(
        None, description="vLLM reasoning parser splitting the answer's reasoning from its content (e.g. deepseek_r1)"
    )
    return_tokens_as_token_ids: bool = Field(False, description="logprob tokens spelled token_id:N by default")
    enable_prompt_tokens_details: bool = Field(
        False, description="chat and completion usage counts the prompt tokens served from the prefix cache"
    )
    max_tokens_ceiling: int | None = Field(
        None,
        ge=1,
        description="most tokens an OpenAI request may ask for (a 400 beyond); unset, answers may fill the context",
    )

    # --- the HTTP server
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    api_processes: int = Field(
        1,
        ge=1,
        description="front-end processes sharing one engine and one admission (vLLM's --api-server-count); "
        "more than 1 needs a session store the processes share",
    )

    # --- admission
    concurrency: int = Field(32, ge=1, description="generations running at once (num_of_concurrent_executions)")
    queue_size: int = Field(128, ge=0, description="requests that may wait for a slot; the next gets 429")
    queue_timeout: float = Field(60.0, gt=0, description="seconds a request may wait for a slot before a 503")
    token_budget: int | None = Field(
        None, ge=1, description="most tokens in flight: prompt + max_tokens of the running generations (default: none)"
    )
    drain_timeout: float = Field(30.0, ge=0, description="seconds in-flight streams get to finish on SIGTERM")
    exit_on_engine_death: bool = Field(
        True, description="exit with status 1 when the engine dies, so a supervisor restarts the process"
    )

    # --- generation defaults
    max_new_tokens: int = Field(256, ge=1, description="most tokens a /chat_stream answer may have")
    temperature: float = Field(0.7, ge=0, le=2, description="default sampling temperature (/chat_stream)")
    top_p: float = Field(0.95, gt=0, le=1, description="default nucleus sampling cut (/chat_stream)")
    top_k: int = Field(0, ge=0, description="default top-k cut, 0 = off (/chat_stream)")
    repetition_penalty: float = Field(1.0, gt=0, le=2, description="default repetition penalty, 1 = off (/chat_stream)")
    ignore_eos: bool = Field(False, description="every answer runs to its max tokens, both APIs (benchmarks)")
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
    session_store: str = Field(
        "memory", description="'memory', a redis:// URL, or sqlite:///PATH or postgresql://... (shared by replicas)"
    )
    session_idle_timeout: float = Field(3600.0, gt=0, description="seconds an unused session lives")
    session_lock_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds a dead replica's generation lock outlives it (renewed every third while it runs)",
    )
    max_sessions: int = Field(
        10_000, ge=1, description="sessions kept, in memory or in Redis (least recently used dropped)"
    )
    max_session_bytes: int = Field(
        MiB, ge=4096, description="bytes one session may take (a conversation forgets its oldest turns to fit)"
    )
    max_store_bytes: int = Field(
        256 * MiB, ge=4096, description="bytes all sessions may take in memory (least recently used dropped)"
    )
    secure_cookies: bool = Field(True, description="send the session cookie over HTTPS only")
    cookie_name: str = Field("chatstream_session", description="session cookie name")
    conversation_db: str | None = Field(
        None, description="keep each key's user's conversations in sqlite:///PATH or postgresql://... (needs keys)"
    )

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
    api_key: list[SecretStr] = Field(
        default_factory=list, description="bearer keys for the API routes, each its own user (repeatable)"
    )
    keys_file: Path | None = Field(
        None, description="file of 'KEY [USER] [class=... weight=... concurrent_requests=... ...]' lines"
    )
    metrics_auth: bool = Field(False, description="require an API key for /metrics")
    cors_origin: list[str] = Field(
        default_factory=list, description="origins allowed to call the API from a browser (repeatable)"
    )

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _names(cls, value: Any) -> Any:
        # One name or several: a string (from the environment, a JSON list of them).
        if isinstance(value, str):
            value = json.loads(value) if value.lstrip().startswith("[") else [value]
        return value

    @field_validator("session_store")
    @classmethod
    def _check_session_store(cls, value: str) -> str:
        if value != "memory" and not value.startswith(REDIS_URL_PREFIXES) and sql_dialect(value) is None:
            raise ValueError(
                f"session_store must be 'memory', a redis://, rediss:// or unix:// URL, or {SQL_URL_FORMS}"
            )
        return value

    @field_validator("session_secret")
    @classmethod
    def _check_session_secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(secret.get_secret_value()) < MIN_SECRET_CHARS for secret in value):
            raise ValueError(f"session_secret: every key must be at least {MIN_SECRET_CHARS} characters")
        return value

    @model_validator(mode="after")
    def _check_together(self) -> Config:
        if self.max_session_bytes > self.max_store_bytes:
            raise ValueError("max_session_bytes must not be larger than max_store_bytes")
        if self.conversation_db is not None and self.keys_file is None and not self.api_key:
            raise ValueError("conversation_db needs API keys (--keys-file or --api-key): they name its users")
        if self.api_processes > 1 and self.session_store == "memory":
            raise ValueError(
                "api_processes > 1 needs a session store every process shares: the memory store is per process "
                "(each process would keep its own users' sessions and stored responses); give --session-store "
                "redis://..., sqlite:///PATH or postgresql://..."
            )
        if self.api_processes > 1 and not self.exit_on_engine_death:
            # vLLM's client in a front end does not watch an engine core it did not start (its
            # monitor needs the engine manager, which the parent holds): the parent stops the gateway.
            raise ValueError(
                "no_exit_on_engine_death works with one process only: with api_processes > 1 the engine "
                "core's death stops the whole gateway (exit status 1), for a supervisor to restart it"
            )
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("--enable-auto-tool-choice requires --tool-call-parser")
        return self

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
        if self.reasoning_parser:
            # The engine needs it too: structured output starts once reasoning has ended.
            args["reasoning_parser"] = self.reasoning_parser
        return args

    def session_secrets(self) -> list[str]:
        keys = [s.get_secret_value() for s in self.session_secret]
        if self.session_secret_file is not None:
            keys += [line.strip() for line in self.session_secret_file.read_text().splitlines() if line.strip()]
        return keys


class Settings(Config, BaseSettings):
    """A `Config` read from `CHATSTREAM_*` environment variables (and, through the CLI, flags)."""

    model_config = SettingsConfigDict(env_prefix="CHATSTREAM_", frozen=True, extra="forbid")

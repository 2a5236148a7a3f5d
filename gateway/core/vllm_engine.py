"""The real engine: vLLM's AsyncLLM behind the gateway's `Engine` protocol.

Generations stream with `output_kind=DELTA` (each output carries only the new
text: CUMULATIVE would copy the whole answer on every token). vLLM is
imported only when an engine starts, so the HTTP layer loads without it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from gateway.core.engine import EngineDead, EngineOutput, EngineStats, FinishReason, SamplingOptions
from gateway.core.errors import BadChatRequest
from prompts import Tokenizer

logger = logging.getLogger(__name__)

# On a CPU-only host vLLM's GPU defaults do not fit: it would reserve 92% of the
# machine's memory and compile kernels for minutes. These fit a small server.
CPU_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.3, "enforce_eager": True}
CPU_KV_CACHE_GIB = "1"


class _HFTokenizer:
    """A Hugging Face tokenizer seen through the `prompts.Tokenizer` protocol."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        text: str = self._tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=add_generation_prompt, tokenize=False
        )
        return text


class VLLMEngine:
    """vLLM's AsyncLLM for one model. `engine_args` go to vLLM's AsyncEngineArgs."""

    def __init__(
        self, model: str, engine_args: Mapping[str, Any] | None = None, served_model_name: str | None = None
    ) -> None:
        self.model = model
        self.engine_args = dict(engine_args or {})
        self.model_name = served_model_name or model
        self.max_model_len = 0
        self._llm: Any = None
        self._tokenizer: _HFTokenizer | None = None
        self._stats: EngineStats | None = None

    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        args = dict(self.engine_args)
        if current_platform.is_cpu():
            args = {**CPU_DEFAULTS, **args}
            # vLLM reads the KV cache size for CPUs from the environment only.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        engine_args = AsyncEngineArgs(model=self.model, disable_log_stats=False, **args)
        self._llm = AsyncLLM.from_engine_args(engine_args, stat_loggers=[self._stats_tap_factory()])
        self.max_model_len = int(self._llm.model_config.max_model_len)
        self._tokenizer = _HFTokenizer(self._llm.get_tokenizer())
        logger.info("engine ready: model=%s max_model_len=%d", self.model, self.max_model_len)

    def _stats_tap_factory(self) -> Any:
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class StatsTap(StatLoggerBase):
            """Keeps the scheduler's latest load figures for /metrics."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(
                self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
            ) -> None:
                if scheduler_stats is not None:
                    # vLLM reports the prefix cache per step; the totals add them up.
                    cache = scheduler_stats.prefix_cache_stats
                    before = engine._stats
                    engine._stats = EngineStats(
                        running=scheduler_stats.num_running_reqs,
                        waiting=scheduler_stats.num_waiting_reqs,
                        kv_cache_usage=scheduler_stats.kv_cache_usage,
                        prefix_cache_queries=(before.prefix_cache_queries if before else 0) + cache.queries,
                        prefix_cache_hits=(before.prefix_cache_hits if before else 0) + cache.hits,
                    )

            def log_engine_initialized(self) -> None:
                pass

        return StatsTap

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the engine has not started")
        return self._tokenizer

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions
    ) -> AsyncGenerator[EngineOutput, None]:
        from vllm.exceptions import VLLMValidationError
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineDead("the engine is not running")
        params = SamplingParams(
            n=1,
            max_tokens=options.max_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
            top_k=options.top_k,
            min_tokens=options.min_tokens,
            repetition_penalty=options.repetition_penalty,
            stop=list(options.stop) or None,
            seed=options.seed,
            ignore_eos=options.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
        stream = self._llm.generate(tokens_input(prompt_token_ids), params, request_id)
        try:
            async for out in stream:
                completion = out.outputs[0]
                yield EngineOutput(
                    text=completion.text,
                    num_new_tokens=len(completion.token_ids),
                    num_prompt_tokens=len(out.prompt_token_ids or ()),
                    finish_reason=_finish_reason(completion.finish_reason) if out.finished else None,
                )
        except EngineDeadError as exc:
            raise EngineDead("the vLLM engine has died") from exc
        except VLLMValidationError as exc:
            raise BadChatRequest(str(exc)) from exc
        finally:
            await stream.aclose()

    async def abort(self, request_id: str) -> None:
        if self._llm is not None and not self._llm.errored:
            await self._llm.abort(request_id)

    def is_healthy(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def num_unfinished(self) -> int:
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    def stats(self) -> EngineStats | None:
        return self._stats


def _finish_reason(reason: str | None) -> FinishReason:
    if reason == "length":
        return "length"
    if reason == "abort":
        return "abort"
    return "stop"

"""The real engine: vLLM's AsyncLLM behind the gateway's `Engine` protocol.

Generations stream with `output_kind=DELTA` (each output carries only the new
text: CUMULATIVE would copy the whole answer on every token). vLLM is
imported only when an engine starts, so the HTTP layer loads without it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.core.engine import (
    ACCEPTED,
    EngineDead,
    EngineOutput,
    EngineStats,
    OutputSink,
    SamplingOptions,
)
from gateway.core.errors import BadChatRequest, PromptTooLong
from gateway.core.vllm_outputs import SinkFailed, build_for, engine_output, offer_to
from prompts import Tokenizer

logger = logging.getLogger(__name__)

# On a CPU-only host vLLM's GPU defaults do not fit: it would reserve 92% of the
# machine's memory and compile kernels for minutes. These fit a small server.
CPU_DEFAULTS: dict[str, Any] = {"gpu_memory_utilization": 0.3, "enforce_eager": True}
CPU_KV_CACHE_GIB = "1"


@dataclass(frozen=True, slots=True)
class VLLMParams:
    """vLLM's own parameters for one engine request (`SamplingOptions.native`).

    `sampling` is a vLLM `SamplingParams` (its output kind is set to DELTA here);
    `cache_salt` goes with the prompt; `generate_kwargs` to `AsyncLLM.generate`
    (priority, reasoning state).
    """

    sampling: Any
    cache_salt: str | None = None
    generate_kwargs: Mapping[str, Any] = field(default_factory=dict)


class _HFTokenizer:
    """A Hugging Face tokenizer seen through the `prompts.Tokenizer` protocol."""

    def __init__(self, tokenizer: Any, chat_template: str | None = None) -> None:
        self._tokenizer = tokenizer
        self._chat_template = chat_template  # None: the model's own

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False)
        return ids

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        text: str = self._tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            chat_template=self._chat_template,
        )
        return text


def async_engine_args(model: str, engine_args: Mapping[str, Any]) -> Any:
    """vLLM's AsyncEngineArgs for `model`, with the CPU defaults on a CPU-only host."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.platforms import current_platform

    args = dict(engine_args)
    if current_platform.is_cpu():
        args = {**CPU_DEFAULTS, **args}
        # vLLM reads the KV cache size for CPUs from the environment only.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
    return AsyncEngineArgs(model=model, disable_log_stats=False, **args)


class VLLMEngine:
    """vLLM's AsyncLLM for one model. `engine_args` go to vLLM's AsyncEngineArgs.

    `chat_template` (a file or the template itself, as vLLM's `--chat-template`)
    replaces the model's own for `tokenizer.render_chat`. With `client` (vLLM's
    client config: the engine core's addresses, `client_count` and
    `client_index`), the AsyncLLM is one of several front ends of an engine core
    another process started (gateway.processes), as in vLLM's own API server
    with `--api-server-count`.
    """

    def __init__(
        self,
        model: str,
        engine_args: Mapping[str, Any] | None = None,
        served_model_name: str | None = None,
        chat_template: str | None = None,
        client: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.engine_args = dict(engine_args or {})
        self.model_name = served_model_name or model
        self.chat_template = chat_template
        self.client = dict(client) if client is not None else None
        self.max_model_len = 0
        self._llm: Any = None
        self._tokenizer: _HFTokenizer | None = None
        self._stats: EngineStats | None = None
        self._report_stamp = [0.0]  # the engine's clock at its latest report (several front ends only)

    async def start(self) -> None:
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = async_engine_args(self.model, self.engine_args)
        if self.client is None:
            self._llm = AsyncLLM.from_engine_args(engine_args, stat_loggers=[self._stats_tap_factory()])
        else:
            # As vLLM's API server process does (launchers/api_server/entry.py).
            client = dict(self.client)
            count, index = client.pop("client_count"), client.pop("client_index")
            engine_args._api_process_count, engine_args._api_process_rank = count, index
            self._llm = AsyncLLM.from_vllm_config(
                engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER),
                usage_context=UsageContext.OPENAI_API_SERVER,
                stat_loggers=[self._stats_tap_factory()],
                client_addresses=client,
                client_count=count,
                client_index=index,
            )
        if self.client is not None:
            self._stamp_reports(self._llm.engine_core)
        await self._restart_output_handler_without_iteration_stats()
        # vLLM reads some of its settings from the environment on every use, one of them once
        # per engine output (its iteration stats, when on); its engine processes cache them once started,
        # and so does this one now (the environment is not changed after start-up).
        from vllm import envs

        envs.enable_envs_cache()
        self.max_model_len = int(self._llm.model_config.max_model_len)
        from vllm.renderers.chat_utils import load_chat_template

        self._tokenizer = _HFTokenizer(self._llm.get_tokenizer(), load_chat_template(self.chat_template))
        logger.info("engine ready: model=%s max_model_len=%d", self.model, self.max_model_len)

    async def _restart_output_handler_without_iteration_stats(self) -> None:
        # With stat loggers on, vLLM's output handler computes iteration stats: per token, the
        # latencies its Prometheus histograms observe (about 1 µs a token of this process). The
        # gateway's logger reads only the scheduler's report, which the engine core sends either
        # way; its /metrics keeps its own figures. AsyncLLM started the handler with the setting
        # it had then: it is restarted without them, before any request runs.
        llm = self._llm
        llm.log_stats = llm.output_processor.log_stats = False
        handler = llm.output_handler
        if handler is not None:  # else not started yet: it starts with the first request, as set now
            handler.cancel()
            await asyncio.wait([handler])
            llm.output_handler = None
            llm._run_output_handler()

    def _stamp_reports(self, engine_core: Any) -> None:
        # The engine core sends each step's scheduler report to one of its front ends only
        # (vllm/v1/core/sched/scheduler.py: the first with outputs in the step), so which
        # front end holds the newest figures is told by the engine's own clock: the timestamp
        # of the message that carried the report, which vLLM's stat loggers are not given.
        # AsyncLLM's output loop looks this method up on every message, and hands the
        # message's report to the stat loggers before it asks for the next one.
        receive = engine_core.get_output_async
        stamp = self._report_stamp

        async def get_output_async() -> Any:
            outputs = await receive()
            if outputs.scheduler_stats is not None:
                stamp[0] = outputs.timestamp
            return outputs

        engine_core.get_output_async = get_output_async

    def _stats_tap_factory(self) -> Any:
        from vllm.v1.metrics.loggers import PrometheusStatLogger

        engine = self

        # A PrometheusStatLogger only by type: vLLM adds its own Prometheus logger unless one of
        # the loggers it is given is one, and that logger observes every token's latency (a few
        # µs per token of the front end) into a registry the gateway never serves (its /metrics
        # has its own). None of PrometheusStatLogger's behaviour is inherited: every method is here.
        class StatsTap(PrometheusStatLogger):  # type: ignore[misc]
            """Keeps the scheduler's latest load figures for /metrics."""

            def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None) -> None:
                pass  # no vLLM metrics

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
                        reported_at=engine._report_stamp[0],
                    )

            def log_engine_initialized(self) -> None:
                pass

            def log(self) -> None:
                pass

            def record_sleep_state(self, sleep: int = 0, level: int = 0) -> None:
                pass

            def record_admission_rejection(self, reason: str) -> None:
                pass

        return StatsTap

    async def stop(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    @property
    def vllm_client(self) -> Any:
        """vLLM's AsyncLLM once started (None before): its renderer and configuration serve the OpenAI API."""
        return self._llm

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the engine has not started")
        return self._tokenizer

    async def generate(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        options: SamplingOptions,
        sink: OutputSink | None = None,
    ) -> AsyncGenerator[EngineOutput, None]:
        from vllm.inputs.engine import tokens_input
        from vllm.sampling_params import RequestOutputKind, SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineDead("the engine is not running")
        native = options.native
        if isinstance(native, VLLMParams):
            params = native.sampling
            params.output_kind = RequestOutputKind.DELTA
            prompt = tokens_input(prompt_token_ids, cache_salt=native.cache_salt)
            kwargs = dict(native.generate_kwargs)
        else:
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
            prompt, kwargs = tokens_input(prompt_token_ids), {}
        llm = self._llm
        # AsyncLLM.generate's own steps (add the request, then read its output collector), split
        # so that the stream can tell when vLLM has accepted the request: its checks, where it
        # refuses bad parameters, run in add_request. (No streamed inputs here: none of
        # generate's handling of them applies.)
        queue = state = None
        started = finished = False
        try:
            queue = await llm.add_request(request_id, prompt, params, **kwargs)
            if sink is not None:
                offer_to(sink, queue)
                state = llm.output_processor.request_states.get(queue.request_id)
                if state is not None and not build_for(sink, queue, state):
                    state = None  # not hooked: nothing to undo
            yield ACCEPTED
            while not finished:
                out = queue.get_nowait() or await queue.get()
                finished = out.finished
                started = True
                prompt_logprobs = out.prompt_logprobs
                for completion in out.outputs:
                    if completion.finish_reason == "error":  # vLLM: a request-level failure inside the engine
                        raise RuntimeError(f"the engine failed request {request_id}")
                    yield engine_output(out, completion, prompt_logprobs)
                    prompt_logprobs = None  # once per request output, with its first answer
        except EngineDeadError as exc:
            raise EngineDead("the vLLM engine has died") from exc
        except Exception as exc:
            # Raised while vLLM checks a request before running it: a 400 with its reason, in
            # vLLM's server's words (clients parse some, "maximum context length"), sanitized.
            error = None if started or isinstance(exc, SinkFailed) else refusal(exc)
            if error is None:
                raise
            logger.debug("vLLM refused request %s: %s", request_id, exc)
            raise error from exc
        finally:
            if queue is not None:
                if sink is not None:  # its consumer is gone: vLLM's own build and put again
                    del queue.put
                    if state is not None:
                        del state.make_request_output
                # Stopped early (the consumer left, a failure): as generate does, the request is
                # aborted (by the id vLLM gave it), unless the engine is dead.
                if not finished and not llm.errored:
                    await llm.abort(queue.request_id, internal=True)
                queue.close()

    async def abort(self, request_id: str) -> None:
        if self._llm is not None and not self._llm.errored:
            await self._llm.abort(request_id)

    def is_healthy(self) -> bool:
        return self._llm is not None and not self._llm.errored

    def num_unfinished(self) -> int:
        return 0 if self._llm is None else int(self._llm.get_num_unfinished_requests())

    def stats(self) -> EngineStats | None:
        return self._stats


def refusal(exc: BaseException) -> BadChatRequest | None:
    """The 400 vLLM's server answers for an exception of its request handling, in vLLM's words.

    None when the exception is not a refusal of the request (a bug, an engine fault).
    """
    from vllm.entrypoints.serve.exception_handling.utils import sanitize_message
    from vllm.exceptions import VLLMClientError

    if isinstance(exc, VLLMClientError):
        message = str(exc.args[0]) if exc.args else "the request is not valid"  # without vLLM's "(parameter=...)"
        param = getattr(exc, "parameter", None)
        cls = PromptTooLong if param in ("input_tokens", "input_text") else BadChatRequest
        return cls(sanitize_message(message), param=param)
    # vLLM's server answers these with a 400 too: its checks still raise plain ValueErrors, and a
    # chat template refuses a conversation with jinja2's TemplateError.
    if isinstance(exc, (ValueError, TypeError, OverflowError)) or any(
        cls.__name__ == "TemplateError" for cls in type(exc).__mro__
    ):
        return BadChatRequest(sanitize_message(str(exc)) or "the request is not valid")
    return None

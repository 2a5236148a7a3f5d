"""How a request's outputs leave vLLM's output handler: yielded, or taken by a sink at once.

vLLM's output handler (AsyncLLM's one background task) turns each engine step's
outputs into a `RequestOutput` per request and puts it into the request's
collector, which wakes the task that waits on it. With a sink (the stream's
`TokenPath.take`) the gateway's tokens skip both: `offer_to` offers the sink
each output on its way into the collector, and `build_for` goes one step
earlier, where vLLM builds the output, and builds only the gateway's own
`EngineOutput` for the outputs the sink takes. At concurrency 256 the objects
vLLM builds per token and the gateway converts again cost about 2 µs a token
of the front end's CPU.

Both hook the request's own objects (its collector's `put`, its state's
`make_request_output`), never vLLM's classes: every other request, and every
output these paths do not take, goes vLLM's way unchanged. They rely on vLLM's
internals (`vllm/v1/engine/output_processor.py`): recheck on an upgrade.
"""

from __future__ import annotations

from typing import Any

from gateway.core.engine import EngineOutput, FinishReason, OutputSink


class SinkFailed(RuntimeError):
    """The sink raised while it took an output (its cause): the stream raises this."""


def engine_output(out: Any, completion: Any, prompt_logprobs: Any) -> EngineOutput:
    """One answer's part of a vLLM RequestOutput."""
    reason = completion.finish_reason
    return EngineOutput(
        text=completion.text,
        num_new_tokens=len(completion.token_ids),
        num_prompt_tokens=len(out.prompt_token_ids or ()),
        finish_reason=None if reason is None else finish_reason(reason),
        index=completion.index,
        token_ids=completion.token_ids,
        logprobs=completion.logprobs,
        prompt_logprobs=prompt_logprobs,
        stop_reason=completion.stop_reason,
        num_cached_tokens=out.num_cached_tokens or 0,
        num_cache_write_tokens=out.num_cache_creation_tokens or 0,
    )


def finish_reason(reason: str) -> FinishReason:
    if reason in ("length", "abort", "repetition"):
        return reason  # type: ignore[return-value]
    return "stop"


def _failed(queue: Any, exc: Exception) -> SinkFailed:
    failure = SinkFailed(f"the stream of request {queue.request_id} failed")
    failure.__cause__ = exc
    return failure


def offer_to(sink: OutputSink, queue: Any) -> None:
    """Offer `sink` each output vLLM's output handler puts in `queue` that it may take at once.

    Offered: one answer's output that is not its last, while the collector holds none (what it
    holds goes first). The sink runs inside vLLM's output handler, which must never see it
    raise (that would stop the engine for every request): what it raises goes to the
    collector, and the stream raises it. `del queue.put` undoes this.
    """
    from vllm.outputs import RequestOutput

    put = queue.put

    def offer(output: Any) -> None:
        if queue.output is None and type(output) is RequestOutput and not output.finished:
            answers = output.outputs
            if len(answers) == 1 and answers[0].finish_reason is None:
                try:
                    if sink(engine_output(output, answers[0], output.prompt_logprobs)):
                        return
                except Exception as exc:
                    put(_failed(queue, exc))
                    return
        put(output)

    queue.put = offer


def build_for(sink: OutputSink, queue: Any, state: Any) -> bool:
    """Build the outputs of the request whose vLLM state is `state` for `sink`, where it takes them.

    For a request of one answer, streamed in deltas token by token, without logprobs (what
    the gateway's streams ask for unless the client asks for more): its outputs that are not
    its last are built as the sink's `EngineOutput` alone while the collector holds none, and
    what the sink takes vLLM never builds; what it declines becomes vLLM's own output, as vLLM
    would have built it, and goes to the collector (not offered again). False (and nothing
    hooked) for any other request. `del state.make_request_output` undoes this.
    """
    from vllm.outputs import CompletionOutput
    from vllm.sampling_params import RequestOutputKind

    logprobs = state.logprobs_processor
    detokenizer = state.detokenizer
    if (
        state.parent_req is not None
        or state.output_kind != RequestOutputKind.DELTA
        or state.stream_interval != 1
        or state.streaming_input
        or detokenizer is None
        or logprobs is None
        or logprobs.logprobs is not None
        or logprobs.prompt_logprobs is not None
    ):
        return False
    build = state.make_request_output  # vLLM's own, bound
    put = type(queue).put.__get__(queue)  # the collector's own (not offer_to's: declined is offered once)
    index, num_prompt_tokens = state.request_index, state.prompt_len

    def make_request_output(
        new_token_ids: list[int],
        pooling_output: Any,
        finish_reason: Any,
        stop_reason: Any,
        kv_transfer_params: Any = None,
        ec_transfer_params: Any = None,
        error: Any = None,
    ) -> Any:
        # The conditions under which vLLM's own method builds the same delta: not the last
        # output, nothing but text and token ids in it.
        if (
            finish_reason is not None
            or queue.output is not None
            or pooling_output is not None
            or error is not None
            or state.sampling_mask_chunks
        ):
            return build(
                new_token_ids, pooling_output, finish_reason, stop_reason, kv_transfer_params, ec_transfer_params, error
            )
        text = detokenizer.get_next_output_text(False, True)
        out = EngineOutput(
            text,
            len(new_token_ids),
            num_prompt_tokens,
            index=index,
            token_ids=new_token_ids,
            num_cached_tokens=state.num_cached_tokens,
            num_cache_write_tokens=state.num_cache_creation_tokens,
        )
        try:
            if sink(out):
                return None  # vLLM's handler: nothing to put
        except Exception as exc:  # as in offer_to: the stream raises it, the handler never sees it
            put(_failed(queue, exc))
            return None
        completion = CompletionOutput(
            index=index,
            text=text,
            token_ids=new_token_ids,
            cumulative_logprob=logprobs.cumulative_logprob,
            logprobs=None,
            finish_reason=None,
        )
        put(state._new_request_output(state.external_req_id, [completion], False))
        return None

    state.make_request_output = make_request_output
    return True

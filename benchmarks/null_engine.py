"""A zero-cost engine behind the gateway's Engine protocol, and a server that runs the gateway on it.

It produces tokens as fast as the event loop lets it: every token costs one
loop iteration and nothing else, so a benchmark through it measures the
gateway's own cost per streamed token (HTTP, SSE framing, admission,
sessions, metrics). It lives here, not in `gateway/`, so `serve` can never
run it:

    python -m benchmarks.null_engine --port P [--token-delay S] [serve flags...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence

from gateway.core.engine import EngineOutput, EngineStats, OutputSink, SamplingOptions


class ByteTokenizer:
    """One token per UTF-8 byte and a minimal chat template: costs next to nothing."""

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages)
        return text + ("<|assistant|>" if add_generation_prompt else "")


class NullEngine:
    """Streams `max_tokens` one-token deltas ("tok ") per request, yielding to the loop between them.

    `token_delay` (seconds) makes each token wait, to hold streams open for
    scenarios that need long-lived requests without spending CPU.
    """

    model_name = "null"

    def __init__(self, token_delay: float = 0.0, max_model_len: int = 1 << 20) -> None:
        self.token_delay = token_delay
        self.max_model_len = max_model_len
        self._tokenizer = ByteTokenizer()
        self._running: set[str] = set()
        self._started = False

    async def start(self) -> None:
        self._started = True

    async def stop(self) -> None:
        self._started = False

    @property
    def tokenizer(self) -> ByteTokenizer:
        return self._tokenizer

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], options: SamplingOptions, sink: OutputSink | None = None
    ) -> AsyncGenerator[EngineOutput, None]:
        self._running.add(request_id)
        try:
            n, last = len(prompt_token_ids), options.max_tokens - 1
            for i in range(options.max_tokens):
                await asyncio.sleep(self.token_delay)
                if request_id not in self._running:  # aborted
                    return
                out = EngineOutput("tok ", 1, n, "length" if i == last else None)
                # Offered as vLLM offers (never the last output): the consumer's cost is the gateway's.
                if i != last and sink is not None and sink(out):
                    continue
                yield out
        finally:
            self._running.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self._running.discard(request_id)

    def is_healthy(self) -> bool:
        return self._started

    def num_unfinished(self) -> int:
        return len(self._running)

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._running), waiting=0, kv_cache_usage=None)


def main(argv: Sequence[str] | None = None) -> None:
    from gateway.app import create_app
    from gateway.cli import add_settings_flags, run_server, settings_from_args

    parser = argparse.ArgumentParser(description="the gateway over a zero-cost engine (benchmarks only)")
    add_settings_flags(parser)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds each token waits [default 0]")
    args = parser.parse_args(argv)
    settings = settings_from_args(args)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The server `serve` runs (its drain, its frozen start-up heap), so the figures are serve's.
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn raises the SIGINT that stopped it again once stopped
        run_server(create_app(settings, engine=NullEngine(args.token_delay)), settings, watch_children=False)


if __name__ == "__main__":
    main()

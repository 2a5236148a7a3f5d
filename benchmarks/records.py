"""What one request measured, and how a run's requests become figures.

The definitions follow `vllm bench serve` (vllm/benchmarks/serve.py):

- TTFT: from sending the request to the first chunk that carries output text.
- ITL: the gaps between consecutive text-carrying chunks (a chunk may hold
  several tokens; like vLLM we do not divide a gap between them).
- TPOT: per request, (e2e - TTFT) / (output tokens - 1), for requests with
  more than one output token.
- E2E latency: from sending the request to the last byte of the response.
- Request throughput: completed requests / wall time of the run; output
  throughput: output tokens of completed requests / wall time.
- Goodput: completed requests per second that met every SLO given (TTFT and
  TPOT upper bounds, in ms), as `--goodput ttft:X tpot:Y` does in vLLM.

Where we differ: vLLM counts a request as failed on any non-200 status; we
count refusals separately by status (429/503 are a server saying "not now",
which admission control is designed to do) and keep `errors` for transport
failures and malformed or incomplete streams. Output tokens come from the
server's own usage report where it sends one (`include_usage`, the `done`
event), as vLLM does; the original ChatStream reports none, so its completed
requests count the `max_tokens` it was forced to produce.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PERCENTILES = (50, 90, 99)


@dataclass(slots=True)
class RequestRecord:
    """One request as the client saw it. Times are seconds (time.perf_counter)."""

    started: float
    status: int = 0
    ok: bool = False
    output_tokens: int = 0
    prompt_tokens: int = 0
    first_token_at: float | None = None
    chunk_times: list[float] = field(default_factory=list)
    ended: float = 0.0
    error: str | None = None
    turn: int = 0
    conversation: int = 0
    replica: str | None = None  # the server's X-Chatstream-Replica: which replica answered
    retry_after: float | None = None  # a refusal's Retry-After (s)

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def e2e(self) -> float:
        return self.ended - self.started

    @property
    def tpot(self) -> float | None:
        if self.ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    def itls(self) -> list[float]:
        times = self.chunk_times
        return [b - a for a, b in itertools.pairwise(times)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile with linear interpolation (numpy's default method)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def distribution(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | None]:
    """mean and percentiles, scaled (seconds to ms by default)."""
    if not values:
        return {"mean": None, **{f"p{q}": None for q in PERCENTILES}, "max": None}
    out: dict[str, float | None] = {"mean": sum(values) / len(values) * scale}
    for q in PERCENTILES:
        p = percentile(values, q)
        out[f"p{q}"] = None if p is None else p * scale
    out["max"] = max(values) * scale
    return out


@dataclass(frozen=True, slots=True)
class SLO:
    """Goodput targets in milliseconds; None means no bound."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None

    def met_by(self, r: RequestRecord) -> bool:
        if self.ttft_ms is not None and (r.ttft is None or r.ttft * 1000 > self.ttft_ms):
            return False
        return not (self.tpot_ms is not None and r.tpot is not None and r.tpot * 1000 > self.tpot_ms)


def summarise(records: Iterable[RequestRecord], duration: float, slo: SLO | None = None) -> dict[str, Any]:
    """Every figure of one run, as plain JSON-able values (latencies in ms)."""
    records = list(records)
    done = [r for r in records if r.ok]
    refused = Counter(str(r.status) for r in records if not r.ok and r.error is None and r.status >= 400)
    errors = Counter(r.error for r in records if r.error is not None)
    out_tokens = sum(r.output_tokens for r in done)
    ttfts = [r.ttft for r in done if r.ttft is not None]
    tpots = [t for r in done if (t := r.tpot) is not None]
    itls = [gap for r in done for gap in r.itls()]
    slo = slo or SLO()
    good = sum(1 for r in done if slo.met_by(r))
    return {
        "requests": len(records),
        "completed": len(done),
        "refused_by_status": dict(sorted(refused.items())),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors.most_common(5)),
        "duration_s": duration,
        "request_throughput": len(done) / duration if duration > 0 else 0.0,
        "output_throughput": out_tokens / duration if duration > 0 else 0.0,
        "total_output_tokens": out_tokens,
        "total_prompt_tokens": sum(r.prompt_tokens for r in done),
        "goodput": good / duration if duration > 0 else 0.0,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
        "ttft_ms": distribution(ttfts),
        "tpot_ms": distribution(tpots),
        "itl_ms": distribution(itls),
        "e2e_ms": distribution([r.e2e for r in done]),
    }


def by_turn(records: Iterable[RequestRecord], turns: int) -> dict[str, dict[str, Any]]:
    """Multi-turn figures by turn number ("1".. `turns`): completed turns, their TTFT and mean prompt tokens."""
    done = [r for r in records if r.ok]
    figures = {}
    for turn in range(1, turns + 1):
        recs = [r for r in done if r.turn == turn]
        figures[str(turn)] = {
            "n": len(recs),
            "ttft_ms": distribution([r.ttft for r in recs if r.ttft is not None]),
            "prompt_tokens": (sum(r.prompt_tokens for r in recs) / len(recs)) if recs else None,
        }
    return figures

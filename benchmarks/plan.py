"""How big each scenario is: the quick plan (CI smoke test) and the full one (the committed run)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCENARIOS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)
SWEEP_TARGETS = ("engine", "gateway-chat_stream", "gateway-openai", "vllm-server", "original")


@dataclass(frozen=True)
class Plan:
    """Sizes and switches of one suite run. `quick` trades meaning for speed: it proves the harness works."""

    model: str
    out: Path
    quick: bool = False
    scenarios: tuple[int, ...] = SCENARIOS
    sweep: tuple[int, ...] = (1, 8, 16, 32, 64, 128)
    sweep_targets: tuple[str, ...] = SWEEP_TARGETS
    max_tokens: int = 64
    min_requests: int = 16
    requests_per_user: int = 4
    # goodput in the sweep counts requests that met both (ms): a chat user's patience, not a target of ours
    slo_ttft_ms: float = 1000.0
    slo_tpot_ms: float = 50.0
    # scenario 2: admission of `overload_slots` running + `overload_queue` waiting, offered 4x
    overload_slots: int = 8
    overload_queue: int = 8
    overload_factor: float = 4.0
    overload_seconds: float = 20.0
    # scenario 3
    storm_streams: int = 500
    # scenario 4
    turns: int = 20
    conversations: int = 8
    conversation_users: int = 4
    turn_tokens: int = 32
    # scenario 5: `ceiling_passes` passes of `ceiling_requests` requests on every route of every
    # gateway, taken in turn (as scenario 7's slices), so that the machine slowing down for a
    # minute falls on the gateway and its baseline alike: run once each, one after the other, a
    # slow minute made one route 50% dearer in one run of four.
    ceiling_passes: int = 4
    ceiling_requests: int = 400
    ceiling_tokens: int = 256
    ceiling_users: int = 64
    # scenario 6
    memory_requests: int = 10_000
    memory_warmup: int = 500
    memory_users: int = 64
    # scenario 7: the front end beside vLLM's server (streaming with include_usage)
    frontend_levels: tuple[int, ...] = (1, 16, 64, 256, 512)
    frontend_tokens: int = 128
    # Requests per stream at each level, at least `frontend_min_requests` and at most
    # `frontend_max_requests`: with two, the levels from 16 up were mostly ramp-up and tail, and
    # moved 10 to 20% between runs of the same code; with four, a level of 16 streams lasted two
    # seconds here and its tokens/s and TTFT p99 still moved 5 to 20% between runs. At least
    # 512 (one and 16 streams): at one stream, each slice's first request meets an engine woken
    # from idle (see `frontend_settle_s`) and waits 7 to 10 ms for its first token where the
    # others wait 4 to 5, on every server; with 64 requests those four were 6% of them and a
    # server's TTFT p99 was the slowest of them, a draw (1.30x vLLM's on one route of one run,
    # 0.59x on the other). 512 requests of one stream last 80 to 340 seconds, by the machine.
    frontend_rounds: int = 16
    frontend_min_requests: int = 512
    frontend_max_requests: int = 2048
    # Each level is cut into up to `frontend_slices` slices and the servers take the slices in
    # turn (A B C, B C A, ...), so that the machine's speed drifting within a level (a shared
    # CPU, its neighbours) falls on every server alike: run whole, a level of 16 streams took
    # 40 seconds over all servers and the engine-bound ones moved 5 to 10% against each other
    # between runs. A slice keeps at least `frontend_slice_rounds` requests per stream, so the
    # levels where every stream has few requests (256 and 512 here) are cut less or not at all:
    # a slice of one request per stream would measure a burst, not a steady state.
    frontend_slices: int = 4
    frontend_slice_rounds: int = 4
    # vLLM's CPU worker keeps polling its shared-memory queue, a whole core busy, for a second
    # after its last step (`SpinCondition.busy_loop_s`): a slice started at once would share the
    # CPU with the previous server's spinning worker for its first second, a fifth of a slice of
    # one stream here, and whichever server came next would pay for it. Each slice waits first.
    frontend_settle_s: float = 1.5

    def frontend_level(self, concurrency: int) -> tuple[int, int]:
        """Scenario 7 at `concurrency` streams: (requests per slice, slices)."""
        n = max(self.frontend_min_requests, min(self.frontend_rounds * concurrency, self.frontend_max_requests))
        slices = max(1, min(self.frontend_slices, n // (self.frontend_slice_rounds * concurrency)))
        return n // slices, slices

    # scenario 8: ten light users beside one flooder (16x the slots in flight, long answers),
    # and beside a crowd of ten more light users; `fair_seconds` measured after `fair_warmup`
    fair_slots: int = 4
    fair_queue: int = 128
    fair_light_users: int = 10
    fair_flood_factor: int = 16
    fair_light_tokens: int = 16
    fair_flood_tokens: int = 256
    fair_warmup: float = 5.0
    fair_seconds: float = 40.0
    # scenario 9: two replicas of a random-weight model of this width and depth (benchmarks/models.py;
    # the quick plan uses --model), behind each router; `users` conversations at a time, each replica
    # with `kv_tokens` of KV cache (None: what vLLM sizes) and `slots` + `queue` admission. The cache
    # is sized between what the users' conversations need at their last turns when each replica holds
    # half of them (about 5,600 tokens) and when it holds all (about 10,700): a busy server's cache.
    routing_hidden_size: int = 1024
    routing_layers: int = 16
    routing_users: int = 8
    routing_conversations: int = 16
    routing_turns: int = 20
    routing_turn_tokens: int = 16
    routing_system_words: int = 300
    routing_kv_tokens: int | None = 7_168
    routing_slots: int = 4
    routing_queue: int = 4
    routing_failover_turns: int = 8
    # scenario 10: chains through the Responses API's previous_response_id, one after the other
    chain_count: int = 4
    chain_turns: int = 20
    chain_tokens: int = 32
    profile: bool = True
    # A checkout of another gateway version (e.g. `git worktree add /tmp/main main`) that scenarios 2 and 8
    # also measure, in the same run: the figure to compare with (first-come-first-served admission).
    baseline: Path | None = None

    def requests_at(self, concurrency: int, target: str) -> int:
        if target == "original":  # ~300 tokens/s: one wave per level keeps it to about a minute
            return max(4 if not self.quick else 2, concurrency)
        return max(self.min_requests, self.requests_per_user * concurrency)


def quick_plan(model: str, out: Path, scenarios: tuple[int, ...] = SCENARIOS) -> Plan:
    """Under two minutes: one real gateway (sweep + multi-turn), the rest on the zero-cost engine."""
    return Plan(
        model=model,
        out=out,
        quick=True,
        scenarios=scenarios,
        sweep=(1, 4),
        sweep_targets=("gateway-chat_stream", "gateway-openai"),
        max_tokens=16,
        min_requests=4,
        requests_per_user=2,
        overload_slots=2,
        overload_queue=2,
        overload_seconds=3.0,
        storm_streams=40,
        turns=3,
        conversations=2,
        conversation_users=2,
        turn_tokens=8,
        ceiling_passes=2,
        ceiling_requests=40,
        ceiling_tokens=64,
        ceiling_users=16,
        memory_requests=500,
        memory_warmup=50,
        memory_users=16,
        frontend_levels=(1, 4),
        frontend_tokens=16,
        frontend_rounds=2,
        frontend_min_requests=4,
        frontend_slices=2,
        frontend_slice_rounds=1,
        frontend_settle_s=0.0,
        fair_slots=2,
        fair_queue=16,
        fair_light_users=4,
        fair_flood_factor=4,
        fair_light_tokens=4,
        fair_flood_tokens=32,
        fair_warmup=0.5,
        fair_seconds=3.0,
        routing_users=2,
        routing_conversations=2,
        routing_turns=3,
        routing_turn_tokens=8,
        routing_system_words=20,
        routing_kv_tokens=None,
        routing_slots=2,
        routing_queue=2,
        routing_failover_turns=4,
        chain_count=1,
        chain_turns=3,
        chain_tokens=8,
        profile=False,
    )


def full_plan(model: str, out: Path, scenarios: tuple[int, ...] = SCENARIOS) -> Plan:
    return Plan(model=model, out=out, scenarios=scenarios)

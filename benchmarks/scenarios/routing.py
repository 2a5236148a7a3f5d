"""Scenario 9: conversations on two replicas, behind nginx and vLLM's router, affine routing against round-robin.

Many conversations at a time, each `routing_turns` turns long, all opening
with the same long system prompt; the history grows every turn. Through nginx
they use `/chat_stream` (the session cookie and the replica pin); through
vllm-router the OpenAI route with X-Session-ID. Each router runs its deploy/
configuration (affine) and a round-robin one; prefix caching is on everywhere.

What should hold: a turn-20 TTFT with affinity at most half of round-robin's,
because each turn re-reads only what its replica has not cached. Two things
decide how much a replica has not cached. With two replicas and no limit on
the cache, round-robin misses only the turns served elsewhere since the
conversation's last visit (one or two turns of text), and affinity saves
little. A busy server's KV cache holds a bounded number of conversations
(`routing_kv_tokens`): affinity splits the conversations between the
replicas, so each cache holds half of them; round-robin makes every cache
hold all of them, and once they do not fit, a turn finds its history evicted
and prefills all of it. That capacity effect is what affinity buys on a
real cluster, and the scenario sizes the cache to show it (the report says
by how much the conversations outgrow it).

The figure is the mean turn-20 TTFT. With two replicas, round-robin sends
about half of a conversation's turns back to the replica of its previous
turn, where its history is still cached: its median turn is a hit by
construction, and only the mean (or p90) shows the other half, the misses.
The report gives p50 and p90 beside the mean.

Recorded beside it: tokens/s, the engines' own prefix-cache hit rate (their
/metrics counters), turns that moved to the other replica (spill-over) and
what happens when a replica is killed mid-conversation (failover).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator

from benchmarks import peers
from benchmarks.client import (
    ChatStreamTarget,
    Connection,
    OpenAIChatTarget,
    Target,
    loop_lag,
    make_prompt,
    multi_turn,
    read_metrics,
)
from benchmarks.models import benchmark_model
from benchmarks.peers.cluster import Cluster, replicas
from benchmarks.peers.routers import Routing
from benchmarks.plan import Plan
from benchmarks.records import RequestRecord, by_turn, distribution, summarise
from benchmarks.scenarios.checks import at_most, ratio
from benchmarks.scenarios.context import Context, Figures
from gateway.tiny_model import ModelShape

REPLICAS = ["gateway-1", "gateway-2"]
ROUTERS = ("nginx", "vllm-router")
ROUTINGS: tuple[Routing, ...] = ("affine", "round_robin")
SESSION_HEADER = "X-Session-ID"


async def run(ctx: Context) -> None:
    plan = ctx.plan
    shape = ModelShape.scaled(plan.routing_hidden_size, plan.routing_layers)
    model = ctx.model if plan.quick else str(benchmark_model(shape))
    system = make_prompt(0, words=plan.routing_system_words, seed=7)
    figures: Figures = {"model": model, "parameters": None if plan.quick else shape.parameters(), "runs": {}}
    with _cluster(ctx, model, system) as cluster:
        await _warm(cluster, system, model)
        for number, (kind, routing) in enumerate(itertools.product(ROUTERS, ROUTINGS)):
            with cluster.router(kind, routing) as router:
                target = _target(kind, router.url, model, system)
                label = f"{kind} {routing.replace('_', '-')}"
                figures["runs"][label] = await _conversations(ctx, cluster, target, label, seed=number + 1)
        figures["failover"] = await _failover(ctx, cluster, model, system)
    figures["cache_demand_tokens"] = _cache_demand(figures["runs"]["nginx affine"]["by_turn"], plan)
    ctx.figures["9"] = figures
    last = str(plan.routing_turns)
    for kind in ROUTERS:
        affine = figures["runs"][f"{kind} affine"]["by_turn"][last]["ttft_ms"]["mean"]
        round_robin = figures["runs"][f"{kind} round-robin"]["by_turn"][last]["ttft_ms"]["mean"]
        r = ratio(affine, round_robin)
        ctx.check(9, f"turn-{last} TTFT mean, affine / round-robin, {kind}", r, "<= 0.5", at_most(r, 0.5), "x")


@contextlib.contextmanager
def _cluster(ctx: Context, model: str, system: str) -> Iterator[Cluster]:
    plan = ctx.plan
    # Cache blocks of 32 tokens, the CPU kernels' smallest: a turn re-reads at most 31 cached tokens.
    extra = ["--max-model-len", "4096", "--system-prompt", system, "--engine-arg", "block_size=32"]
    if plan.routing_kv_tokens is not None:
        # A replica's cache holds a bounded number of conversations, as a busy server's does.
        extra += ["--engine-arg", f"num_gpu_blocks_override={plan.routing_kv_tokens // 32}"]
    flags = peers.GatewayFlags(
        concurrency=plan.routing_slots,
        queue_size=plan.routing_queue,
        max_new_tokens=plan.routing_turn_tokens,
        extra=extra,
    )
    ctx.ui.note(f"starting {len(REPLICAS)} replicas of {model}")
    with replicas(REPLICAS, model, flags, plan.out / "logs", ctx.env) as cluster:
        yield cluster


async def _warm(cluster: Cluster, system: str, model: str) -> None:
    """One request on each replica first: the system prompt is cached everywhere, for every run alike."""
    for server in cluster.replicas.values():
        target = OpenAIChatTarget("warm", server.url, model, system=system)
        user = target.new_user()
        await target.chat(user, "hello", 4)
        await target.close()


def _target(kind: str, url: str, model: str, system: str) -> Target:
    if kind == "nginx":  # /chat_stream: the replicas' --system-prompt opens each conversation
        return ChatStreamTarget(kind, url)
    return OpenAIChatTarget(kind, url, model, system=system, session_header=SESSION_HEADER)


async def _engine_totals(cluster: Cluster) -> dict[str, float]:
    """The replicas' prefix-cache and refusal counters, summed."""
    totals = {"queries": 0.0, "hits": 0.0, "refused": 0.0}
    for server in cluster.replicas.values():
        conn = Connection(server.url)
        try:
            m = await read_metrics(conn)
        finally:
            conn.close()
        totals["queries"] += m.value("chatstream:engine_prefix_cache_queries_total") or 0.0
        totals["hits"] += m.value("chatstream:engine_prefix_cache_hits_total") or 0.0
        refused = m.by_label("chatstream:rejected_requests_total", "route", reason="too_many_requests")
        totals["refused"] += sum(refused.values())
    return totals


def _moves(records: list[RequestRecord]) -> int:
    """Turns answered by another replica than the conversation's previous turn (spill-over or failover)."""
    moved, last = 0, dict[int, str | None]()
    for r in sorted((r for r in records if r.ok and r.replica), key=lambda r: (r.conversation, r.started)):
        if last.get(r.conversation, r.replica) != r.replica:
            moved += 1
        last[r.conversation] = r.replica
    return moved


async def _conversations(ctx: Context, cluster: Cluster, target: Target, label: str, seed: int) -> Figures:
    plan = ctx.plan
    before = await _engine_totals(cluster)
    total = plan.routing_conversations * plan.routing_turns
    with ctx.ui.step(f"{label}: {plan.routing_conversations} x {plan.routing_turns} turns", total) as advance:
        async with loop_lag() as lags:
            result = await multi_turn(
                target,
                plan.routing_conversations,
                plan.routing_turns,
                plan.routing_users,
                plan.routing_turn_tokens,
                advance,
                seed=seed,
                patience=30.0,
            )
    await target.close()
    after = await _engine_totals(cluster)
    queries = after["queries"] - before["queries"]
    return {
        "summary": summarise(result.records, result.duration),
        "by_turn": by_turn(result.records, plan.routing_turns),
        "prefix_cache_hit_rate": (after["hits"] - before["hits"]) / queries if queries else None,
        "prefix_cache_queried_tokens": queries,
        "refused_by_replicas": after["refused"] - before["refused"],
        "moved_turns": _moves(result.records),
        "conversations_by_first_replica": _first_replicas(result.records),
        "client_loop_lag_ms": distribution(lags),
    }


def _cache_demand(turns: Figures, plan: Plan) -> Figures:
    """About how much KV cache the users' conversations need at their last turn, on one replica.

    The shared part is the first turn's prompt (system prompt and a message);
    each conversation adds what its last prompt has beyond it. "all": every
    conversation on every replica (round-robin); "half": each replica holds half.
    """
    shared = turns["1"]["prompt_tokens"] or 0.0
    own = max(0.0, (turns[str(plan.routing_turns)]["prompt_tokens"] or 0.0) - shared)
    users = plan.routing_users
    return {"all": shared + users * own, "half": shared + users / 2 * own, "per_replica": plan.routing_kv_tokens}


def _first_replicas(records: list[RequestRecord]) -> dict[str, int]:
    firsts: dict[str, int] = {}
    for r in records:
        if r.turn == 1 and r.ok and r.replica:
            firsts[r.replica] = firsts.get(r.replica, 0) + 1
    return firsts


async def _failover(ctx: Context, cluster: Cluster, model: str, system: str) -> Figures:
    """Conversations through both routers at once (affine); one replica is killed while they run.

    Users resend a turn that failed for up to a minute, so a conversation that
    can continue does: the figures say which did, on which replica, and after how long.
    """
    plan = ctx.plan
    victim = REPLICAS[-1]
    users = max(1, plan.routing_users // 2)
    with (
        cluster.router("nginx", "affine", "-failover") as nginx,
        cluster.router("vllm-router", "affine", "-failover") as router,
    ):
        targets = {"nginx": _target("nginx", nginx.url, model, system)}
        targets["vllm-router"] = _target("vllm-router", router.url, model, system)
        loads = {
            kind: asyncio.create_task(
                multi_turn(
                    target, users, plan.routing_failover_turns, users, plan.routing_turn_tokens, seed=100, patience=60.0
                )
            )
            for kind, target in targets.items()
        }
        # A crash with the conversations underway: once the victim has answered about a third of its share.
        killed_at = await _kill_after(cluster, victim, answers=_kill_after_answers(plan))
        results = {kind: await load for kind, load in loads.items()}
        for target in targets.values():
            await target.close()
    figures: Figures = {
        "killed": victim,
        "killed_after_answers": _kill_after_answers(plan),
        "users_per_router": users,
        "turns": plan.routing_failover_turns,
    }
    for kind, result in results.items():
        figures[kind] = _failover_figures(result.records, victim, killed_at, plan.routing_failover_turns)
    return figures


def _kill_after_answers(plan: Plan) -> int:
    """A third of the turns the victim should answer: half of every conversation's turns."""
    return max(1, plan.routing_users * plan.routing_failover_turns // 6)


def _failover_figures(records: list[RequestRecord], victim: str, killed_at: float, turns: int) -> Figures:
    """What the kill did to the conversations that were on the killed replica."""
    hit = {r.conversation for r in records if r.ok and r.replica == victim and r.started < killed_at}
    after = [r for r in records if r.conversation in hit and r.started >= killed_at]
    recovered: dict[int, float] = {}
    for r in sorted(after, key=lambda r: r.started):
        if r.ok and r.conversation not in recovered:
            recovered[r.conversation] = r.ended - killed_at
    finished = {c for c in hit if sum(1 for r in records if r.conversation == c and r.ok) == turns}
    return {
        "conversations_on_killed_replica": len(hit),
        "continued_on_the_other": len({r.conversation for r in after if r.ok and r.replica != victim}),
        "finished_all_turns": len(finished),
        "failed_attempts_after_kill": _attempts([r for r in after if not r.ok]),
        "seconds_to_continue": distribution(list(recovered.values()), scale=1.0),
    }


def _attempts(failed: list[RequestRecord]) -> dict[str, int]:
    """Failed attempts by what the client saw: a status (409 busy, 429/503 refused) or a transport error."""
    kinds: dict[str, int] = {}
    for r in failed:
        kind = str(r.status) if r.error is None and r.status else "cut off or unreachable"
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


async def _kill_after(cluster: Cluster, victim: str, answers: int) -> float:
    """SIGKILL `victim` (and its engine) once it has answered `answers` more turns; the time of the kill."""
    server = cluster.replicas[victim]
    conn = Connection(server.url)

    async def answered() -> float:
        m = await read_metrics(conn)
        return sum(m.by_label("chatstream:requests_total", "state").values())

    try:
        start = await answered()
        async with asyncio.timeout(600):
            while await answered() < start + answers:
                await asyncio.sleep(0.2)
    finally:
        conn.close()
    killed_at = time.perf_counter()
    server.kill()
    return killed_at

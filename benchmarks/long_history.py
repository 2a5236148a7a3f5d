"""Running streams while one client drives a very long conversation: what its turns cost everyone else.

    python -m benchmarks.long_history --model models/tiny --before DIR --out DIR [--turns 1000] [--streams 32]

`--before` is another checkout of this repository (for example `git archive main | tar -x -C DIR`);
the gateway of that tree and the gateway of this one serve the same model in turn, with the
same flags, in one run. In each, `--streams` users stream answers of `--stream-tokens` tokens
in a closed loop while one more client sends `--turns` turns of one conversation (its
answers one token long, so what its turns cost is the gateway's own work: session, prompt
rendering). The streams' inter-token gaps are recorded while that conversation runs; then,
for the noise floor, while the streams run alone for `--alone` seconds.

The figure of issue 13: inter-token latency p99 of the streams, before and after prompts
were rendered off the event loop (with per-message token counts and only the window
rendered). Results go to DIR/long_history.json and a table.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import peers, report
from benchmarks.client import ChatStreamTarget, make_prompt
from benchmarks.records import RequestRecord, distribution
from benchmarks.ui import UI, print_table

HERE = Path(__file__).resolve().parents[1]


def gaps_within(records: list[RequestRecord], start: float, end: float) -> list[float]:
    """The inter-token gaps of `records` that lie wholly inside [start, end]."""
    return [b - a for r in records for a, b in itertools.pairwise(r.chunk_times) if start <= a and b <= end]


async def streams(target: ChatStreamTarget, users: int, tokens: int, stop: asyncio.Event) -> list[RequestRecord]:
    """`users` closed-loop users streaming answers until `stop` is set."""
    records: list[RequestRecord] = []

    async def user_loop(index: int) -> None:
        user = target.new_user()
        n = 0
        while not stop.is_set():
            user.new_conversation()
            records.append(await target.chat(user, make_prompt(index * 100_000 + n), tokens))
            n += 1

    await asyncio.gather(*(user_loop(i) for i in range(users)))
    return records


async def long_conversation(url: str, turns: int, progress: Any) -> list[RequestRecord]:
    """One conversation of `turns` turns, each answered with a single token."""
    target = ChatStreamTarget("long", url)
    user = target.new_user()
    assert user.conn is not None
    response = await user.conn.request("POST", "/set_generation_params", json_body={"max_new_tokens": 1})
    await response.read()
    if response.status != 200:
        raise RuntimeError(f"set_generation_params answered {response.status}")
    turns_done: list[RequestRecord] = []
    for turn in range(turns):
        record = await target.chat(user, make_prompt(turn), 1)
        if not record.ok:
            raise RuntimeError(f"turn {turn + 1} failed: status {record.status}, {record.error}")
        turns_done.append(record)
        progress(1)
    await target.close()
    return turns_done


async def measure(url: str, args: argparse.Namespace, ui: UI, label: str) -> dict[str, Any]:
    target = ChatStreamTarget(label, url)
    stop = asyncio.Event()
    running = asyncio.create_task(streams(target, args.streams, args.stream_tokens, stop))
    await asyncio.sleep(args.warm_up)  # the streams reach their steady state first
    load_start = os.getloadavg()
    with ui.step(f"{label}: {args.turns} turns beside {args.streams} streams", args.turns) as advance:
        started = time.perf_counter()
        turns = await long_conversation(url, args.turns, advance)
        ended = time.perf_counter()
    await asyncio.sleep(args.alone)
    stop.set()
    records = await running
    await target.close()
    alone_end = time.perf_counter()
    busy = gaps_within(records, started, ended)
    alone = gaps_within(records, ended + 1.0, alone_end)
    return {
        "load_average_before": load_start,
        "long_conversation_s": ended - started,
        "long_turn_ttft_ms": distribution([t.ttft for t in turns if t.ttft is not None]),
        "last_100_turns_ttft_ms": distribution([t.ttft for t in turns[-100:] if t.ttft is not None]),
        "itl_ms_beside_long_conversation": distribution(busy),
        "itl_ms_streams_alone": distribution(alone),
        "gaps": {"beside": len(busy), "alone": len(alone)},
        "stream_requests": len(records),
        "stream_errors": sum(1 for r in records if r.error),
    }


def gateway_command(model: str, flags: peers.GatewayFlags, max_model_len: int, history: int) -> list[str]:
    extra = ["--max-model-len", str(max_model_len), "--max-history-messages", str(history)]
    return [*peers.gateway_command(model, flags), *extra]


async def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    trees = {"before": Path(args.before).resolve(), "after": HERE}
    results: dict[str, Any] = {
        "environment": report.environment(),
        "load_average_start": list(os.getloadavg()),
        "args": {k: str(v) for k, v in vars(args).items()},
        "trees": {k: str(v) for k, v in trees.items()},
        "runs": {},
    }
    model = str(Path(args.model).resolve())
    # Rounds alternate the trees (before, after, after, before, ...): a machine whose load drifts
    # during the run weighs on both alike.
    order = [label for i in range(args.rounds) for label in (list(trees) if i % 2 == 0 else list(trees)[::-1])]
    with UI(enabled=not args.no_progress) as ui:
        for i, label in enumerate(order):
            tree = trees[label]
            name = f"{label}-{i // 2 + 1}" if args.rounds > 1 else label
            flags = peers.GatewayFlags(concurrency=args.streams + 8, max_new_tokens=args.stream_tokens)
            command = gateway_command(model, flags, args.max_model_len, 2 * args.turns + 2)
            env = {**peers.peer_env(), "PYTHONPATH": str(tree)}
            with peers.running(f"gateway-{name}", command, flags.port, out / "logs", env, cwd=tree) as server:
                ui.note(f"{name}: {tree} at {server.url}")
                results["runs"][name] = await measure(server.url, args, ui, name)
    results["load_average_end"] = list(os.getloadavg())
    (out / "long_history.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = []
    for label, r in results["runs"].items():
        beside, alone = r["itl_ms_beside_long_conversation"], r["itl_ms_streams_alone"]
        rows.append(
            [
                label,
                f"{r['long_conversation_s']:.0f}",
                f"{r['last_100_turns_ttft_ms']['p50'] or 0:.0f}",
                f"{beside['p50'] or 0:.1f}",
                f"{beside['p99'] or 0:.1f}",
                f"{beside['max'] or 0:.0f}",
                f"{alone['p99'] or 0:.1f}",
                " ".join(f"{x:.2f}" for x in r["load_average_before"]),
            ]
        )
    columns = ["tree", "long conv. s", "TTFT p50 last 100", "ITL p50", "ITL p99", "ITL max", "alone p99", "load avg"]
    print_table(f"{args.streams} streams beside a {args.turns}-turn conversation (ms)", columns, rows)
    print(f"results in {out / 'long_history.json'}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/tiny", help="model directory")
    parser.add_argument("--before", required=True, help="another checkout of this repository, to compare with")
    parser.add_argument("--out", required=True, help="directory for long_history.json and the servers' logs")
    parser.add_argument("--turns", type=int, default=1000, help="turns of the long conversation [1000]")
    parser.add_argument("--streams", type=int, default=32, help="users streaming meanwhile [32]")
    parser.add_argument("--stream-tokens", type=int, default=128, help="tokens per streamed answer [128]")
    parser.add_argument("--max-model-len", type=int, default=1024, help="context length served [1024]")
    parser.add_argument("--warm-up", type=float, default=5.0, help="seconds the streams run first [5]")
    parser.add_argument("--alone", type=float, default=15.0, help="seconds the streams run alone after [15]")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each tree, alternating [1]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())

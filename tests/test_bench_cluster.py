"""The cluster section of the benchmark (bench/cluster.py, bench/cluster_report.py): issue 13's figures.

The pure parts — reading nginx's log, the costs, the targets, the report — on made-up
results; one slow test runs the whole section once with a tiny plan against the real parts.
No test asserts a timing: only that figures are there and add up.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import cluster  # noqa: E402
import cluster_report  # noqa: E402
import targets  # noqa: E402


def _row(topology: str, tps: float) -> dict[str, Any]:
    return {
        "topology": topology,
        "loadgen": {
            "tokens_per_s": tps,
            "latency_ms": {"p50": 10.0, "p90": 20.0, "p99": 40.0},
            "errors": {},
            "error_count": 0,
        },
        "cores_busy": {"replicas": 1.2, "nginx": 0.1, "redis": 0.05, "loadgen": 0.3},
        "redis_commands_per_token": 0.5 if "sync" in topology or "async" in topology else None,
    }


def _cluster(sync: float = 2500.0, async_: float = 3100.0, lost: int = 0) -> dict[str, Any]:
    rows = [_row("direct", 4000.0), _row("nginx-off", 3200.0), _row("nginx-async", async_), _row("nginx-sync", sync)]
    rounds = [
        {
            "failover_s": s,
            "attempts": 2,
            "failed_codes": {"UNAVAILABLE": 1},
            "killed": "127.0.0.1:1",
            "taken_over_by": "127.0.0.1:2",
            "acked_before_kill": 8,
            "position_after": 9,
            "expected_position_after": 9,
            "applied_unanswered": 0,
            "lost_acked_tokens": lost if i == 0 else 0,
            "restart_s": 10.0,
        }
        for i, s in enumerate((0.2, 0.3, 0.25))
    ]
    failover = {"rounds": rounds, "background_sessions": 8, "background": {"tokens_per_s": 1000.0, "errors": {}}}
    failover.update(cluster.summarize_failover(rounds))
    return {"plan": {"sessions": 64, "channels": 8}, "rows": rows, "failover": failover, "costs": cluster.costs(rows)}


def test_costs_are_against_the_store_off_row_of_the_same_topology() -> None:
    costs = _cluster()["costs"]
    assert costs["sync"] == round(1 - 2500 / 3200, 3)
    assert costs["async"] == round(1 - 3100 / 3200, 3)
    assert costs["nginx_vs_direct"] == round(3200 / 4000, 3)
    assert cluster.costs([]) == {"async": None, "sync": None, "nginx_vs_direct": None}


def test_the_targets_judge_each_goal_of_issue_13() -> None:
    found = {t.name: t for t in targets.cluster_targets(_cluster())}
    assert found["Cluster: sync durability cost (issue 13)"].status == "PASS"  # 22 % ≤ 30 %
    assert found["Cluster: async durability cost (issue 13)"].status == "PASS"  # 3 % ≤ 10 %
    assert found["Cluster: failover p99 (issue 13)"].status == "PASS"
    assert found["Cluster: lost acknowledged tokens (issue 13)"].status == "PASS"
    missed = {t.name: t.status for t in targets.cluster_targets(_cluster(sync=1600.0, async_=2500.0, lost=1))}
    assert set(missed.values()) == {"MISS", "PASS"}
    assert missed["Cluster: sync durability cost (issue 13)"] == "MISS"
    assert missed["Cluster: async durability cost (issue 13)"] == "MISS"
    assert missed["Cluster: lost acknowledged tokens (issue 13)"] == "MISS"
    assert {t.status for t in targets.cluster_targets(None)} == {"n/a"}
    assert "2 cores" in found["Cluster: sync durability cost (issue 13)"].measured


def test_a_failover_round_that_never_recovered_misses_the_goal() -> None:
    data = _cluster()
    data["failover"]["rounds"].append({"error": "RuntimeError: no answer 30 s after the kill"})
    data["failover"].update(cluster.summarize_failover(data["failover"]["rounds"]))
    failover = next(t for t in targets.cluster_targets(data) if t.name.startswith("Cluster: failover"))
    assert failover.status == "MISS" and "1 round(s) did not recover" in failover.measured


def test_rounds_alternate_their_order_and_the_costs_are_ratios_of_medians(tmp_path: Path) -> None:
    plan = cluster.ClusterPlan(
        sessions=64, channels=8, warmup=1, duration=1, kills=1, failover_load=1, probe_tokens=1, rounds=2
    )
    labels = [label for label, _ in cluster.steps(plan, tmp_path)]
    assert labels == [
        "cluster direct C=64 (round 1)",
        "cluster nginx-off C=64 (round 1)",
        "cluster nginx-async C=64 (round 1)",
        "cluster nginx-sync C=64 (round 1)",
        "cluster nginx-sync C=64 (round 2)",
        "cluster nginx-async C=64 (round 2)",
        "cluster nginx-off C=64 (round 2)",
        "cluster failover ×1",
    ]
    rows = [
        _row("nginx-off", 3000.0),
        _row("nginx-off", 3400.0),
        _row("nginx-sync", 2000.0),
        _row("nginx-sync", 2800.0),
    ]
    assert targets.median_tps(rows, "nginx-off") == 3200.0
    assert cluster.costs(rows)["sync"] == round(1 - 2400 / 3200, 3)
    assert targets.median_tps(rows, "direct") is None


def test_percentiles_are_nearest_rank() -> None:
    assert cluster.percentile([0.3, 0.1, 0.2], 50) == 0.2
    assert cluster.percentile([float(i) for i in range(1, 11)], 99) == 10.0
    assert cluster.percentile([], 99) is None


def test_the_holder_is_the_last_upstream_nginx_logged_for_the_session(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(
        '127.0.0.1 [30/Nov/2026:16:00:00 +0000] "POST /seqpredict.v1.SequencePredictor/Predict HTTP/2.0" 200 '
        "grpc-status=0 session=probe-1 upstream=127.0.0.1:1001 upstream_status=200 time=0.001\n"
        '127.0.0.1 [30/Nov/2026:16:00:01 +0000] "POST /seqpredict.v1.SequencePredictor/Predict HTTP/2.0" 200 '
        "grpc-status=0 session=probe-10 upstream=127.0.0.1:1009 upstream_status=200 time=0.001\n"
        '127.0.0.1 [30/Nov/2026:16:00:02 +0000] "POST /seqpredict.v1.SequencePredictor/Predict HTTP/2.0" 200 '
        "grpc-status=0 session=probe-1 upstream=127.0.0.1:1001, 127.0.0.1:1002 upstream_status=502, 200 "
        "time=0.003\n"
    )
    assert cluster.holder_address(log, "probe-1") == "127.0.0.1:1002"
    assert cluster.holder_address(log, "probe-10") == "127.0.0.1:1009"
    assert cluster.holder_address(log, "probe-2") is None
    assert cluster.holder_address(tmp_path / "missing.log", "probe-1") is None


def test_the_section_renders_whole_and_partial_results() -> None:
    text = "\n".join(cluster_report.section(_cluster()))
    assert "## Many replicas (issue 13)" in text and "### Failover" in text
    assert "2 cores" in text
    assert "| 3 via nginx, Redis, durability sync | 1 | 2,500 | 0.78× |" in text
    assert "sync durability costs **22%**" in text
    partial = {"plan": {}, "rows": [{"step": "cluster nginx-sync C=64", "error": "not installed: nginx"}]}
    partial_text = "\n".join(cluster_report.section(partial))
    assert "failed: not installed: nginx" in partial_text and "Not measured in this run." in partial_text
    assert cluster_report.section(None)[-2] == "Not measured in this run."


def test_the_sections_plans_and_the_estimate() -> None:
    assert cluster.FULL.kills >= 10  # the issue's "repeated kills": p99 over at least ten
    assert cluster.SHORT.sessions == cluster.FULL.sessions == 64
    assert cluster.estimate_seconds(cluster.FULL) < 10 * 60
    assert cluster.estimate_seconds(cluster.SHORT) < 4 * 60


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_whole_section_runs_against_the_real_parts(tmp_path: Path) -> None:
    missing = cluster.missing_parts()
    if missing:
        pytest.skip(f"skipped, because {', '.join(missing)} is not installed (make system-deps)")
    plan = cluster.ClusterPlan(
        sessions=8, channels=2, warmup=0.5, duration=1.0, kills=1, failover_load=2, probe_tokens=2
    )
    results = cluster.run_all(plan, tmp_path)
    for row in results["rows"]:
        assert "error" not in row, row
        assert row["loadgen"]["tokens_per_s"] > 0 and row["loadgen"]["error_count"] == 0
    assert results["costs"]["sync"] is not None and results["costs"]["async"] is not None
    failover = results["failover"]
    assert failover["samples"] == 1 and failover["failed_rounds"] == 0, failover
    assert failover["lost_acked_tokens"] == 0
    (only,) = failover["rounds"]
    assert only["position_after"] == only["expected_position_after"] >= only["acked_before_kill"] + 1
    assert only["killed"] != only["taken_over_by"]

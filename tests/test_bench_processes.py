"""The benchmark's per-process arithmetic: naming the server's processes, CPU over a window, the scaling
model, the targets of the process split, and the plan's shape and length.

Pure functions over made-up figures, plus one end-to-end run of the session-operations stage
against a real server; nothing here asserts how fast anything is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import cpu  # noqa: E402
import plan  # noqa: E402
import procs  # noqa: E402
import report  # noqa: E402
import report_processes  # noqa: E402
import scaling  # noqa: E402
import targets  # noqa: E402

# -- which process is which -----------------------------------------------------------------------------


SUPERVISOR_LOG = """\
2026-11-30 15:29:12,202 INFO [supervisor] seqpredict.server.supervisor: engine process ready (pid 27661)
2026-11-30 15:29:13,093 INFO [supervisor] seqpredict.server.supervisor: frontend 1 ready (pid 27666)
2026-11-30 15:29:13,977 INFO [supervisor] seqpredict.server.supervisor: frontend 2 ready (pid 27678)
2026-11-30 15:31:00,000 ERROR [supervisor] seqpredict.server.supervisor: frontend 2 exited (status -9): \
starting it again
2026-11-30 15:31:00,900 INFO [supervisor] seqpredict.server.supervisor: frontend 2 ready (pid 30001)
"""


def test_the_supervisor_log_names_every_process_and_a_restarted_frontend_by_its_new_pid() -> None:
    roles = procs.process_roles(SUPERVISOR_LOG, 27657, "server")
    assert roles == {"supervisor": 27657, "engine": 27661, "frontend-1": 27666, "frontend-2": 30001}


def test_a_server_of_one_process_is_one_role() -> None:
    one_process = "2026-11-30 15:29:11,259 INFO seqpredict.server.app: serving seqpredict.v1.SequencePredictor\n"
    assert procs.process_roles(one_process, 42, "server") == {"server": 42}
    assert procs.process_roles("", 7, "echo") == {"echo": 7}


# -- CPU over the measured window -----------------------------------------------------------------------


def test_cpu_seconds_are_read_past_a_command_name_with_spaces_and_parentheses() -> None:
    ticks = cpu.CLOCK_TICKS
    stat = f"4242 (python (x) y) R 17 4242 17 0 -1 4194560 1 2 3 4 {3 * ticks} {ticks} 7 3 20 0 40 0 100 1 2\n"
    assert cpu.parse_cpu_seconds(stat) == 4.0


def test_threads_are_grouped_by_what_they_do() -> None:
    assert cpu.thread_group(10, 10, "python") == "main"
    assert cpu.thread_group(10, 11, "ZMQbg/IO/0") == "zmq"
    assert cpu.thread_group(10, 12, "event_engine") == "grpc"
    assert cpu.thread_group(10, 13, "grpc_global_tim") == "grpc"
    assert cpu.thread_group(10, 14, "python") == "other"


def _samples() -> list[cpu.Sample]:
    # engine: 0.5 CPU-s per second throughout; frontend-1 starts at t=1 (not there at 0);
    # loadgen exits before t=3.
    return [
        cpu.Sample(0.0, {"engine": 10.0, "loadgen": 0.0}),
        cpu.Sample(1.0, {"engine": 10.5, "frontend-1": 2.0, "loadgen": 0.4}),
        cpu.Sample(2.0, {"engine": 11.0, "frontend-1": 2.8, "loadgen": 0.8}),
        cpu.Sample(3.0, {"engine": 11.5, "frontend-1": 3.6}),
    ]


def test_the_window_takes_each_process_s_share_by_interpolation_and_leaves_out_the_partly_seen() -> None:
    window = cpu.cpu_in_window(_samples(), 0.5, 2.5)
    assert window["engine"] == pytest.approx(1.0)
    assert "frontend-1" not in window, "not sampled at the window's start: unknown, not guessed"
    assert "loadgen" not in window, "gone before the window's end"
    assert cpu.cpu_in_window(_samples(), 1.0, 3.0) == pytest.approx({"engine": 1.0, "frontend-1": 1.6})


def test_cpu_per_token_sums_the_frontends_and_keeps_threads_apart() -> None:
    window = {
        "engine": 0.5,
        "frontend-1": 0.3,
        "frontend-2": 0.2,
        "supervisor": 0.0,
        "engine:main": 0.4,
        "engine:zmq": 0.1,
        "frontend-1:zmq": 0.05,
        "frontend-2:zmq": 0.05,
    }
    assert cpu.us_per_token(window, 10_000) == {"engine": 50.0, "frontend": 50.0, "supervisor": 0.0}
    assert cpu.threads_us_per_token(window, 10_000) == {"engine:main": 40.0, "engine:zmq": 10.0, "frontend:zmq": 10.0}
    assert cpu.cores_busy(window, 2.0) == {"engine": 0.25, "frontend": 0.25, "supervisor": 0.0}
    assert cpu.us_per_token(window, 0) == {}


# -- the scaling model ----------------------------------------------------------------------------------


def test_frontend_shares_are_of_whole_frontends_not_of_their_threads() -> None:
    run = {
        "window_cpu_s": {
            "engine": 5.0,
            "frontend-1": 3.0,
            "frontend-1:main": 2.0,
            "frontend-1:grpc": 1.0,
            "frontend-2": 1.0,
            "frontend-2:main": 1.0,
        }
    }
    assert report_processes._balance(run) == "75% / 25%"
    assert report_processes._balance({"window_cpu_s": {"frontend-1": 3.0, "frontend-1:main": 3.0}}) == ""


def test_the_engine_process_bounds_throughput_once_enough_frontends_feed_it() -> None:
    costs = scaling.Costs(engine=50.0, frontend=100.0)
    one = scaling.predict(costs, cores=8, frontends=1)
    assert (one.tokens_per_s, one.bottleneck) == (10_000.0, "frontends")
    two = scaling.predict(costs, cores=8, frontends=2)
    assert (two.tokens_per_s, two.bottleneck) == (20_000.0, "engine process"), "tie: the process is named"
    best = scaling.recommend(costs, cores=16)
    assert (best.frontends, best.tokens_per_s, best.bottleneck) == (2, 20_000.0, "engine process")
    assert scaling.frontends_to_saturate_engine(costs) == 2


def test_on_few_cores_the_cores_are_the_bottleneck_and_clients_on_the_box_count() -> None:
    costs = scaling.Costs(engine=50.0, frontend=100.0, client=50.0)
    p = scaling.predict(costs, cores=2, frontends=2)
    assert p.bottleneck == "cores" and p.tokens_per_s == pytest.approx(2e6 / 200)
    # the form: (cores - engine share - client share) / frontend cost gives the same figure
    share = p.tokens_per_s / 1e6
    assert (2 - share * 50 - share * 50) / (100 / 1e6) == pytest.approx(p.tokens_per_s)
    assert scaling.recommend(costs, cores=2).frontends == 1, "one core is the engine's: one frontend at most"
    with pytest.raises(ValueError):
        scaling.predict(scaling.Costs(0.0, 1.0), cores=2, frontends=1)


# -- the targets of the process split -------------------------------------------------------------------


def _run(system: str, c: int, tokens_per_s: float, p50_ms: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {
        "system": system,
        "mode": "pingpong",
        "sessions": c,
        "channels": min(c, 8),
        "loadgen": {
            "tokens_per_s": tokens_per_s,
            "messages_per_s": tokens_per_s,
            "latency_ms": {"p50": p50_ms, "p90": p50_ms * 1.5, "p99": p50_ms * 3},
            "error_count": 0,
        },
        **extra,
    }


def _results() -> dict[str, Any]:
    default_roles = {"supervisor": 1, "engine": 2, "frontend-1": 3, "frontend-2": 4}
    return {
        "servers": {"ours": {"roles": default_roles}},
        "runs": [
            _run("echo", 1, 5000.0, 0.2),
            _run(
                "ours",
                1,
                1100.0,
                0.84,
                roles=default_roles,
                cpu_us_per_token={"engine": 370.0, "frontend": 350.0, "supervisor": 0.0, "loadgen": 300.0},
                thread_us_per_token={"engine:zmq": 40.0, "frontend:zmq": 30.0, "engine:main": 300.0},
            ),
            _run("ours-f0", 1, 1400.0, 0.70, roles={"server": 9}, cpu_us_per_token={"server": 560.0}),
            _run("ours", 64, 8300.0, roles=default_roles),
            _run("ours", 64, 1.0, roles=default_roles, one_connection=True),
            _run("ours-f0", 64, 7300.0),
            _run("ours-f1", 64, 7600.0),
            _run("ours", 256, 6000.0, roles=default_roles),
            _run("ours-f0", 256, 6100.0),
            _run("ours-f1", 256, 8100.0),
        ],
        "inprocess": {
            "single": [
                {
                    "sessions": 1,
                    "tokens_per_s": 10_000.0,
                    "us_per_token": 100.0,
                    "step_ms": {"p50": 0.1, "p90": 0.12, "p99": 0.2},
                }
            ]
        },
    }


def test_the_default_shape_passes_when_within_tolerance_of_the_best_and_names_the_best_otherwise() -> None:
    found = {t.name: t for t in targets.evaluate(_results())}
    at64, at256 = found["Default process shape at C=64"], found["Default process shape at C=256"]
    assert at64.status == "PASS" and at64.ratio == 1.0
    assert at64.measured == (
        "--frontends 0 7300, --frontends 1 7600, default (--frontends 2) 8300 tokens/s (best: default) → 1.00×"
    )
    assert at256.status == "MISS" and at256.ratio == round(6000 / 8100, 3)
    assert "(best: --frontends 1)" in at256.measured


def test_one_connection_and_profiled_runs_never_stand_for_the_main_row() -> None:
    results = _results()
    assert targets.find_run(results, "ours", "pingpong", 64)["loadgen"]["tokens_per_s"] == 8300.0
    results["runs"] = [r for r in results["runs"] if not (r["system"] == "ours" and r["sessions"] == 64)]
    results["runs"].append(_run("ours", 64, 1.0, profiled=True))
    assert targets.find_run(results, "ours", "pingpong", 64) is None


def test_the_latency_target_states_what_the_ipc_hop_costs_and_what_buys_it_back() -> None:
    latency = next(t for t in targets.evaluate(_results()) if t.name == "C=1 p50 latency")
    assert latency.status == "MISS"  # 0.84 > 0.2 + 1.5 × 0.1
    assert "the IPC hop: p50 +0.140 ms against --frontends 0 (0.700 ms)" in latency.measured
    assert "engine 370, frontend 350, supervisor 0 vs one process server 560" in latency.measured
    assert "ZeroMQ's I/O threads 70" in latency.measured
    assert f"bought back at C=64: {8300 / 7300:.2f}×" in latency.measured


def test_peer_goals_come_from_the_latest_peers_run_and_say_so() -> None:
    assert [t.status for t in targets.peer_targets(None)] == ["n/a"]
    peers = {
        "mode": "full",
        "machine": {"date": "2026-11-28T10:00:00+00:00"},
        "goals": [
            {"name": "single-token throughput at C=64", "rule": "≥ 2× TorchServe", "ratio": 2.5, "status": "PASS"},
            {"name": "one-session p50 latency", "rule": "≤ 1/5", "ratio": None, "status": "n/a"},
        ],
    }
    shown = targets.peer_targets(peers)
    assert [(t.status, t.ratio) for t in shown] == [("PASS", 2.5), ("n/a", None)]
    assert "make bench-peers, full run of 2026-11-28" in shown[0].measured


def test_the_report_renders_every_new_section_from_partial_results() -> None:
    results = {
        **_results(),
        "mode": "short",
        "config": {"warmup": 1.0, "duration": 2.0, "chunk": 1024, "max_tokens": 128, "per_message": 64},
        "machine": {
            "date": "2026-11-30",
            "cpu_model": "AMD EPYC",
            "cores": 2,
            "kernel": "Linux",
            "python": "3.11",
            "torch": "2.13.0",
            "grpcio": "1.85",
            "protobuf": "7",
            "git": "abc",
        },
    }
    text = report.render(results, targets.evaluate(results), "bench.png")
    for heading in ("Process shapes", "CPU per token, per process", "Scaling model", "Session operations"):
        assert f"## {heading}" in text
    assert "**ours** (default: --frontends 2)" in text
    assert "| 64 | **ours** (default: --frontends 2), 1 connection | 8 |" in text
    assert "## Process shapes: --frontends 0, --frontends 1, default" in text
    assert "| 64 | — | 7,300 | 7,600 | 8,300 | 1.04× | 1.14× |" in text


# -- the plan -------------------------------------------------------------------------------------------


def test_every_ping_pong_level_runs_echo_and_the_three_shapes_on_the_same_connections() -> None:
    for p in (plan.FULL, plan.SHORT):
        runs = [r for r in plan.load_runs(p, profile=False) if r.mode == "pingpong" and r.main]
        for c in p.pingpong:
            level = {r.system: r.channels for r in runs if r.sessions == c}
            assert {"echo", "ours", "ours-f0", "ours-f1"} <= set(level)
            assert set(level.values()) == {min(c, plan.MAX_CHANNELS)}
    assert any(r.one_connection and r.channels == 1 for r in plan.load_runs(plan.FULL, profile=False))


def test_the_one_frontend_shape_joins_the_multiplexed_loads_that_spread_over_connections() -> None:
    for p in (plan.FULL, plan.SHORT):
        runs = [r for r in plan.load_runs(p, profile=False) if r.mode == "multiplexed"]
        for c in p.multiplexed:
            systems = {r.system for r in runs if r.sessions == c}
            assert ("ours-f1" in systems) == (plan.streams(p, "multiplexed", c) > 1)
            assert {"ours", "ours-f0"} <= systems


def test_the_full_plan_fits_in_twenty_minutes_and_the_short_one_in_a_few() -> None:
    assert plan.estimate_seconds(plan.FULL, profile=True) < 20 * 60
    assert plan.estimate_seconds(plan.SHORT, profile=True) < 4 * 60


# -- the session-operations stage, end to end -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_session_operations_are_timed_without_errors_against_our_server(server: RunningServer) -> None:
    argv = [sys.executable, str(BENCH / "session_ops.py"), "--target", server.address]
    argv += ["--sessions", "2", "--rounds", "1", "--history", "16", "--no-engine"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rpc = json.loads(done.stdout.strip().splitlines()[-1])["rpc"]
    assert rpc["errors"] == {}
    assert {op: f["count"] for op, f in rpc["operations"].items()} == dict.fromkeys(
        ("predict", "get", "fork", "export", "import"), 2
    )
    assert rpc["blob_bytes"] > 4096, "the state of the shipped model and its description"

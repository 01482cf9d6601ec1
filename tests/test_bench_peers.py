"""The pure helpers of `make bench-peers`: /proc parsing, TorchServe's model config, medians and the goal.

The peer benchmark itself needs TorchServe and minutes of load and is run by hand; these
keep the arithmetic it reports from rotting in between. No process is started.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"
PEERS = BENCH / "peers"
sys.path[:0] = [str(PEERS), str(BENCH)]

import proctree  # noqa: E402
import rounds  # noqa: E402
import tsconfig  # noqa: E402


def test_parse_stat_reads_past_a_command_name_with_spaces_and_parentheses() -> None:
    text = "4242 (java (main) x) S 17 4242 17 0 -1 4194560 1 2 3 4 150 25 7 3 20 0 40 0 100 1 2\n"
    stat = proctree.parse_stat(text)
    assert (stat.pid, stat.ppid, stat.utime, stat.stime, stat.cutime, stat.cstime) == (4242, 17, 150, 25, 7, 3)
    assert stat.ticks == 185


def test_descendants_walks_the_whole_tree_and_nothing_else() -> None:
    def s(pid: int, ppid: int) -> proctree.Stat:
        return proctree.Stat(pid, ppid, 1, 1, 0, 0)

    stats = [s(1, 0), s(10, 1), s(11, 10), s(12, 10), s(13, 12), s(20, 1)]
    assert sorted(x.pid for x in proctree.descendants(10, stats)) == [10, 11, 12, 13]
    assert proctree.descendants(99, stats) == []


def test_model_config_follows_the_documented_capacity_rule() -> None:
    settings = tsconfig.TorchServeSettings(workers=2)
    for sessions in (1, 16, 63, 256):
        config = settings.model_config(sessions)
        assert config["maxWorkers"] * config["batchSize"] >= sessions  # "maxWorkers * batchSize sequences"
        assert config["maxNumSequence"] >= sessions
        assert config["sequenceBatching"] is True


def test_to_yaml_nests_and_lowercases_booleans() -> None:
    text = tsconfig.to_yaml({"batchSize": 4, "sequenceBatching": True, "handler": {"cache": {"capacity": 8}}})
    assert text == "batchSize: 4\nsequenceBatching: true\nhandler:\n  cache:\n    capacity: 8\n"


def _run(system: str, c: int, tps: float, p50: float, checked: int = 0) -> dict:
    verified = {"checked": checked, "wrong": 0} if system == "torchserve" else None
    latency = {"p50": p50, "p99": p50 * 3}
    loadgen = {"tokens_per_s": tps, "latency_ms": latency, "error_count": 0, "verified": verified}
    return {"system": system, "sessions": c, "loadgen": loadgen, "server_cpu_us_per_token": 100.0}


def test_medians_and_goal_verdicts() -> None:
    runs = [
        *(_run("ours", 1, t, p) for t, p in ((900, 1.0), (1000, 1.1), (950, 0.9))),
        *(_run("torchserve", 1, t, p, 10) for t, p in ((120, 7.0), (130, 8.0), (125, 6.0))),
        *(_run("ours", 64, t, 10.0) for t in (4000, 4200, 4100)),
        *(_run("torchserve", 64, t, 20.0, 5) for t in (1900, 2000, 2100)),
        {"system": "torchserve", "sessions": 64, "error": "boom"},
    ]
    table = rounds.medians(runs)
    assert table["ours"][1]["tokens_per_s"] == 950 and table["ours"][1]["p50_ms"] == 1.0
    assert table["torchserve"][64]["rounds"] == 3 and table["torchserve"][64]["failed_rounds"] == 1
    assert table["torchserve"][1]["checked"] == 30
    goals = {g.name: g for g in rounds.evaluate(table)}
    assert goals["single-token throughput at C=64"].status == "PASS"  # 4100 / 2000 = 2.05
    assert goals["single-token throughput at C=16"].status == "n/a"  # not measured
    latency = goals["one-session p50 latency"]
    assert latency.ratio == 7.0 and latency.status == "PASS"

"""The peer benchmark's plan, and what its rounds add up to: medians per system and C, and the goal.

The goal is the performance issue's, measured against TorchServe in the same run: at least 2×
its single-token throughput at 16, 64 and 256 sessions, and a one-session p50 at most a fifth
of its. Every figure is the median of the rounds (each server started fresh per round), so one
noisy round on a shared 2-core machine cannot decide a PASS or a MISS.

Pure functions over the run records that run.py collects; no processes here.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

SYSTEMS = ("ours", "torchserve")
THROUGHPUT_GOAL = 2.0  # ours / TorchServe tokens/s at each of THROUGHPUT_LEVELS
THROUGHPUT_LEVELS = (16, 64, 256)
LATENCY_GOAL = 5.0  # TorchServe p50 / ours p50 at one session


@dataclass(frozen=True)
class PeersPlan:
    name: str
    sessions: tuple[int, ...]  # C values, single tokens ping-pong
    rounds: int  # alternating rounds per C: ours, TorchServe, ours, TorchServe, ...
    warmup: float  # seconds before the window, for both
    duration: float  # the measured window, for both
    verify_sessions: int = 4  # TorchServe sessions whose every answer is checked against the reference

    def steps(self) -> list[tuple[int, int, str]]:
        """(C, round, system) in the order they run."""
        return [(c, r, s) for c in self.sessions for r in range(1, self.rounds + 1) for s in SYSTEMS]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The measurement: three rounds, the same 20 s window for both (3 s warm-up, like make bench).
FULL = PeersPlan("full", (1, 16, 64, 256), 3, 3.0, 20.0)
# A quick check that everything starts, answers correctly and stops (about two minutes).
SHORT = PeersPlan("short", (1, 64), 1, 1.0, 3.0)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 4) if present else None


def medians(runs: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """{system: {C: median figures over its successful rounds, with the round count and errors}}."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for system in SYSTEMS:
        for c in sorted({r["sessions"] for r in runs}):
            mine = [r for r in runs if r["system"] == system and r["sessions"] == c]
            ok = [r for r in mine if r.get("loadgen")]
            if not mine:
                continue
            lat = [r["loadgen"]["latency_ms"] for r in ok]
            verified = [r["loadgen"].get("verified") or {} for r in ok]
            out.setdefault(system, {})[c] = {
                "rounds": len(ok),
                "failed_rounds": len(mine) - len(ok),
                "tokens_per_s": _median([r["loadgen"]["tokens_per_s"] for r in ok]),
                "p50_ms": _median([x["p50"] for x in lat]),
                "p99_ms": _median([x["p99"] for x in lat]),
                "server_cpu_us_per_token": _median([r.get("server_cpu_us_per_token") for r in ok]),
                "errors": sum(r["loadgen"]["error_count"] for r in ok),
                "checked": sum(v.get("checked", 0) for v in verified),
                "wrong": sum(v.get("wrong", 0) for v in verified),
            }
    return out


@dataclass(frozen=True)
class Goal:
    name: str
    rule: str
    ours: float | None
    theirs: float | None
    ratio: float | None
    status: str  # PASS, MISS or n/a (not measured in this run)


def evaluate(table: dict[str, dict[int, dict[str, Any]]]) -> list[Goal]:
    ours, theirs = table.get("ours", {}), table.get("torchserve", {})
    goals = []
    for c in THROUGHPUT_LEVELS:
        a = (ours.get(c) or {}).get("tokens_per_s")
        b = (theirs.get(c) or {}).get("tokens_per_s")
        ratio = a / b if a and b else None
        goals.append(_goal(f"single-token throughput at C={c}", f"≥ {THROUGHPUT_GOAL:g}× TorchServe", a, b, ratio))
    a = (ours.get(1) or {}).get("p50_ms")
    b = (theirs.get(1) or {}).get("p50_ms")
    ratio = b / a if a and b else None  # how many times lower ours is
    goals.append(_goal("one-session p50 latency", f"≤ 1/{LATENCY_GOAL:g} of TorchServe's", a, b, ratio))
    return goals


def _goal(name: str, rule: str, ours: float | None, theirs: float | None, ratio: float | None) -> Goal:
    bound = LATENCY_GOAL if "latency" in name else THROUGHPUT_GOAL
    status = "n/a" if ratio is None else ("PASS" if ratio >= bound else "MISS")
    return Goal(name, rule, ours, theirs, round(ratio, 3) if ratio is not None else None, status)

"""What a benchmark run measures: the full plan is issue 4's list, the short one fits in two minutes."""

from __future__ import annotations

from dataclasses import dataclass

SYSTEMS = ("echo", "ours", "unbatched")


@dataclass(frozen=True)
class Plan:
    name: str
    pingpong: tuple[int, ...]  # C values, single tokens, against all three servers
    prefill: tuple[int, ...]  # C values, chunks of `chunk` tokens, ours only
    generate: tuple[int, ...]  # C values, Generate calls of `max_tokens`, ours only
    multiplexed: tuple[int, ...]  # C values, `per_message` sessions per PredictMany message
    echo_multiplexed: bool  # the echo ceiling under the multiplexed shape too
    warmup: float  # seconds per run before measuring
    duration: float  # measured seconds per run
    inprocess_duration: float  # seconds per in-process figure
    memory_sessions: int  # idle sessions for the memory figure (the target is about 1,000,000)
    # C values, one session each pipelining `pipeline_requests` single tokens on one stream, ours only: the
    # hardening issue's figure, read against the prefill row at C=1 of the same run.
    pipeline: tuple[int, ...] = (1,)
    chunk: int = 1024
    per_message: int = 64
    max_tokens: int = 128
    pipeline_requests: int = 10_000


# 15 s windows: at ~5 k tokens/s that is 75 k samples per row, and ±20 % machine noise dominates anyway.
FULL = Plan("full", (1, 16, 64, 256), (1, 16), (1, 16, 64), (64, 256), True, 3.0, 15.0, 3.0, 1_000_000)
# Enough for every target except the 1,000,000-session memory figure, in under two minutes.
SHORT = Plan("short", (1, 64, 256), (1,), (16,), (64,), False, 1.0, 2.0, 0.7, 20_000)


@dataclass(frozen=True)
class LoadRun:
    """One loadgen process against one server."""

    system: str  # "ours", "unbatched" or "echo"
    mode: str
    sessions: int
    profiled: bool = False  # an extra run under py-spy; kept out of the tables and targets

    @property
    def label(self) -> str:
        return f"{self.mode} C={self.sessions} {self.system}{' (py-spy)' if self.profiled else ''}"


def load_runs(plan: Plan, profile: bool) -> list[LoadRun]:
    """Interleaved by C so that drifting background load hits ours and the references alike."""
    runs = [LoadRun(s, "pingpong", c) for c in plan.pingpong for s in SYSTEMS]
    runs += [LoadRun("ours", "prefill", c) for c in plan.prefill]
    runs += [LoadRun("ours", "pipeline", c) for c in plan.pipeline]  # next to prefill: the two are compared
    runs += [LoadRun("ours", "generate", c) for c in plan.generate]
    for c in plan.multiplexed:
        runs += [LoadRun(s, "multiplexed", c) for s in (("echo", "ours") if plan.echo_multiplexed else ("ours",))]
    if profile:
        runs.append(LoadRun("ours", "pingpong", 64, profiled=True))
    return runs

"""What a benchmark run measures: the full plan is the performance issues' list, the short one a quick check.

The servers under test: the echo ceiling, ours with default settings ("ours", whatever
--frontends defaults to: two frontends), ours as one process (--frontends 0), ours with one
frontend (--frontends 1), and ours unbatched (--max-batch-size 1). Every load spreads its
streams over min(streams, 8) gRPC connections, for every server alike: SO_REUSEPORT balances
*connections* over the frontends, so one connection would hide a second frontend entirely,
and eight are enough to spread 16 or more sessions evenly over two. A few rows are also run
on one connection, the shape of the runs before the process split, so they can be compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Server flags beyond the ports, by system name; "echo" is bench/echo_server.py.
SERVERS: dict[str, list[str]] = {
    "ours": [],
    "ours-f0": ["--frontends", "0"],
    "ours-f1": ["--frontends", "1"],
    "unbatched": ["--max-batch-size", "1"],
}
# Ours in its three process shapes: what the frontend comparison and the CPU table are about.
SHAPES = ("ours-f0", "ours-f1", "ours")
PINGPONG_SYSTEMS = ("echo", *SHAPES)
# Connections a load spreads its streams over, at most (see the module docstring).
MAX_CHANNELS = 8
# Seconds a load run costs beyond its warm-up and window: the loadgen's start-up (imports,
# connect, GetModelInfo) and wind-down; 0.2 s on average in a short run on the 2-core machine,
# more under load. For the estimate only.
RUN_OVERHEAD_S = 1.0


@dataclass(frozen=True)
class Plan:
    name: str
    pingpong: tuple[int, ...]  # C values, single tokens, against echo and ours in its three shapes
    prefill: tuple[int, ...]  # C values, chunks of `chunk` tokens, ours only
    generate: tuple[int, ...]  # C values, Generate calls of `max_tokens`, ours only
    multiplexed: tuple[int, ...]  # C values, `per_message` sessions per PredictMany message
    echo_multiplexed: bool  # the echo ceiling under the multiplexed shape too
    warmup: float  # seconds per run before measuring
    duration: float  # measured seconds per run
    inprocess_duration: float  # seconds per in-process figure
    memory_sessions: int  # idle sessions for the memory figure (the target is about 1,000,000)
    unbatched: tuple[int, ...]  # C values of the unbatched server, ping-pong (the batching gain is at 256)
    one_connection: tuple[int, ...]  # C values also run on one connection: echo, ours, ours-f0
    session_ops_sessions: int  # sessions whose fork/export/import is timed
    session_ops_rounds: int  # times each operation runs on each of them
    # C values, one session each pipelining `pipeline_requests` single tokens on one stream, ours only: the
    # hardening issue's figure, read against the prefill row at C=1 of the same run.
    pipeline: tuple[int, ...] = (1,)
    chunk: int = 1024
    per_message: int = 64
    max_tokens: int = 128
    pipeline_requests: int = 10_000
    session_ops_history: int = 512  # tokens each timed session has consumed: a page of text


# 15 s windows: at ~5 k tokens/s that is 75 k samples per row, and ±20 % machine noise dominates anyway.
FULL = Plan(
    "full",
    pingpong=(1, 16, 64, 256),
    prefill=(1, 16),
    generate=(1, 16, 64),
    multiplexed=(64, 256),
    echo_multiplexed=True,
    warmup=3.0,
    duration=15.0,
    inprocess_duration=3.0,
    memory_sessions=1_000_000,
    unbatched=(1, 16, 64, 256),
    one_connection=(64,),
    session_ops_sessions=64,
    session_ops_rounds=5,
)
# Every target except the 1,000,000-session memory figure, in about three minutes.
SHORT = Plan(
    "short",
    pingpong=(1, 64, 256),
    prefill=(1,),
    generate=(16,),
    multiplexed=(64,),
    echo_multiplexed=False,
    warmup=1.0,
    duration=2.0,
    inprocess_duration=0.7,
    memory_sessions=20_000,
    unbatched=(256,),
    one_connection=(),
    session_ops_sessions=16,
    session_ops_rounds=2,
)


@dataclass(frozen=True)
class LoadRun:
    """One loadgen process against one server."""

    system: str  # "echo", "unbatched" or a key of SERVERS
    mode: str
    sessions: int
    channels: int = 1  # gRPC connections the loadgen spreads its streams over
    profiled: bool = False  # an extra run under py-spy; kept out of the tables and targets
    one_connection: bool = False  # an extra run on one connection, for comparison with older results

    @property
    def label(self) -> str:
        extra = " (py-spy)" if self.profiled else " (1 connection)" if self.one_connection else ""
        return f"{self.mode} C={self.sessions} {self.system}{extra}"

    @property
    def main(self) -> bool:
        """A row of the tables and targets (not an extra run)."""
        return not (self.profiled or self.one_connection)


def streams(plan: Plan, mode: str, sessions: int) -> int:
    """gRPC streams a load opens: one per session, or one per `per_message` sessions when multiplexed."""
    return math.ceil(sessions / plan.per_message) if mode == "multiplexed" else sessions


def load(plan: Plan, system: str, mode: str, sessions: int, **extra: bool) -> LoadRun:
    """A run with the plan's connection rule: min(streams, MAX_CHANNELS), or 1 for a one-connection run."""
    channels = 1 if extra.get("one_connection") else min(streams(plan, mode, sessions), MAX_CHANNELS)
    return LoadRun(system, mode, sessions, channels, **extra)


def load_runs(plan: Plan, profile: bool) -> list[LoadRun]:
    """Interleaved by C so that drifting background load hits ours and the references alike."""
    runs = []
    for i, c in enumerate(plan.pingpong):
        systems = [*PINGPONG_SYSTEMS, *(("unbatched",) if c in plan.unbatched else ())]
        if i % 2:  # alternate the order, so no system always runs first (or last) after a pause
            systems.reverse()
        runs += [load(plan, s, "pingpong", c) for s in systems]
        if c in plan.one_connection:
            runs += [load(plan, s, "pingpong", c, one_connection=True) for s in ("echo", "ours", "ours-f0")]
    runs += [load(plan, "ours", "prefill", c) for c in plan.prefill]
    runs += [load(plan, "ours", "pipeline", c) for c in plan.pipeline]  # next to prefill: the two are compared
    runs += [load(plan, "ours", "generate", c) for c in plan.generate]
    for c in plan.multiplexed:
        systems = [*(("echo",) if plan.echo_multiplexed else ()), "ours", "ours-f0"]
        if streams(plan, "multiplexed", c) > 1:  # on one stream (one connection) the default's frontends are one
            systems.append("ours-f1")
        runs += [load(plan, s, "multiplexed", c) for s in systems]
    if profile:
        runs.append(load(plan, "ours", "pingpong", 64, profiled=True))
    return runs


def servers_needed(runs: list[LoadRun]) -> list[str]:
    """The servers a list of runs talks to, in a fixed order."""
    wanted = {r.system for r in runs}
    return [s for s in (*SERVERS, "echo") if s in wanted]


def estimate_seconds(plan: Plan, profile: bool = False, profile_min_s: float = 10.0) -> float:
    """How long the plan takes, from its own figures and costs measured on the 2-core machine
    (rounded up): every load run; starting the servers (10 s) and stopping them (30 s: the
    multi-process servers took 20-30 s to exit after SIGTERM here, even idle); the session
    operations (a few ms per session and round, plus ~10 s of start-up and the step figure); the
    in-process model (~5 s of start-up, a second beyond each figure); the memory figure
    (~15 s to start and settle, sessions created at over 8,000/s)."""
    total = 0.0
    for run in load_runs(plan, profile):
        window = max(plan.duration, profile_min_s) if run.profiled else plan.duration
        total += RUN_OVERHEAD_S + plan.warmup + window
    total += 10 + 30
    total += 10 + plan.inprocess_duration + plan.session_ops_sessions * plan.session_ops_rounds * 0.01
    total += 5 + (len(plan.pingpong) + len(plan.prefill)) * (plan.inprocess_duration + 1)
    total += 15 + plan.memory_sessions / 8_000
    return total

"""CPU time per process over a load's measured window: what one token costs each process.

The server is several processes — an engine, N gRPC frontends, a supervisor — and the load
generator is one more; which of them a token costs most is what decides how the server
scales with cores (bench/scaling.py). A thread of the benchmark samples utime+stime of each
process from /proc every PERIOD_S while a load runs; the load generator reports its measured
window on the same clock (CLOCK_MONOTONIC), and the CPU of each process inside that window is
read off the samples by linear interpolation, so the warm-up, start-up and wind-down of the
load generator never count. Divided by the tokens answered inside the window, that is the
µs of CPU per token of each process.

Each process's threads are sampled too, grouped by what they do (`thread_group`): the main
thread (the event loop, or the engine's loop), ZeroMQ's I/O threads (the IPC between the
engine and the frontends), gRPC's core threads, and the rest (Python threads: gRPC's
poller, the metrics server). Their keys are "<role>:<group>"; process totals are "<role>".
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Sampling period: at 10 Hz a boundary of the window is interpolated within 0.1 s; the clock
# ticks are 10 ms, so the error is well under 1 % of a 15 s window (a few % of a 2 s one).
PERIOD_S = 0.1


def parse_cpu_seconds(stat: str) -> float:
    """utime + stime of a process (all its threads) from the text of /proc/PID/stat."""
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces and ')'
    # After the name: fields[0] is the state (field 3 of proc(5)), utime field 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def read_cpu_seconds(pid: int) -> float | None:
    """None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_cpu_seconds(f.read())
    except (FileNotFoundError, ProcessLookupError):
        return None


def thread_group(pid: int, tid: int, name: str) -> str:
    """What a thread of ours does, from its id and its name (/proc/PID/task/TID/comm)."""
    if tid == pid:
        return "main"
    if name.startswith("ZMQbg"):
        return "zmq"
    if name.startswith(("event_engine", "grpc", "lifeguard")):
        return "grpc"
    return "other"


def read_thread_groups(pid: int) -> dict[str, float]:
    """CPU seconds of a process's live threads, summed per thread_group (threads that already
    exited are missing: this is for long-lived threads)."""
    groups: dict[str, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return groups
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        group = thread_group(pid, int(tid), name)
        groups[group] = groups.get(group, 0.0) + parse_cpu_seconds(stat)
    return groups


@dataclass(frozen=True)
class Sample:
    t: float  # time.monotonic()
    cpu: dict[str, float]  # role → CPU seconds so far


class CpuSampler:
    """Samples the CPU seconds of {role: pid} — and of the threads of `threads_of` — every `period`
    seconds on a thread, until stopped."""

    def __init__(self, pids: dict[str, int], period: float = PERIOD_S, threads_of: tuple[str, ...] = ()) -> None:
        self.pids = dict(pids)
        self.threads_of = threads_of
        self.period = period
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> CpuSampler:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return self.samples

    def _sample(self) -> None:
        cpu = {role: s for role, pid in self.pids.items() if (s := read_cpu_seconds(pid)) is not None}
        for role in self.threads_of:
            for group, seconds in read_thread_groups(self.pids[role]).items():
                cpu[f"{role}:{group}"] = seconds
        self.samples.append(Sample(time.monotonic(), cpu))

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()


def _at(samples: list[Sample], role: str, t: float) -> float | None:
    """The role's CPU seconds at time t, interpolated between the samples around it."""
    points = [(s.t, s.cpu[role]) for s in samples if role in s.cpu]
    if not points or t < points[0][0] or t > points[-1][0]:
        return None
    i = bisect_left([p[0] for p in points], t)
    if points[i][0] == t or i == 0:
        return points[i][1]
    (t0, c0), (t1, c1) = points[i - 1], points[i]
    return c0 + (c1 - c0) * (t - t0) / (t1 - t0)


def cpu_in_window(samples: list[Sample], start: float, end: float) -> dict[str, float]:
    """CPU seconds each role used between `start` and `end`; roles not sampled across the whole
    window (a process that started or died inside it) are left out rather than guessed."""
    roles = {role for s in samples for role in s.cpu}
    out = {}
    for role in sorted(roles):
        a, b = _at(samples, role, start), _at(samples, role, end)
        if a is not None and b is not None:
            out[role] = round(b - a, 4)
    return out


def kind(role: str) -> str:
    """frontend-1, frontend-2, … are all "frontend" (frontend-1:zmq: "frontend:zmq"); the other roles
    are their own kind."""
    process, _, group = role.partition(":")
    if process.startswith("frontend-"):
        process = "frontend"
    return f"{process}:{group}" if group else process


def by_kind(cpu: dict[str, float], threads: bool = False) -> dict[str, float]:
    """CPU seconds summed per kind of process (with `threads`, per kind of process and thread group)."""
    out: dict[str, float] = {}
    for role, seconds in cpu.items():
        if (":" in role) == threads:
            out[kind(role)] = out.get(kind(role), 0.0) + seconds
    return out


def threads_us_per_token(cpu: dict[str, float], tokens: int) -> dict[str, float]:
    """µs of CPU per token per kind of process and thread group ("engine:zmq", "frontend:main", …)."""
    if tokens <= 0:
        return {}
    return {k: round(seconds / tokens * 1e6, 2) for k, seconds in by_kind(cpu, threads=True).items()}


def us_per_token(cpu: dict[str, float], tokens: int) -> dict[str, float]:
    """µs of CPU per token answered, per kind of process (None-free: empty without tokens)."""
    if tokens <= 0:
        return {}
    return {k: round(seconds / tokens * 1e6, 2) for k, seconds in by_kind(cpu).items()}


def cores_busy(cpu: dict[str, float], window_s: float) -> dict[str, float]:
    """How many cores each process kept busy on average over the window (1.0: one core)."""
    if window_s <= 0:
        return {}
    return {k: round(seconds / window_s, 3) for k, seconds in by_kind(cpu).items()}

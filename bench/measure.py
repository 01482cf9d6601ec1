"""One measured run: a loadgen process against a server, with the server read around it.

The load generator reports what the clients saw; the server's side comes from outside it:
utime+stime from /proc — of the whole process tree around the run (CPU per token, for ours
and the echo alike), and of each process (engine, each frontend, supervisor, the loadgen
itself) over exactly the measured window (bench/cpu.py) — and, for ours, deltas of its
Prometheus series (mean batch size, engine time per token). A profiled run records every
process of the server but the supervisor with py-spy, each into a file of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cpu
import profiling
from plan import LoadRun, Plan
from procs import BENCH_DIR, ServerProcess

# Seconds a loadgen process needs to start (imports, connect, GetModelInfo) before its warm-up begins.
LOADGEN_STARTUP_S = 1.5
# Measured seconds of a profiled run, whatever the plan: enough samples to rank functions.
PROFILE_MIN_S = 10.0


def _delta(before: dict[str, float], after: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def loadgen_argv(server: ServerProcess, spec: LoadRun, plan: Plan, duration: float) -> list[str]:
    flags = {
        "--target": server.address,
        "--mode": spec.mode,
        "--sessions": spec.sessions,
        "--duration": duration,
        "--warmup": plan.warmup,
        "--chunk": plan.chunk,
        "--per-message": plan.per_message,
        "--max-tokens": plan.max_tokens,
        "--pipeline-requests": plan.pipeline_requests,
        "--channels": spec.channels,
    }
    argv = [sys.executable, str(BENCH_DIR / "loadgen.py"), "--json"]
    for flag, value in flags.items():
        argv += [flag, str(value)]
    return argv


def profile_path(base: Path, role: str) -> Path:
    """Where the py-spy record of one server process goes: <base stem>-<role>.collapsed."""
    return base.with_name(f"{base.stem}-{role}{base.suffix}")


def run_load(
    server: ServerProcess, spec: LoadRun, plan: Plan, profile_out: Path | None = None, native: bool = False
) -> dict[str, Any]:
    """Run `spec` against `server`; with `profile_out`, py-spy samples each server process after the warm-up
    (into profile_path(profile_out, role))."""
    duration = max(plan.duration, PROFILE_MIN_S) if spec.profiled else plan.duration
    roles = server.roles()
    result: dict[str, Any] = {
        **asdict(spec),
        "chunk": plan.chunk if spec.mode == "prefill" else 1,
        "per_message": plan.per_message if spec.mode == "multiplexed" else 1,
        "pipeline_requests": plan.pipeline_requests if spec.mode == "pipeline" else None,
        "roles": roles,
        "loadgen": None,
    }
    metrics0, cpu0 = server.metrics(), server.cpu_seconds()
    proc = subprocess.Popen(
        loadgen_argv(server, spec, plan, duration), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    threads_of = tuple(r for r in roles if r != "supervisor")
    sampler = cpu.CpuSampler({**roles, "loadgen": proc.pid}, threads_of=threads_of).start()
    spies = {}
    if spec.profiled and profile_out is not None:
        time.sleep(LOADGEN_STARTUP_S + plan.warmup)
        for role, pid in roles.items():
            if role != "supervisor":  # it only waits on its children and serves the merged /metrics
                out = profile_path(profile_out, role)
                spies[role] = profiling.record(pid, max(duration - 1, 1), out, native=native)
    try:
        stdout, stderr = proc.communicate(timeout=plan.warmup + duration + 120)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    samples = sampler.stop()
    if spies:
        result["pyspy"] = {
            role: spy.communicate(timeout=60)[0].decode(errors="replace").strip().splitlines()[-2:]
            for role, spy in spies.items()
        }
    cpu1, metrics1 = server.cpu_seconds(), server.metrics()
    try:
        result["loadgen"] = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result["error"] = f"loadgen exited {proc.returncode}: {stderr.strip()[-500:]}"
        return result
    lg = result["loadgen"]
    tokens = lg["tokens_total"]
    result["server_cpu_s"] = round(cpu1 - cpu0, 3)
    result["server_cpu_us_per_token"] = round((cpu1 - cpu0) / tokens * 1e6, 2) if tokens else None
    result["server_rss_bytes"] = server.rss_bytes()
    if lg.get("window_monotonic"):
        start, end = lg["window_monotonic"]
        in_window = cpu.cpu_in_window(samples, start, end)
        if lg.get("window_cpu_s") is not None:  # its own reading: exact even when it exits right after
            in_window["loadgen"] = lg["window_cpu_s"]
        result["window_cpu_s"] = in_window
        result["cpu_us_per_token"] = cpu.us_per_token(in_window, lg["tokens"])
        result["thread_us_per_token"] = cpu.threads_us_per_token(in_window, lg["tokens"])
        result["cores_busy"] = cpu.cores_busy(in_window, end - start)
    batches = _delta(metrics0, metrics1, "seqpredict_batch_size_count")
    if batches:
        result["mean_batch"] = round(_delta(metrics0, metrics1, "seqpredict_batch_size_sum") / batches, 2)
        engine_tokens = _delta(metrics0, metrics1, "seqpredict_tokens_consumed_total") + _delta(
            metrics0, metrics1, "seqpredict_tokens_generated_total"
        )
        engine_s = _delta(metrics0, metrics1, "seqpredict_batch_seconds_sum")
        result["engine_us_per_token"] = round(engine_s / engine_tokens * 1e6, 2) if engine_tokens else None
    return result


def run_json(argv: list[str], timeout: float) -> dict[str, Any]:
    """A bench script in its own process; its last stdout line is its JSON result."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"{argv[0]} exited {proc.returncode}: {proc.stderr.strip()[-800:]}"}


def summary_line(run: dict[str, Any]) -> str:
    """One line per finished run for the progress output."""
    lg = run.get("loadgen")
    if not lg:
        return f"  {run.get('error', 'failed')}"
    lat = lg["latency_ms"]
    extra = f", mean batch {run['mean_batch']}" if run.get("mean_batch") is not None else ""
    costs = run.get("cpu_us_per_token") or {}
    shown = " ".join(f"{k} {v:.0f}" for k, v in costs.items())
    return (
        f"{lg['tokens_per_s']:9,.0f} tokens/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
        f"CPU µs/token: {shown or '?'}{extra}  errors {lg['error_count']}"
    )

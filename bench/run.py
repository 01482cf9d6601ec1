"""The benchmark of the performance issues, end to end: `make bench` (full, writes bench/RESULTS.md) or
`make bench-short`.

The servers run side by side as child processes on free ports — ours with default settings,
ours as one process (--frontends 0), ours with one frontend, ours with --max-batch-size 1
("unbatched", the naive design) and the echo ceiling — and the load generator runs as a
separate process against each, C by C, interleaved so the references see the same
background load as ours. While a load runs, the CPU of every process (engine, frontends,
supervisor, the load generator) is sampled over the measured window. Then the session
operations against ours; then, with the servers stopped, issue 13's cluster section
(bench/cluster.py: redis-server, three replicas and nginx of its own; --no-cluster skips it),
the in-process model and the idle-memory figure, each in a process of its own.

Writes bench/out/results.json, results.md and bench.png; only the full mode also writes the
committed copy, bench/RESULTS.md and bench/RESULTS.png. --profile adds a pingpong C=64 run
with py-spy on each process of ours (engine and frontend apart) and
bench/out/profile-<label>-<process>.txt, the summaries of where each process's time goes that
the team compares before and after a change. The verdicts of the latest `make bench-peers`
(bench/out/peers.json) are shown with the targets, marked as that run's.

    .venv/bin/python bench/run.py --short --profile --profile-label before
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cluster
import machine
import plot
import profiling
import report
import targets
from measure import profile_path, run_json, run_load, summary_line
from plan import FULL, SERVERS, SHORT, LoadRun, Plan, estimate_seconds, load_runs, servers_needed
from procs import BENCH_DIR, ServerProcess, start_echo, start_ours, wait_serving
from tqdm import tqdm

OUT_DIR = BENCH_DIR / "out"


class Bench:
    """Runs a plan step by step, collecting everything into one results dict."""

    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.logs = args.out / "logs"
        self.servers: dict[str, ServerProcess] = {}
        self.loads = load_runs(plan, args.profile)
        self.cluster_plan = cluster.FULL if plan.name == "full" else cluster.SHORT
        self.results: dict[str, Any] = {
            "mode": plan.name,
            "machine": machine.describe(),
            "config": {**dataclasses.asdict(plan), "servers": {**SERVERS, "echo": ["bench/echo_server.py"]}},
            "estimate_s": round(total_estimate(plan, args)),
            "runs": [],
        }
        if not args.no_cluster:
            self.results["cluster"] = cluster.empty(self.cluster_plan)

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        plan = self.plan
        return [
            ("start servers", self.start_servers),
            *((spec.label, self._load_step(spec)) for spec in self.loads),
            ("session operations", self.session_ops),
            ("stop servers", self.stop_servers),
            *(() if self.args.no_cluster else self.cluster_steps()),
            ("in-process model", self.inprocess),
            (f"memory ({plan.memory_sessions:,} sessions)", self.memory),
        ]

    def start_servers(self) -> None:
        for name in servers_needed(self.loads):
            self.servers[name] = self._start(name)
        for name in list(self.servers):
            for attempt in range(3):
                try:
                    wait_serving(self.servers[name])
                    break
                except RuntimeError:
                    # A free port found at start can be taken before the server binds it (by another
                    # process's outgoing connection, on a busy machine): start it again on new ports.
                    if attempt == 2 or "Address already in use" not in self.servers[name].log_tail():
                        raise
                    tqdm.write(f"{name}: its port was taken meanwhile; starting it on other ports", file=sys.stderr)
                    self.servers[name] = self._start(name)
        # Which processes each server is, as its log names them (the CPU table is per process).
        self.results["servers"] = {name: {"roles": s.roles()} for name, s in self.servers.items()}

    def _start(self, name: str) -> ServerProcess:
        if name == "echo":
            return start_echo(name, self.logs)
        return start_ours(name, self.logs, SERVERS[name])

    def session_ops(self) -> None:
        """Fork/export/import beside a Predict step, against ours, in a process of its own."""
        p = self.plan
        argv = [
            str(BENCH_DIR / "session_ops.py"),
            *("--target", self.servers["ours"].address, "--sessions", str(p.session_ops_sessions)),
            *("--rounds", str(p.session_ops_rounds), "--history", str(p.session_ops_history)),
            *("--step-duration", str(p.inprocess_duration)),
        ]
        self.results["session_ops"] = ops = run_json(argv, timeout=600)
        if "error" in ops:
            tqdm.write(f"session operations failed: {ops['error']}", file=sys.stderr)
            return
        shown = ", ".join(f"{op} {f['p50_us']:.0f}" for op, f in ops["rpc"]["operations"].items() if f["count"])
        tqdm.write(f"session operations, p50 µs over RPC: {shown}; blob {ops['rpc']['blob_bytes']} B", file=sys.stderr)

    def cluster_steps(self) -> list[tuple[str, Callable[[], None]]]:
        """Issue 13's section (bench/cluster.py), with the servers above stopped: its parts start their own."""

        def step(label: str, run: Callable[[], dict[str, Any]]) -> Callable[[], None]:
            def go() -> None:
                result = cluster.guarded(run)
                cluster.record(self.results["cluster"], label, result)
                tqdm.write(f"{label:<32} {cluster.summary_line(result)}", file=sys.stderr)

            return go

        return [(label, step(label, run)) for label, run in cluster.steps(self.cluster_plan, self.args.out / "cluster")]

    def stop_servers(self) -> None:
        for server in self.servers.values():  # all drain at once
            server.terminate()
        for server in self.servers.values():
            server.stop()

    def _load_step(self, spec: LoadRun) -> Callable[[], None]:
        def step() -> None:
            a = self.args
            run = run_load(self.servers[spec.system], spec, self.plan, a.profile_raw, a.profile_native)
            self.results["runs"].append(run)
            tqdm.write(f"{spec.label:<32} {summary_line(run)}", file=sys.stderr)

        return step

    def inprocess(self) -> None:
        p = self.plan
        argv = [
            str(BENCH_DIR / "inprocess.py"),
            "--sessions",
            ",".join(map(str, p.pingpong)),
            "--prefill-sessions",
            ",".join(map(str, p.prefill)),
            "--chunk",
            str(p.chunk),
            "--duration",
            str(p.inprocess_duration),
        ]
        self.results["inprocess"] = fig = run_json(argv, timeout=600)
        for f in fig.get("single", []) + fig.get("prefill", []):
            tqdm.write(
                f"in-process {f['kind']} C={f['sessions']:<4} {f['tokens_per_s']:14,.0f} tokens/s  "
                f"step p50 {f['step_ms']['p50']} ms",
                file=sys.stderr,
            )
        if "error" in fig:
            tqdm.write(f"in-process failed: {fig['error']}", file=sys.stderr)

    def memory(self) -> None:
        argv = [str(BENCH_DIR / "memory.py"), "--sessions", str(self.plan.memory_sessions), "--log-dir", str(self.logs)]
        self.results["memory"] = m = run_json(argv, timeout=1800)
        shown = m.get("error") or f"{m['bytes_per_session']:.0f} B/session, {m['ratio']}x the raw state"
        tqdm.write(f"memory ({self.plan.memory_sessions:,} sessions): {shown}", file=sys.stderr)

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        try:
            with tqdm(
                self.steps(), desc=f"bench {self.plan.name}", unit="step", file=sys.stderr, dynamic_ncols=True
            ) as bar:
                for label, step in bar:
                    bar.set_postfix_str(label)
                    step()
        finally:
            self.stop_servers()
        self.results["machine"]["loadavg_end"] = machine.loadavg()
        self.results["elapsed_s"] = round(time.monotonic() - started, 1)
        return self.results


def write_profiles(results: dict[str, Any], raw: Path, label: str, out: Path) -> None:
    """One summary per profiled process of ours: profile-<label>-<role>.txt (engine, frontend-1, or server)."""
    profiled = next((r for r in results["runs"] if r.get("profiled")), None)
    results["profiles"] = {}
    for role in (profiled or {}).get("roles", {}):
        path = profile_path(raw, role)
        if not path.exists():
            continue
        title = f"py-spy profile of our server's {role} process, pingpong C=64, {label}"
        text = profiling.summarize(path, title=title)
        summary = out / f"profile-{label}-{role}.txt"
        summary.write_text(text)
        by_package = "By package" + text.split("By package", 1)[-1].split("\n\n", 1)[0]
        shown = summary.relative_to(BENCH_DIR.parent) if summary.is_relative_to(BENCH_DIR.parent) else summary
        results["profiles"][role] = {"summary": str(shown), "raw": str(path), "by_package": by_package}


def total_estimate(plan: Plan, args: argparse.Namespace) -> float:
    extra = 0.0 if args.no_cluster else cluster.estimate_seconds(cluster.FULL if plan.name == "full" else cluster.SHORT)
    return estimate_seconds(plan, args.profile) + extra


def latest_peers(out: Path) -> dict[str, Any] | None:
    """The results of the latest `make bench-peers` in the same output folder, if there is one."""
    try:
        return json.loads((out / "peers.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the quick check (~3 minutes); never writes bench/RESULTS.md")
    p.add_argument("--profile", action="store_true", help="add a pingpong C=64 run with py-spy on each process of ours")
    p.add_argument(
        "--profile-label", default=None, help="profile file names: profile-<label>-<process>.txt (default: git rev)"
    )
    p.add_argument(
        "--no-cluster", action="store_true", help="skip issue 13's cluster section (redis-server, nginx, 3 replicas)"
    )
    p.add_argument("--profile-native", action="store_true", help="py-spy --native (pauses the server per sample)")
    p.add_argument("--duration", type=float, default=None, help="override the measured seconds per run")
    p.add_argument("--memory-sessions", type=int, default=None, help="override the idle sessions of the memory figure")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: bench/out)")
    p.add_argument(
        "--rerender", action="store_true", help="rewrite the report from OUT/results.json without measuring again"
    )
    args = p.parse_args(argv)
    plan = SHORT if args.short else FULL
    if args.duration is not None:
        plan = dataclasses.replace(plan, duration=args.duration)
    if args.memory_sessions is not None:
        plan = dataclasses.replace(plan, memory_sessions=args.memory_sessions)
    if args.profile and profiling.pyspy_binary() is None:
        p.error("--profile needs py-spy: pip install -e '.[dev]'")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.profile_label = re.sub(r"[^A-Za-z0-9._-]", "_", args.profile_label or machine.git_revision())
    args.profile_raw = args.out / f"profile-{args.profile_label}.collapsed" if args.profile else None
    if args.profile_raw is not None:
        for stale in args.out.glob(f"profile-{args.profile_label}-*.collapsed"):
            stale.unlink()  # never summarise a stale profile

    if args.rerender:
        # Re-render the report from a finished run (e.g. after editing bench/ANALYSIS.md).
        results = json.loads((args.out / "results.json").read_text())
        plan = FULL if results.get("mode") == "full" else SHORT
        args.profile_raw = None
    else:
        print(f"{plan.name} run: about {total_estimate(plan, args) / 60:.0f} minutes", file=sys.stderr)
        results = Bench(plan, args).run()
    if args.profile_raw is not None:
        write_profiles(results, args.profile_raw, args.profile_label, args.out)
    evaluated = targets.evaluate(results, latest_peers(args.out))
    results["targets"] = [t.to_dict() for t in evaluated]
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot.plot(results, args.out / "bench.png")
    markdown = report.render(results, evaluated, "bench.png")
    (args.out / "results.md").write_text(markdown)
    written = [args.out / n for n in ("results.json", "results.md", "bench.png")]
    # Only a full run with the default output replaces the committed results.
    if plan.name == "full" and args.out == OUT_DIR.resolve():
        shutil.copyfile(args.out / "bench.png", BENCH_DIR / "RESULTS.png")
        (BENCH_DIR / "RESULTS.md").write_text(report.render(results, evaluated, "RESULTS.png"))
        written += [BENCH_DIR / "RESULTS.md", BENCH_DIR / "RESULTS.png"]
    print(markdown)
    print(f"{plan.name} run took {results['elapsed_s']} s; wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

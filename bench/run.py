"""The benchmark of issue 4, end to end: `make bench` (full, writes bench/RESULTS.md) or `make bench-short`.

Three servers run side by side as child processes on free ports — ours with default
settings, ours with --max-batch-size 1 ("unbatched", the naive design) and the echo ceiling —
and the load generator runs as a separate process against each, C by C, interleaved so the
references see the same background load as ours. Then the in-process model and the
idle-memory figure, each in a process of its own, with the servers stopped.

Writes bench/out/results.json, results.md and bench.png; only the full mode also writes the
committed copy, bench/RESULTS.md and bench/RESULTS.png. --profile adds a pingpong C=64 run
under py-spy and bench/out/profile-<label>.txt, the summary of where the server's time goes
that the team compares before and after a change.

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

import machine
import plot
import profiling
import report
import targets
from measure import run_json, run_load, summary_line
from plan import FULL, SHORT, LoadRun, Plan, load_runs
from procs import BENCH_DIR, ServerProcess, start_echo, start_ours, wait_serving
from tqdm import tqdm

OUT_DIR = BENCH_DIR / "out"
SERVER_FLAGS = {"ours": [], "unbatched": ["--max-batch-size", "1"]}


class Bench:
    """Runs a plan step by step, collecting everything into one results dict."""

    def __init__(self, plan: Plan, args: argparse.Namespace) -> None:
        self.plan = plan
        self.args = args
        self.logs = args.out / "logs"
        self.servers: dict[str, ServerProcess] = {}
        self.results: dict[str, Any] = {
            "mode": plan.name,
            "machine": machine.describe(),
            "config": {**dataclasses.asdict(plan), "servers": {**SERVER_FLAGS, "echo": ["bench/echo_server.py"]}},
            "runs": [],
        }

    def steps(self) -> list[tuple[str, Callable[[], None]]]:
        plan = self.plan
        loads = load_runs(plan, self.args.profile)
        return [
            ("start servers", self.start_servers),
            *((spec.label, self._load_step(spec)) for spec in loads),
            ("stop servers", self.stop_servers),
            ("in-process model", self.inprocess),
            (f"memory ({plan.memory_sessions:,} sessions)", self.memory),
        ]

    def start_servers(self) -> None:
        for name, flags in SERVER_FLAGS.items():
            self.servers[name] = start_ours(name, self.logs, flags)
        self.servers["echo"] = start_echo("echo", self.logs)
        for server in self.servers.values():
            wait_serving(server)

    def stop_servers(self) -> None:
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


def write_profile(results: dict[str, Any], raw: Path, label: str, out: Path) -> None:
    text = profiling.summarize(raw, title=f"py-spy profile of our server, pingpong C=64, {label}")
    summary = out / f"profile-{label}.txt"
    summary.write_text(text)
    by_package = "By package" + text.split("By package", 1)[-1].split("\n\n", 1)[0]
    shown = summary.relative_to(BENCH_DIR.parent) if summary.is_relative_to(BENCH_DIR.parent) else summary
    results["profile"] = {"summary": str(shown), "raw": str(raw), "by_package": by_package}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the quick check (< 2 minutes); never writes bench/RESULTS.md")
    p.add_argument("--profile", action="store_true", help="add a pingpong C=64 run under py-spy and its summary")
    p.add_argument("--profile-label", default=None, help="profile file name: profile-<label>.txt (default: git rev)")
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
        args.profile_raw.unlink(missing_ok=True)  # never summarise a stale profile

    if args.rerender:
        # Re-render the report from a finished run (e.g. after editing bench/ANALYSIS.md).
        results = json.loads((args.out / "results.json").read_text())
        plan = FULL if results.get("mode") == "full" else SHORT
        args.profile_raw = None
    else:
        results = Bench(plan, args).run()
    if args.profile_raw is not None and args.profile_raw.exists():
        write_profile(results, args.profile_raw, args.profile_label, args.out)
    evaluated = targets.evaluate(results)
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

"""`make bench-peers`: our server and TorchServe 0.12 under the same ping-pong load, in the same run.

For each C in the plan, alternating rounds — ours, TorchServe, ours, TorchServe, ... — each
server started fresh for its run and stopped after it:

- ours: `seqpredict-server` started by bench/procs.py's start_ours (so this follows whatever
  the main benchmark does to start it), driven by bench/loadgen.py's pingpong mode through
  bench/measure.py's run_load — exactly a `make bench` ping-pong row;
- TorchServe: started by tsproc.py on our checkpoint and handler with the documented
  sequence-batching settings for C (tsconfig.py), driven by ts_driver.py, which measures with
  loadgen's Tally and checks every answer of a few sessions against the reference model.

Both get the same warm-up and measured window; server CPU is read from /proc around each run
(TorchServe: the Java frontend and its Python workers). Writes bench/out/peers.json, peers.md
and peers.png; the full mode also writes bench/PEERS.md and bench/PEERS.png.

    .venv/bin/python bench/peers/run.py --short
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent
sys.path.insert(1, str(PEERS_DIR.parent))  # bench/: procs, measure, plan, machine

import machine  # noqa: E402
import peers_plot  # noqa: E402
import peers_report  # noqa: E402
import rounds  # noqa: E402
import tsproc  # noqa: E402
from measure import run_load  # noqa: E402
from plan import FULL as BENCH_FULL  # noqa: E402
from plan import LoadRun  # noqa: E402
from procs import BENCH_DIR, start_ours, wait_serving  # noqa: E402
from tqdm import tqdm  # noqa: E402
from tsconfig import TorchServeSettings  # noqa: E402

from seqpredict.server.config import default_checkpoint  # noqa: E402

OUT_DIR = BENCH_DIR / "out"
# Seconds the driver may take beyond its window: start-up, connecting, and the verification.
DRIVER_SLACK_S = 180.0


class PeersBench:
    """Runs the plan step by step, one fresh server per step, collecting one record per run."""

    def __init__(self, plan: rounds.PeersPlan, settings: TorchServeSettings, out: Path) -> None:
        self.plan, self.settings, self.out = plan, settings, out
        self.logs = out / "peers-logs"
        self.checkpoint = Path(default_checkpoint())
        self.runs: list[dict[str, Any]] = []

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        results: dict[str, Any] = {
            "mode": self.plan.name,
            "machine": machine.describe(),
            "plan": self.plan.to_dict(),
            "torchserve": {"version": torchserve_version(), "settings": self.settings.to_dict()},
            "runs": self.runs,
        }
        steps = self.plan.steps()
        with tqdm(steps, desc=f"bench-peers {self.plan.name}", unit="run", file=sys.stderr, dynamic_ncols=True) as bar:
            for c, round_no, system in bar:
                bar.set_postfix_str(f"C={c} round {round_no} {system}")
                record = self.ours(c) if system == "ours" else self.torchserve(c)
                record.update(system=system, sessions=c, round=round_no)
                self.runs.append(record)
                tqdm.write(f"C={c:<4} round {round_no} {system:<10} {summary(record)}", file=sys.stderr)
        results["machine"]["loadavg_end"] = machine.loadavg()
        results["torchserve"]["model_config"] = {c: self.settings.model_config(c) for c in self.plan.sessions}
        results["elapsed_s"] = round(time.monotonic() - started, 1)
        return results

    def ours(self, c: int) -> dict[str, Any]:
        """A `make bench` ping-pong row: fresh server, loadgen in its own process, CPU from /proc."""
        plan = dataclasses.replace(BENCH_FULL, warmup=self.plan.warmup, duration=self.plan.duration)
        server = start_ours(f"ours-c{c}", self.logs)
        try:
            wait_serving(server)
            return run_load(server, LoadRun("ours", "pingpong", c), plan)
        except Exception as exc:  # a failed round is reported, not fatal: the other rounds still count
            return {"error": f"{type(exc).__name__}: {exc}"[:800]}
        finally:
            server.stop()

    def torchserve(self, c: int) -> dict[str, Any]:
        run_dir = self.out / "peers-torchserve"
        server = tsproc.start(f"torchserve-c{c}", self.settings, c, self.checkpoint, run_dir, tsproc.free_ports())
        try:
            tsproc.wait_ready(server, self.settings.workers)
            return self._drive(server, c)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"[:800]}
        finally:
            server.stop()

    def _drive(self, server: tsproc.TorchServeProcess, c: int) -> dict[str, Any]:
        """ts_driver.py against `server`, with the server's CPU read around it (as measure.run_load does)."""
        p = self.plan
        argv = [
            str(tsproc.TS_BIN / "python"),
            str(PEERS_DIR / "ts_driver.py"),
            *("--target", server.address, "--stubs", str(tsproc.STUBS_DIR), "--checkpoint", str(self.checkpoint)),
            *("--sessions", str(c), "--warmup", str(p.warmup), "--duration", str(p.duration)),
            *("--verify-sessions", str(p.verify_sessions), "--json"),
        ]
        cpu0 = server.cpu_seconds()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            stdout, stderr = proc.communicate(timeout=p.warmup + p.duration + DRIVER_SLACK_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        # Read after the driver exits: it verifies after its window, while the server is idle.
        cpu1, rss = server.cpu_seconds(), server.rss_bytes()
        try:
            result = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return {"error": f"ts_driver exited {proc.returncode}: {stderr.strip()[-500:]}"}
        tokens = result["tokens_total"]
        return {
            "loadgen": result,
            "server_cpu_s": round(cpu1 - cpu0, 3),
            "server_cpu_us_per_token": round((cpu1 - cpu0) / tokens * 1e6, 2) if tokens else None,
            "server_rss_bytes": rss,
        }


def summary(record: dict[str, Any]) -> str:
    lg = record.get("loadgen")
    if not lg:
        return record.get("error", "failed")
    lat, verified = lg["latency_ms"], lg.get("verified")
    checked = f"  verified {verified['checked']} wrong {verified['wrong']}" if verified else ""
    return (
        f"{lg['tokens_per_s']:9,.0f} tokens/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
        f"server {record.get('server_cpu_us_per_token')} µs/token  errors {lg['error_count']}{checked}"
    )


def torchserve_version() -> str:
    try:
        return (tsproc.TS_VENV / "lib").glob("python*/site-packages/ts/version.txt").__next__().read_text().strip()
    except (StopIteration, OSError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the quick check; never writes bench/PEERS.md")
    p.add_argument("--duration", type=float, default=None, help="override the measured seconds per run")
    p.add_argument("--rounds", type=int, default=None, help="override the rounds per C")
    p.add_argument("--sessions", default=None, help="override the C values, e.g. 1,64")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="output directory (default: bench/out)")
    p.add_argument("--rerender", action="store_true", help="rewrite the reports from OUT/peers.json")
    args = p.parse_args(argv)
    plan = rounds.SHORT if args.short else rounds.FULL
    overrides = {"duration": args.duration, "rounds": args.rounds}
    if args.sessions:
        overrides["sessions"] = tuple(int(c) for c in args.sessions.split(","))
    plan = dataclasses.replace(plan, **{k: v for k, v in overrides.items() if v is not None})
    if not (tsproc.TS_BIN / "torchserve").exists() or not (tsproc.STUBS_DIR / "inference_pb2.py").exists():
        p.error(f"TorchServe is not installed in {tsproc.TS_VENV}: run `make bench-peers`")
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)

    if args.rerender:
        results = json.loads((args.out / "peers.json").read_text())
    else:
        results = PeersBench(plan, TorchServeSettings(), args.out).run()
    table = rounds.medians(results["runs"])
    goals = rounds.evaluate(table)
    results["medians"] = {s: {str(c): v for c, v in by_c.items()} for s, by_c in table.items()}
    results["goals"] = [dataclasses.asdict(g) for g in goals]
    (args.out / "peers.json").write_text(json.dumps(results, indent=2) + "\n")
    peers_plot.plot(results, table, args.out / "peers.png")
    markdown = peers_report.render(results, table, goals, "peers.png")
    (args.out / "peers.md").write_text(markdown)
    written = [args.out / n for n in ("peers.json", "peers.md", "peers.png")]
    # Only a full run with the default output replaces the committed report.
    if results["mode"] == "full" and args.out == OUT_DIR.resolve():
        shutil.copyfile(args.out / "peers.png", BENCH_DIR / "PEERS.png")
        (BENCH_DIR / "PEERS.md").write_text(peers_report.render(results, table, goals, "PEERS.png"))
        written += [BENCH_DIR / "PEERS.md", BENCH_DIR / "PEERS.png"]
    print(markdown)
    print(f"{results['mode']} run took {results.get('elapsed_s')} s; wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

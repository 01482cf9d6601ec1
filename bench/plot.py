"""bench.png: our server next to the three references, against the number of sessions C.

Three panels: single-token throughput, p99 per-token latency, and server CPU per token with
ours split into engine time (seqpredict_batch_seconds) and everything else (gRPC, asyncio,
protobuf, scheduling) — the picture of where the time goes that issue 4 asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

STYLE = {
    "ours": ("tab:blue", "o", "ours (batched)"),
    "unbatched": ("tab:orange", "s", "ours, --max-batch-size 1"),
    "echo": ("tab:gray", "^", "echo ceiling (no model)"),
    "inprocess": ("tab:green", "D", "in-process model (no RPC)"),
    "multiplexed": ("tab:purple", "P", "ours, multiplexed"),
}


def _series(results: dict[str, Any], system: str, mode: str, key: str) -> tuple[list[int], list[float]]:
    points = []
    for run in results.get("runs", []):
        if run["system"] == system and run["mode"] == mode and not run.get("profiled") and run.get("loadgen"):
            value = run["loadgen"]["tokens_per_s"] if key == "tps" else run["loadgen"]["latency_ms"]["p99"]
            if value is not None:
                points.append((run["sessions"], value))
    points.sort()
    return [c for c, _ in points], [v for _, v in points]


def plot(results: dict[str, Any], path: Path) -> None:
    fig, (ax_tps, ax_p99, ax_cpu) = plt.subplots(1, 3, figsize=(17, 5.2))
    inproc = (results.get("inprocess") or {}).get("single", [])
    for key, ax, ylabel in (("tps", ax_tps, "tokens/s"), ("p99", ax_p99, "p99 per-token latency (ms)")):
        for system in ("ours", "unbatched", "echo"):
            xs, ys = _series(results, system, "pingpong", key)
            color, marker, label = STYLE[system]
            ax.plot(xs, ys, marker=marker, color=color, label=f"{label}, ping-pong")
        xs, ys = _series(results, "ours", "multiplexed", key)
        color, marker, label = STYLE["multiplexed"]
        ax.plot(xs, ys, marker=marker, color=color, linestyle="--", label=label)
        if inproc:
            values = [f["tokens_per_s"] if key == "tps" else f["step_ms"]["p99"] for f in inproc]
            color, marker, label = STYLE["inprocess"]
            ax.plot([f["sessions"] for f in inproc], values, marker=marker, color=color, linestyle=":", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent sessions C")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    ax_tps.set_title("Single-token throughput")
    ax_p99.set_title("p99 latency (in-process: one batched step)")
    ax_tps.legend(fontsize=8)
    _cpu_panel(ax_cpu, results)
    fig.suptitle(
        f"seqpredict bench ({results.get('mode', '?')}), {results['machine']['cpu_model']}, "
        f"{results['machine']['date']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cpu_panel(ax: Any, results: dict[str, Any]) -> None:
    """Server CPU µs per token at each C, ping-pong: ours stacked engine + rest, then the references."""
    runs = [
        r for r in results.get("runs", []) if r["mode"] == "pingpong" and not r.get("profiled") and r.get("loadgen")
    ]
    cs = sorted({r["sessions"] for r in runs})
    width = 0.27
    for i, c in enumerate(cs):
        by_system = {r["system"]: r for r in runs if r["sessions"] == c}
        for j, system in enumerate(("ours", "unbatched", "echo")):
            run = by_system.get(system)
            if not run or run.get("server_cpu_us_per_token") is None:
                continue
            x = i + (j - 1) * width
            total = run["server_cpu_us_per_token"]
            engine = run.get("engine_us_per_token") or 0.0
            color = STYLE[system][0]
            ax.bar(x, min(engine, total), width, color=color, edgecolor="black", hatch="//")
            ax.bar(x, max(total - engine, 0.0), width, bottom=min(engine, total), color=color, alpha=0.55)
    ax.set_xticks(range(len(cs)), [f"C={c}" for c in cs])
    ax.set_ylabel("server CPU µs per token")
    ax.set_title("Where server time goes (hatched: engine batches)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=STYLE[s][0]) for s in ("ours", "unbatched", "echo")]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch="//"))
    ax.legend(handles, ["ours", "unbatched", "echo", "engine batches (wall time)"], fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)

"""bench.png: ours in its three process shapes next to the references, against the number of sessions C.

Panels: single-token throughput and p99 latency — echo ceiling, ours with --frontends 0
(one process), --frontends 1, the default, unbatched, multiplexed and the in-process model —
and CPU per token at each C, stacked by process (engine, frontends, supervisor, or the one
process), the picture of where the time goes and which process a bigger machine needs more of.
A fourth: issue 13's cluster rows (bench/cluster_report.py), tokens/s of each topology.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import cluster_report
import matplotlib.pyplot as plt
from targets import is_main

STYLE = {
    "ours": ("tab:blue", "o", "ours, default"),
    "ours-f0": ("tab:cyan", "v", "ours, --frontends 0 (one process)"),
    "ours-f1": ("tab:red", "s", "ours, --frontends 1"),
    "unbatched": ("tab:orange", "x", "ours, --max-batch-size 1"),
    "echo": ("tab:gray", "^", "echo ceiling (no model)"),
    "inprocess": ("tab:green", "D", "in-process model (no RPC)"),
    "multiplexed": ("tab:purple", "P", "ours, multiplexed"),
}
# CPU panel: the systems, and the process kinds stacked in each bar.
CPU_SYSTEMS = (("echo", "echo"), ("ours-f0", "f0"), ("ours-f1", "f1"), ("ours", "def."))
KIND_COLORS = {
    "engine": "tab:green",
    "frontend": "tab:blue",
    "supervisor": "tab:olive",
    "server": "tab:cyan",
    "echo": "tab:gray",
}


def _series(results: dict[str, Any], system: str, mode: str, key: str) -> tuple[list[int], list[float]]:
    points = []
    for run in results.get("runs", []):
        if run["system"] == system and run["mode"] == mode and is_main(run) and run.get("loadgen"):
            value = run["loadgen"]["tokens_per_s"] if key == "tps" else run["loadgen"]["latency_ms"]["p99"]
            if value is not None:
                points.append((run["sessions"], value))
    points.sort()
    return [c for c, _ in points], [v for _, v in points]


def plot(results: dict[str, Any], path: Path) -> None:
    fig, (ax_tps, ax_p99, ax_cpu, ax_cluster) = plt.subplots(1, 4, figsize=(23, 5.4))
    inproc = (results.get("inprocess") or {}).get("single", [])
    for key, ax, ylabel in (("tps", ax_tps, "tokens/s"), ("p99", ax_p99, "p99 per-token latency (ms)")):
        for system in ("echo", "ours-f0", "ours-f1", "ours", "unbatched"):
            xs, ys = _series(results, system, "pingpong", key)
            if xs:
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
    ax_tps.legend(fontsize=7)
    _cpu_panel(ax_cpu, results)
    cluster_report.plot_panel(ax_cluster, results.get("cluster"))
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
    """Server CPU µs per token over the measured window, ping-pong, stacked by process kind."""
    runs = [r for r in results.get("runs", []) if r["mode"] == "pingpong" and is_main(r) and r.get("loadgen")]
    cs = sorted({r["sessions"] for r in runs})
    width = 0.8 / len(CPU_SYSTEMS)
    ticks, tick_labels = [], []
    for i, c in enumerate(cs):
        by_system = {r["system"]: r for r in runs if r["sessions"] == c}
        for j, (system, short) in enumerate(CPU_SYSTEMS):
            costs = (by_system.get(system) or {}).get("cpu_us_per_token") or {}
            x = i + (j - (len(CPU_SYSTEMS) - 1) / 2) * width
            bottom = 0.0
            for kind, color in KIND_COLORS.items():
                value = costs.get(kind)
                if value:
                    ax.bar(x, value, width, bottom=bottom, color=color, edgecolor="black", linewidth=0.4)
                    bottom += value
            ticks.append(x)
            tick_labels.append(f"{short}\nC={c}" if j == 0 else short)
    ax.set_xticks(ticks, tick_labels, fontsize=7)
    ax.set_ylabel("server CPU µs per token (measured window)")
    ax.set_title("Where server CPU goes, by process")
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in KIND_COLORS.values()]
    names = ["engine process", "frontends", "supervisor", "one process (--frontends 0)", "echo server"]
    ax.legend(handles, names, fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)

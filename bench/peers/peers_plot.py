"""PEERS.png: ours against TorchServe by C — throughput, p50 latency and server CPU per token.

Every round is a faint dot; the line joins the medians, so the spread of a shared machine
stays visible next to the figure the goal is judged on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server; must precede pyplot
import matplotlib.pyplot as plt

STYLE = {"ours": ("seqpredict (ours)", "tab:blue"), "torchserve": ("TorchServe 0.12", "tab:orange")}
PANELS = (
    ("tokens/s", lambda r: r["loadgen"]["tokens_per_s"], "tokens_per_s", "single-token throughput"),
    ("p50 ms", lambda r: r["loadgen"]["latency_ms"]["p50"], "p50_ms", "p50 round trip (log)"),
    ("server CPU µs/token", lambda r: r.get("server_cpu_us_per_token"), "server_cpu_us_per_token", "server CPU"),
)


def plot(results: dict[str, Any], table: dict[str, dict[int, dict[str, Any]]], out: Path) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4.4))
    ok_runs = [r for r in results["runs"] if r.get("loadgen")]
    for ax, (ylabel, per_run, key, title) in zip(axes, PANELS, strict=True):
        for system, (label, color) in STYLE.items():
            runs = [r for r in ok_runs if r["system"] == system and per_run(r) is not None]
            ax.scatter([r["sessions"] for r in runs], [per_run(r) for r in runs], color=color, alpha=0.3, s=14)
            cs = sorted(c for c, v in table.get(system, {}).items() if v.get(key) is not None)
            ax.plot(cs, [table[system][c][key] for c in cs], marker="o", color=color, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent sessions C")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        if "log" in title:
            ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    plan = results["plan"]
    fig.suptitle(
        f"ping-pong single tokens, {plan['warmup']:g} s warm-up + {plan['duration']:g} s window, "
        f"medians of {plan['rounds']} alternating rounds (dots: each round)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)

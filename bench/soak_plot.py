"""rss.png: the server's memory over the soak, with its trend, the sessions held and the never-read phases.

The phases are shaded so a reader can see at a glance whether RSS moves with the client that
never reads (it must not climb with it), and the fitted trend is the line the verdict judges.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
from soak_figures import MB, Sample

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt


def plot(
    path: Path, samples: Sequence[Sample], duration: float, trend: tuple[float, float] | None, limit: float
) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    minutes = [s["t"] / 60 for s in samples]
    ax.plot(minutes, [s["rss_bytes"] / MB for s in samples], color="tab:blue", label="server RSS")
    if trend is not None:
        half = [m for m in minutes if m >= duration / 120]
        slope, intercept = trend
        ax.plot(
            half,
            [slope * m + intercept for m in half],
            color="tab:red",
            linestyle="--",
            label=f"second-half trend {slope:.2f} MB/min (limit {limit})",
        )
    for k, (start, end) in enumerate(on_spans(samples)):
        label = "client that never reads: on" if k == 0 else None
        ax.axvspan(start / 60, end / 60, color="tab:orange", alpha=0.12, lw=0, label=label)
    sessions = ax.twinx()
    sessions.plot(minutes, [s["sessions"] for s in samples], color="tab:gray", alpha=0.5, label="sessions held")
    sessions.set_ylabel("sessions held")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("seqpredict soak: server memory")
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    more_handles, more_labels = sessions.get_legend_handles_labels()
    ax.legend(handles + more_handles, labels + more_labels, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def on_spans(samples: Sequence[Sample]) -> list[tuple[float, float]]:
    """(start, end) seconds of each run of samples taken while the never-reading client was on."""
    spans: list[tuple[float, float]] = []
    start = None
    for s in samples:
        if s.get("never_read") and start is None:
            start = s["t"]
        elif not s.get("never_read") and start is not None:
            spans.append((start, s["t"]))
            start = None
    if start is not None and samples:
        spans.append((start, samples[-1]["t"]))
    return spans

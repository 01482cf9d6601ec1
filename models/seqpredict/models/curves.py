"""Training curve files: CSV and JSON for reading, PNG for looking at."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def write_curve(rows: list[dict[str, Any]], stem: Path, title: str) -> list[Path]:
    """Write stem.csv, stem.json and stem.png; return the paths written."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    # Appended, not with_suffix: with_suffix turns the stem "model-v0.1-curve" into "model-v0.csv".
    paths = [stem.with_name(stem.name + ext) for ext in (".csv", ".json", ".png")]
    with paths[0].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["step"])
        writer.writeheader()
        writer.writerows(rows)
    paths[1].write_text(json.dumps(rows, indent=1) + "\n")
    _plot(rows, paths[2], title)
    return paths


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chars = [r["chars"] / 1e6 for r in rows]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(chars, [r["train_loss"] for r in rows], label="train (running mean)")
    ax.plot(chars, [r["val_loss"] for r in rows], marker="o", markersize=3, label="validation (stateful)")
    ax.axhline(1.45, color="grey", linestyle="--", linewidth=0.8, label="target 1.45")
    ax.set_xlabel("training characters (millions)")
    ax.set_ylabel("loss (nats/char)")
    ax.set_title(title)
    ax.set_ylim(top=min(3.0, max(r["val_loss"] for r in rows) + 0.1) if rows else None)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)

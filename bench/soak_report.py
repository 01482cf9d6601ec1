"""The soak's report (report.json, report.md, rss.png) and its verdict.

The run fails when a single correct request was answered wrongly (or a bad one got the wrong
code), when the server did not exit 0 on SIGTERM, or when RSS keeps growing: a least-squares
line through the RSS samples of the second half of the run rising faster than
MAX_RSS_SLOPE_MB_PER_MIN.

Why a trend over the second half, and why 2 MB/min: everything the server holds is bounded by
the soak's limits — at most 500 sessions of 4 KiB of state, 8 queued requests per session, a
few dozen streams — and those pools fill in the first minute, so after that RSS has nothing
legitimate to grow into. What remains is allocator noise (glibc arenas and pymalloc keep freed
blocks; test_bad_inputs measured ±10 MB between rounds of 1,000 abandoned streams), which moves
RSS up and down without a trend; over the 5-minute second half of the default run a fitted
slope of 2 MB/min means 10 MB of steady growth, more than that noise can fake. A leak of
100 bytes per call at the soak's few hundred calls per second would exceed it. Short runs have
a short second half, where noise weighs more: read their slope with that in mind.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt

MAX_RSS_SLOPE_MB_PER_MIN = 2.0
MB = 2**20


@dataclass
class Run:
    started: float  # unix seconds
    duration: float
    flags: tuple[str, ...]
    tallies: Any  # soak.Tallies
    samples: list[dict[str, float]]  # t, rss_bytes, sessions, streams
    metrics: Any  # tests.bystanders.Metrics: the final scrape
    server_exit: int
    max_rss_slope: float


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    summary: str


def rss_trend(samples: list[dict[str, float]], duration: float) -> tuple[float, float] | None:
    """(slope in MB/min, intercept in MB) of RSS over the second half of the run; None with too few samples."""
    half = [s for s in samples if s["t"] >= duration / 2]
    if len(half) < 3:
        return None
    minutes = np.array([s["t"] / 60 for s in half])
    mb = np.array([s["rss_bytes"] / MB for s in half])
    slope, intercept = np.polyfit(minutes, mb, 1)
    return float(slope), float(intercept)


def _by_label(metrics: Any, name: str, *labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, label_set), value in metrics.samples.items():
        if sample == name and value:
            found = dict(label_set)
            out["/".join(found.get(label, "") for label in labels)] = value
    return dict(sorted(out.items()))


def _table(header: tuple[str, str], rows: dict[str, float]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in rows.items()] or ["| — | 0 |"]
    return "\n".join(lines)


def write(out: Path, run: Run) -> Verdict:
    t = run.tallies
    trend = rss_trend(run.samples, run.duration)
    rss = [s["rss_bytes"] / MB for s in run.samples]
    reasons = []
    if t.wrong_count:
        reasons.append(f"{t.wrong_count} request(s) answered wrongly")
    if t.checked == 0:
        reasons.append("no answer was checked against the reference")
    if run.server_exit != 0:
        reasons.append(f"the server exited with {run.server_exit} on SIGTERM")
    if trend is not None and trend[0] > run.max_rss_slope:
        reasons.append(f"RSS grows {trend[0]:.2f} MB/min over the second half (limit {run.max_rss_slope})")
    passed = not reasons
    client = {f"{kind}/{code}": n for (kind, code), n in sorted(t.outcomes.items())}
    errors: dict[str, float] = {}
    for (_, code), n in t.outcomes.items():
        if code != "OK":
            errors[code] = errors.get(code, 0) + n
    server = {
        "requests": _by_label(run.metrics, "seqpredict_requests_total", "kind", "code"),
        "evictions": _by_label(run.metrics, "seqpredict_sessions_ended_total", "reason"),
        "rejected": _by_label(run.metrics, "seqpredict_rejected_total", "limit"),
        "handled": _by_label(run.metrics, "grpc_server_handled_total", "grpc_method", "grpc_code"),
        "sessions_created": run.metrics.value("seqpredict_sessions_created_total"),
        "tokens_consumed": run.metrics.value("seqpredict_tokens_consumed_total"),
        "tokens_generated": run.metrics.value("seqpredict_tokens_generated_total"),
    }
    calls = sum(t.outcomes.values())
    report = {
        "passed": passed,
        "reasons": reasons,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started)),
        "duration_s": run.duration,
        "server_flags": list(run.flags),
        "server_exit": run.server_exit,
        "calls": calls,
        "calls_by_kind_and_code": client,
        "errors_by_code": dict(sorted(errors.items())),
        "answers_checked_against_reference": t.checked,
        "tracked_session_losses_signalled": dict(t.losses),
        "wrong_answers": t.wrong_count,
        "wrong_examples": t.wrong,
        "server_metrics": server,
        "rss": {
            "first_mb": rss[0] if rss else None,
            "max_mb": max(rss) if rss else None,
            "last_mb": rss[-1] if rss else None,
            "second_half_slope_mb_per_min": trend[0] if trend else None,
            "slope_limit_mb_per_min": run.max_rss_slope,
            "samples": run.samples,
        },
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(out / "rss.png", run, trend)
    (out / "report.md").write_text(_markdown(report, server, t))
    summary = (
        f"soak {'PASSED' if passed else 'FAILED'}: {calls:,} calls, {t.checked:,} answers checked, "
        f"{t.wrong_count} wrong, RSS slope {trend[0] if trend else float('nan'):.2f} MB/min"
        + (f" — {'; '.join(reasons)}" if reasons else "")
        + f"; report in {out}"
    )
    return Verdict(passed, reasons, summary)


def _markdown(report: dict[str, Any], server: dict[str, Any], t: Any) -> str:
    rss = report["rss"]
    slope = rss["second_half_slope_mb_per_min"]
    lines = [
        "# Soak run",
        "",
        f"**{'PASSED' if report['passed'] else 'FAILED'}**"
        + (f": {'; '.join(report['reasons'])}" if report["reasons"] else ""),
        "",
        f"Started {report['started']}, {report['duration_s']:.0f} s of mixed load against "
        f"`seqpredict-server {' '.join(report['server_flags'])}`; the server exited {report['server_exit']} "
        "on SIGTERM.",
        "",
        "## Requests",
        "",
        f"{report['calls']:,} calls (Predict requests count one each); "
        f"{report['answers_checked_against_reference']:,} answers of tracked sessions compared with "
        f"`tests/reference.py` within 1e-5; **{report['wrong_answers']} wrong**.",
        "",
        "Tracked sessions that learned they had been evicted (never silently served from a lost state): "
        + (", ".join(f"{k} {v}" for k, v in report["tracked_session_losses_signalled"].items()) or "none"),
        "",
        _table(("call / outcome", "count"), report["calls_by_kind_and_code"]),
        "",
        "### Errors by code (client side; all expected: refusals of bad requests, limits, our own "
        "cancellations and deadlines)",
        "",
        _table(("code", "count"), report["errors_by_code"]),
        "",
        "## Server metrics at the end",
        "",
        "### Sessions ended, by reason (`seqpredict_sessions_ended_total`)",
        "",
        _table(("reason", "count"), server["evictions"]),
        "",
        f"Sessions created: {server['sessions_created']:,.0f}; tokens consumed {server['tokens_consumed']:,.0f}, "
        f"generated {server['tokens_generated']:,.0f}.",
        "",
        "### Refusals by limit (`seqpredict_rejected_total`)",
        "",
        _table(("limit", "count"), server["rejected"]),
        "",
        "### Requests by kind and code (`seqpredict_requests_total`)",
        "",
        _table(("kind/code", "count"), server["requests"]),
        "",
        "## Memory",
        "",
        "![RSS over time](rss.png)",
        "",
        f"RSS: first sample {rss['first_mb']:.1f} MB, max {rss['max_mb']:.1f} MB, last {rss['last_mb']:.1f} MB; "
        f"least-squares slope over the second half "
        + (f"**{slope:.2f} MB/min**" if slope is not None else "n/a (too few samples)")
        + f" (fails above {rss['slope_limit_mb_per_min']} MB/min: every pool is bounded by the limits above, "
        "so after warm-up RSS may only wander with allocator noise; see bench/soak_report.py).",
        "",
    ]
    if report["wrong_examples"]:
        lines += ["## Wrong answers (first 50)", "", *[f"- {w}" for w in report["wrong_examples"]], ""]
    return "\n".join(lines)


def _plot(path: Path, run: Run, trend: tuple[float, float] | None) -> None:
    fig, ax = plt.subplots(figsize=(9, 4.5))
    minutes = [s["t"] / 60 for s in run.samples]
    ax.plot(minutes, [s["rss_bytes"] / MB for s in run.samples], color="tab:blue", label="server RSS")
    if trend is not None:
        half = [m for m in minutes if m >= run.duration / 120]
        slope, intercept = trend
        ax.plot(
            half,
            [slope * m + intercept for m in half],
            color="tab:red",
            linestyle="--",
            label=f"second-half trend {slope:.2f} MB/min (limit {run.max_rss_slope})",
        )
    sessions = ax.twinx()
    sessions.plot(minutes, [s["sessions"] for s in run.samples], color="tab:gray", alpha=0.5, label="sessions held")
    sessions.set_ylabel("sessions held")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.set_title("seqpredict soak: server memory")
    ax.grid(True, alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + sessions.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

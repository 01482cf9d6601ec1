"""The soak's verdict and its report (report.json, report.md, rss.png).

The run fails when
- a single correct request was answered wrongly, or a bad one got the wrong code (soak_check.py);
- more than MAX_TAIL_FRACTION of the checked answers missed the reference's 1e-5 by float32
  rounding (soak_check.ROUNDING_TAIL): a tail that thick is a loss of precision, not a tail;
- no answer at all was compared with the reference (the checker did not run);
- the server did not exit 0 on SIGTERM, or logged an ERROR or a traceback the soak cannot explain
  (soak_log.py: the one known line is grpc's, provoked by the client that never reads);
- RSS keeps growing: a least-squares line through the RSS samples of the second half of the
  run rises faster than MAX_RSS_SLOPE_MB_PER_MIN;
- the load stalled: for more than MAX_STALL_S seconds not one answer came back to anyone;
- the client that never reads opened streams and the server never held one of them back (it
  kept reading what it could not answer: flow control did not engage).

Why a trend over the second half, and why 2 MB/min: everything the server holds is bounded by
the soak's limits — at most 500 sessions of 4 KiB of state, a window of 8 requests and 1 MiB
of answers per stream, a few dozen streams, and for the client that never reads the few MB of
HTTP/2 buffers its stream fills, released when it is abandoned — and those pools fill in the
first minute, so after that RSS has nothing legitimate to grow into. What remains is allocator
noise (glibc arenas and pymalloc keep freed blocks; test_bad_inputs measured ±10 MB between
rounds of 1,000 abandoned streams), which moves RSS up and down without a trend; over the
5-minute second half of the default run a fitted slope of 2 MB/min means 10 MB of steady
growth, more than that noise can fake. A leak of 100 bytes per call at the soak's few hundred
calls per second would exceed it. Short runs have a short second half, where noise weighs
more: read their slope with that in mind.

Why 10 s for a stall: about twenty drivers have requests in flight at every moment and the
sampler looks every 2 s; ten seconds in which none of them got a single answer is a server
that has stopped serving, however busy the machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soak_markdown
import soak_plot
from soak_figures import MB, longest_stall, phase_rates, rss_trend, spread
from soak_log import UNEXPLAINED, log_errors
from soak_unread import OFF_S

MAX_RSS_SLOPE_MB_PER_MIN = 2.0
MAX_STALL_S = 10.0
# The soak's runs meet the rounding tail about once in 100,000 checks (offline: once in 1,600 chunk ends,
# counting only 600-token histories, the deepest the tracked sessions go); once in 1,000 is not a tail.
MAX_TAIL_FRACTION = 1e-3


@dataclass
class Run:
    started: float  # unix seconds
    duration: float
    flags: tuple[str, ...]
    tallies: Any  # soak_check.Tallies
    samples: list[dict[str, Any]]  # see soak_figures
    metrics: Any  # tests.bystanders.Metrics: the final scrape
    server_exit: int
    server_log: str
    max_rss_slope: float


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]
    summary: str


def _by_label(metrics: Any, name: str, *labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (sample, label_set), value in metrics.samples.items():
        if sample == name and value:
            found = dict(label_set)
            out["/".join(found.get(label, "") for label in labels)] = value
    return dict(sorted(out.items()))


def reasons_to_fail(run: Run, trend: tuple[float, float] | None, stall: float, unexplained: int) -> list[str]:
    t, events = run.tallies, run.tallies.events
    reasons = []
    if t.wrong_count:
        reasons.append(f"{t.wrong_count} request(s) answered wrongly")
    if t.checked == 0:
        reasons.append("no answer was checked against the reference")
    if t.tail_count > MAX_TAIL_FRACTION * t.checked:
        reasons.append(
            f"{t.tail_count} answer(s) off by float32 rounding, more than {MAX_TAIL_FRACTION:.1%} of those checked"
        )
    if run.server_exit != 0:
        reasons.append(f"the server exited with {run.server_exit} on SIGTERM")
    if unexplained:
        reasons.append(f"the server logged {unexplained} error(s) or traceback(s) the soak cannot explain")
    if trend is not None and trend[0] > run.max_rss_slope:
        reasons.append(f"RSS grows {trend[0]:.2f} MB/min over the second half (limit {run.max_rss_slope})")
    if stall > MAX_STALL_S:
        reasons.append(f"the load got no answer for {stall:.0f} s (limit {MAX_STALL_S:.0f})")
    if events["never_read/streams opened"] and not events["never_read/streams held back when abandoned"]:
        reasons.append("the server never held back a stream that was never read")
    return reasons


def write(out: Path, run: Run) -> Verdict:
    t = run.tallies
    trend = rss_trend(run.samples, run.duration)
    stall = longest_stall(run.samples)
    logged = log_errors(run.server_log)
    reasons = reasons_to_fail(run, trend, stall, logged[UNEXPLAINED])
    passed = not reasons
    rss = [s["rss_bytes"] / MB for s in run.samples]
    errors: dict[str, float] = {}
    for (_, code), n in t.outcomes.items():
        if code != "OK":
            errors[code] = errors.get(code, 0) + n
    calls = sum(t.outcomes.values())
    report = {
        "passed": passed,
        "reasons": reasons,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(run.started)),
        "duration_s": run.duration,
        "server_flags": list(run.flags),
        "server_exit": run.server_exit,
        "server_log_errors": dict(logged),
        "calls": calls,
        "calls_by_kind_and_code": {f"{kind}/{code}": n for (kind, code), n in sorted(t.outcomes.items())},
        "errors_by_code": dict(sorted(errors.items())),
        "answers_checked_against_reference": t.checked,
        "tracked_session_losses_signalled": dict(t.losses),
        "events": dict(sorted(t.events.items())),
        "series": {name: spread(values) for name, values in sorted(t.series.items())},
        "wrong_answers": t.wrong_count,
        "wrong_examples": t.wrong,
        "rounding_tail": t.tail_count,
        "rounding_tail_examples": t.tail,
        "load": {
            "longest_stall_s": stall,
            "stall_limit_s": MAX_STALL_S,
            "answers_per_s_never_read_on_off": phase_rates(run.samples, after=OFF_S),
            "streams_paused_max": max((s["streams_paused"] for s in run.samples), default=None),
        },
        "server_metrics": {
            "requests": _by_label(run.metrics, "seqpredict_requests_total", "kind", "code"),
            "evictions": _by_label(run.metrics, "seqpredict_sessions_ended_total", "reason"),
            "rejected": _by_label(run.metrics, "seqpredict_rejected_total", "limit"),
            "handled": _by_label(run.metrics, "grpc_server_handled_total", "grpc_method", "grpc_code"),
            "sessions_created": run.metrics.value("seqpredict_sessions_created_total"),
            "tokens_consumed": run.metrics.value("seqpredict_tokens_consumed_total"),
            "tokens_generated": run.metrics.value("seqpredict_tokens_generated_total"),
            "stream_pauses": run.metrics.value("seqpredict_stream_pauses_total"),
        },
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
    soak_plot.plot(out / "rss.png", run.samples, run.duration, trend, run.max_rss_slope)
    (out / "report.md").write_text(soak_markdown.render(report))
    summary = (
        f"soak {'PASSED' if passed else 'FAILED'}: {calls:,} calls, {t.checked:,} answers checked, "
        f"{t.wrong_count} wrong, RSS slope {trend[0] if trend else float('nan'):.2f} MB/min"
        + (f" — {'; '.join(reasons)}" if reasons else "")
        + f"; report in {out}"
    )
    return Verdict(passed, reasons, summary)

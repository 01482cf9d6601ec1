"""report.md: the soak's report.json rendered for people, one section per thing the soak shows."""

from __future__ import annotations

from typing import Any

from soak_log import KNOWN, UNEXPLAINED
from soak_pipelines import FLOOD, PIPELINE
from soak_tracked import FENCED


def _table(header: tuple[str, str], rows: dict[str, float]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in rows.items()] or ["| — | 0 |"]
    return "\n".join(lines)


def _spread(s: dict[str, float] | None, digits: int = 1) -> str:
    if not s:
        return "n/a"
    return f"min {s['min']:,.{digits}f}, median {s['median']:,.{digits}f}, max {s['max']:,.{digits}f} (n={s['n']})"


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def rounding_section(report: dict[str, Any]) -> list[str]:
    """The answers outside 1e-5 of the float32 reference and within 1e-4 of the float64 model (see soak_check)."""
    n, examples = report["rounding_tail"], report["rounding_tail_examples"]
    lines = [
        "Answers outside 1e-5 of that float32 reference but within 1e-4 of the same model evaluated in float64 "
        f"(float32 rounding over a long history, which the reference itself shows; see bench/soak_check.py), "
        f"not counted wrong: **{n}**"
        + (", each with the served, float32-reference and float64 figures:" if n else "."),
    ]
    if examples:
        lines += ["", *[f"- {e}" for e in examples]]
    return [*lines, ""]


def log_section(errors: dict[str, int]) -> list[str]:
    unexplained = errors.get(UNEXPLAINED, 0)
    lines = [f"Errors in the server log (server.log) the soak cannot explain: **{unexplained}**."]
    for line, count in sorted(errors.items()):
        if line != UNEXPLAINED:
            lines += ["", f"Explained: {count:,} × `ERROR … {line}` — {KNOWN[line]}"]
    return [*lines, ""]


def pipelines_section(report: dict[str, Any]) -> list[str]:
    events, series = report["events"], report["series"]
    rows = [
        "| shape | completed | lost (evicted, signalled) | cut short by the end | answers |",
        "|---|---:|---:|---:|---:|",
    ]
    for shape in (FLOOD, PIPELINE):
        k = shape.kind
        rows.append(
            f"| {k}: {shape.requests:,} requests × {shape.tokens_each} token(s) | "
            f"{events.get(f'{k}/completed', 0):,} | {events.get(f'{k}/lost (evicted, signalled)', 0):,} | "
            f"{events.get(f'{k}/cut short by the end of the run', 0):,} | {events.get(f'{k}/answers', 0):,} |"
        )
    seconds = series.get(f"{PIPELINE.kind}/seconds per completed pipeline")
    return [
        "## One session pipelined on one stream",
        "",
        "Each pipeline is a fresh session whose requests are written ahead on one stream (flow control "
        "holds the writer back) while its answers are read; every request carries its exact "
        "`expected_position`, and the session's incarnation once the first answer named it. Every answer "
        "must come back in order, OK, at exactly its position, with that incarnation, and its top-5 equal "
        "to the reference's at that position (all of them are compared).",
        "",
        *rows,
        "",
        f"Seconds per completed 10,000-request pipeline, under the rest of the load: {_spread(seconds)}.",
        "",
    ]


def never_read_section(report: dict[str, Any]) -> list[str]:
    events, load = report["events"], report["load"]
    rates = load["answers_per_s_never_read_on_off"]
    taken = report["series"].get("never_read/requests taken per stream")
    return [
        "## The client that never reads",
        "",
        "Streams of 256-token requests asking for all steps of the whole vocabulary (~0.4 MB of answer "
        "each), written as fast as gRPC takes them, never read, each abandoned (cancelled) after 5–15 s; "
        "on for 40 s, off for 20 s (shaded in the plot below).",
        "",
        f"- streams opened: {events.get('never_read/streams opened', 0):,}; held back (writes no longer "
        f"taken) when abandoned: {events.get('never_read/streams held back when abandoned', 0):,}; "
        f"not held back: {events.get('never_read/streams not held back', 0):,}",
        f"- requests taken: {events.get('never_read/requests taken', 0):,} in all; per stream "
        f"{_spread(taken, 0)} (they sit unread in the server's HTTP/2 buffers; the stream window holds 8)",
        f"- streams paused by flow control (`seqpredict_streams_paused`, most in one sample): "
        f"{load['streams_paused_max']:.0f}; pauses in all (`seqpredict_stream_pauses_total`): "
        f"{report['server_metrics']['stream_pauses']:,.0f}",
        f"- the rest of the load's answers per second while this client held a stream: {_rate(rates['on'])}; "
        f"while it did not: {_rate(rates['off'])} (same run, sample intervals after the first off phase; a "
        "shared 2-core machine, so read the ratio, not the figures)",
        f"- longest time the load got no answer at all: {load['longest_stall_s']:.0f} s "
        f"(fails above {load['stall_limit_s']:.0f} s)",
        "",
    ]


def render(report: dict[str, Any]) -> str:
    rss, server, events = report["rss"], report["server_metrics"], report["events"]
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
        *log_section(report["server_log_errors"]),
        "## Requests",
        "",
        f"{report['calls']:,} calls (Predict requests count one each); "
        f"{report['answers_checked_against_reference']:,} answers compared with "
        f"`tests/reference.py` within 1e-5; **{report['wrong_answers']} wrong**.",
        "",
        *rounding_section(report),
        "Tracked sessions that learned they had been evicted (never silently served from a lost state): "
        + (", ".join(f"{k} {v}" for k, v in report["tracked_session_losses_signalled"].items()) or "none")
        + ". Requests fenced by the incarnation a tracked session had before its loss, at the position the "
        f"new incarnation had reached, refused with the actual values: {events.get(FENCED, 0)}.",
        "",
        _table(("call / outcome", "count"), report["calls_by_kind_and_code"]),
        "",
        "### Errors by code (client side; all expected: refusals of bad requests, signalled losses, our own "
        "cancellations and deadlines)",
        "",
        _table(("code", "count"), report["errors_by_code"]),
        "",
        *pipelines_section(report),
        *never_read_section(report),
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

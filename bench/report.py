"""RESULTS.md: the machine, the targets with PASS/MISS, and one table per load shape.

Every table puts our server next to the references measured in the same run (echo ceiling,
unbatched, in-process model, ours in its other process shapes), because on a shared 2-core
machine only the ratios are stable. The per-process sections (process shapes, CPU per token,
the scaling model, session operations, profiles) are rendered by report_processes.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cluster_report
import report_processes as processes
from targets import Target, is_main, pipeline_vs_prefill

# Quoted from issue 4, not measured by this benchmark.
TORCHSERVE_REFERENCE = (
    "TorchServe 0.12 (sequence batching, gRPC streaming, the same LSTM at H=256, the same kind of 2-core machine), "
    "as quoted in issue 4 — **not measured here**:\n\n"
    "| sessions | tokens/s | p50 |\n|---:|---:|---:|\n"
    "| 1 | 90 | 9 ms |\n| 16 | 650 | — |\n| 64 | 1,600 | — |\n"
)


ANALYSIS = Path(__file__).resolve().parent / "ANALYSIS.md"
# Written by `make bench-peers` (bench/peers/): TorchServe measured side by side, in a run of its own.
PEERS = Path(__file__).resolve().parent / "PEERS.md"
PEERS_LINK = "Measured side by side with ours in the same run by `make bench-peers`: **[PEERS.md](PEERS.md)**.\n"


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def _loadgen_row(c: int, label: str, run: dict[str, Any]) -> str:
    lg = run.get("loadgen")
    conn = run.get("channels", 1)
    if not lg:
        return f"| {c} | {label} | {conn} | failed: {run.get('error', '?')} | | | | | | | |"
    lat = lg.get("latency_ms") or {}
    errors = lg.get("error_count") or 0
    return (
        f"| {c} | {label} | {conn} | {_num(lg.get('tokens_per_s'))} | {_num(lg.get('messages_per_s'))} | "
        f"{_ms(lat.get('p50'))} | {_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {_num(run.get('mean_batch'), 1)} | "
        f"{_num(run.get('server_cpu_us_per_token'), 1)} | {_num(run.get('engine_us_per_token'), 1)} | {errors} |"
    )


HEADER = (
    "| C | system | conn. | tokens/s | msg/s | p50 ms | p90 ms | p99 ms | mean batch | server CPU µs/token | "
    "engine wall µs/token | errors |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)
# Table order: ours first, then its other shapes, then the references.
ORDER = ("ours", "ours-f0", "ours-f1", "unbatched", "echo")


def labels(results: dict[str, Any]) -> dict[str, str]:
    """Row labels; the default's frontend count as its log showed it."""
    roles = ((results.get("servers") or {}).get("ours") or {}).get("roles") or {}
    frontends = len([r for r in roles if r.startswith("frontend-")])
    return {
        "ours": f"**ours** (default: --frontends {frontends})" if roles else "**ours**",
        "ours-f0": "ours, --frontends 0 (one process)",
        "ours-f1": "ours, --frontends 1",
        "unbatched": "unbatched (max batch 1)",
        "echo": "echo ceiling",
    }


def mode_table(results: dict[str, Any], mode: str) -> str:
    runs = [r for r in results["runs"] if r["mode"] == mode and not r.get("profiled")]
    if not runs:
        return ""
    inproc_kind = {"pingpong": "single", "prefill": "prefill"}.get(mode)
    inproc = {f["sessions"]: f for f in (results.get("inprocess") or {}).get(inproc_kind or "", [])}
    names = labels(results)
    rows = [HEADER]
    for c in sorted({r["sessions"] for r in runs}):
        for main in (True, False):  # the one-connection rows after the main ones
            for system in ORDER:
                for run in (r for r in runs if r["sessions"] == c and r["system"] == system and is_main(r) == main):
                    rows.append(_loadgen_row(c, names[system] + ("" if main else ", 1 connection"), run))
        if c in inproc:
            f = inproc[c]
            step = f["step_ms"]
            rows.append(
                f"| {c} | in-process model (per step) | — | {_num(f['tokens_per_s'])} | — | {_ms(step['p50'])} | "
                f"{_ms(step['p90'])} | {_ms(step['p99'])} | {c} | {_num(f['us_per_token'], 1)} (engine only) | "
                f"{_num(f['us_per_token'], 1)} | 0 |"
            )
    return "\n".join(rows)


MODE_NOTES = {
    "pingpong": "One Predict stream per session, one token per message, one message in flight per session; "
    "latency is the message round trip.",
    "prefill": "One Predict stream per session, chunks of T tokens per message; latency is the chunk round trip; "
    "the in-process row is nn.LSTM over the whole chunk.",
    "generate": "C concurrent Generate calls restarted as they finish; latency is the gap between consecutive tokens.",
    "multiplexed": "Sessions grouped per PredictMany message, one token each, one message in flight per stream; "
    "latency is the message round trip.",
    "pipeline": "One session per stream writing single-token requests ahead as fast as gRPC takes them (the "
    "server's stream window, not the client, bounds what is in flight) while reading the answers; a fresh "
    "session after every N requests. Latency runs from offering a request to gRPC to its answer, so it "
    "includes the time the writer is held back by flow control.",
}


def pipeline_line(results: dict[str, Any]) -> str:
    """The figure the hardening issue asks for, as a ratio within this run."""
    fig = pipeline_vs_prefill(results)
    if fig is None:
        return "Pipelined single tokens against prefill: not measured in this run."
    return (
        f"One session pipelining {fig['requests']:,} single-token requests: **{_num(fig['pipeline_tokens_per_s'])} "
        f"tokens/s**, {fig['ratio']:.2f}× the {fig['chunk']:,}-token prefill row of this run "
        f"({_num(fig['prefill_tokens_per_s'])} tokens/s)."
    )


def targets_table(targets: list[Target]) -> str:
    rows = ["| target | rule | measured | result |", "|---|---|---|---|"]
    for t in targets:
        shown = {"PASS": "**PASS**", "MISS": "**MISS**"}.get(t.status, t.status)
        rows.append(f"| {t.name} | {t.rule} | {t.measured} | {shown} |")
    return "\n".join(rows)


def machine_table(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [
        ("date (UTC)", m["date"]),
        ("CPU", f"{m['cpu_model']}, {m['cores']} cores"),
        ("kernel", m["kernel"]),
        ("software", f"Python {m['python']}, torch {m['torch']}, grpcio {m['grpcio']}, protobuf {m['protobuf']}"),
        ("commit", m["git"]),
        ("load average (1/5/15 min) at start / end", f"{m.get('loadavg_start')} / {m.get('loadavg_end')}"),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def memory_section(memory: dict[str, Any] | None) -> str:
    if not memory:
        return "Not measured in this run."
    if memory.get("error"):
        return f"Failed: {memory['error']}"
    return (
        f"{memory['created']:,} idle sessions created through PredictMany in {memory['create_seconds']} s "
        f"({_num(memory['sessions_per_s'])} sessions/s), "
        f"server started with --max-sessions {memory['max_sessions']:,}.\n\n"
        "| RSS before | RSS after | peak RSS | bytes/session | raw state bytes/session | ratio |\n"
        "|---:|---:|---:|---:|---:|---:|\n"
        f"| {memory['rss_before_bytes'] / 2**20:,.0f} MiB | {memory['rss_after_bytes'] / 2**20:,.0f} MiB | "
        f"{memory['rss_peak_bytes'] / 2**20:,.0f} MiB | {memory['bytes_per_session']:,.0f} | "
        f"{memory['state_bytes_per_session']:,} | {memory['ratio']:.3f} |"
    )


def render(results: dict[str, Any], targets: list[Target], png_name: str) -> str:
    cfg = results["config"]
    parts = [
        "# seqpredict benchmark results",
        "",
        f"Mode: **{results['mode']}** (`make bench` for the full run, `make bench-short` for a quick check). "
        f"Every server ran as its own processes with the load generator (`bench/loadgen.py`) in another; "
        f"{cfg['warmup']} s warm-up then {cfg['duration']} s measured per row. Every load spread its streams "
        f"over min(streams, {processes.MAX_CHANNELS}) gRPC connections (column *conn.*), for every server alike: "
        "the kernel spreads *connections* over the frontends (SO_REUSEPORT), so one connection would hide a "
        "second frontend; rows marked *1 connection* repeat a load on one, the shape of the runs before the "
        "process split. Figures on a shared 2-core machine move by ±20 %: compare ratios within one run, not "
        f"absolute numbers across runs. The run took {results.get('elapsed_s', '?')} s.",
        "",
        "## Machine",
        "",
        machine_table(results),
        "",
        "## Targets (the performance issues)",
        "",
        targets_table(targets),
        "",
    ]
    if ANALYSIS.exists():  # the team's reading of the misses, written from profiles and measurements
        parts += [ANALYSIS.read_text().strip(), ""]
    for mode, title in (
        ("pingpong", "Single tokens, ping-pong"),
        ("prefill", f"Prefill ({cfg['chunk']}-token chunks)"),
        ("generate", f"Generate ({cfg['max_tokens']} tokens per call)"),
        ("multiplexed", f"Multiplexed ({cfg['per_message']} sessions per message)"),
        ("pipeline", f"Pipelined single tokens ({cfg.get('pipeline_requests', 10_000):,} requests per session)"),
    ):
        table = mode_table(results, mode)
        if table:
            extra = ["", pipeline_line(results)] if mode == "pipeline" else []
            parts += [f"## {title}", "", MODE_NOTES[mode], *extra, "", table, ""]
    parts += [
        "Columns: *mean batch* is Δ`seqpredict_batch_size_sum` / Δ`_count` over the run; *server CPU µs/token* is "
        "the utime+stime of all the server's processes (all threads) over the run divided by the tokens answered "
        "(warm-up included; per process and over the measured window only: the CPU table below); *engine wall "
        "µs/token* is Δ`seqpredict_batch_seconds_sum` / Δ tokens consumed + generated: wall time of the engine's "
        "batches, which in the one-process server includes time the inference thread waits for the GIL while the "
        "event loop holds it.",
        "",
        *processes.sections(results),
        *cluster_report.section(results.get("cluster")),
        "## Idle sessions in memory",
        "",
        memory_section(results.get("memory")),
        "",
        "## Reference: TorchServe",
        "",
        TORCHSERVE_REFERENCE,
        *([PEERS_LINK] if PEERS.exists() else []),
        "## Plot",
        "",
        f"![throughput, p99 and server CPU per token against C]({png_name})",
        "",
    ]
    parts += processes.profiles_section(results)
    return "\n".join(parts)

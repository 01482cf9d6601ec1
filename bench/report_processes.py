"""The per-process sections of RESULTS.md: process shapes, CPU per token, the scaling model, session operations.

The server is an engine process and N gRPC frontends (or one process with --frontends 0):
these sections show the three shapes side by side, what a token costs each process, what
that predicts for a machine with more cores (bench/scaling.py), what the session operations
cost beside a step, and where each process's time goes (py-spy).
"""

from __future__ import annotations

from typing import Any

import scaling
from plan import MAX_CHANNELS, SHAPES
from targets import find_run, p50, tps

__all__ = ["MAX_CHANNELS", "profiles_section", "sections"]

SHAPE_LABELS = {"ours-f0": "--frontends 0", "ours-f1": "--frontends 1", "ours": "default"}
CPU_SYSTEMS = ("echo", *SHAPES, "unbatched")
CPU_KINDS = ("engine", "frontend", "supervisor", "server", "echo", "loadgen")
SCALING_CORES = (8, 16)


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def default_frontends(results: dict[str, Any]) -> int | None:
    roles = ((results.get("servers") or {}).get("ours") or {}).get("roles")
    return None if roles is None else len([r for r in roles if r.startswith("frontend-")])


def _default_shape(results: dict[str, Any]) -> str:
    """The default's frontend count as its log showed it, as " (--frontends N)"; "" when unknown."""
    frontends = default_frontends(results)
    return "" if frontends is None else f" (--frontends {frontends})"


# -- --frontends 0 / 1 / 2 -------------------------------------------------------------------------------
def shapes_table(results: dict[str, Any]) -> str:
    cs = sorted({r["sessions"] for r in results.get("runs", []) if r["mode"] == "pingpong"})
    rows = [
        "| C | echo tokens/s | --frontends 0 | --frontends 1 | default | f1 ÷ f0 | default ÷ f0 | "
        "p50 ms echo / f0 / f1 / default |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cs:
        runs = {s: find_run(results, s, "pingpong", c) for s in ("echo", *SHAPES)}
        t = {s: tps(r) for s, r in runs.items()}
        ratio = {s: (t[s] / t["ours-f0"] if t[s] and t["ours-f0"] else None) for s in ("ours-f1", "ours")}
        lat = " / ".join(_ms(p50(runs[s])) for s in ("echo", *SHAPES))
        rows.append(
            f"| {c} | {_num(t['echo'])} | {_num(t['ours-f0'])} | {_num(t['ours-f1'])} | {_num(t['ours'])} | "
            f"{_num(ratio['ours-f1'], 2)}× | {_num(ratio['ours'], 2)}× | {lat} |"
        )
    return "\n".join(rows)


# -- CPU per token per process ---------------------------------------------------------------------------
def _balance(run: dict[str, Any]) -> str:
    """How the frontends shared the work: each one's share of the frontends' CPU."""
    # Whole processes only: "frontend-1", not its threads ("frontend-1:main", ...).
    cpu = {k: v for k, v in (run.get("window_cpu_s") or {}).items() if k.startswith("frontend-") and ":" not in k}
    total = sum(cpu.values())
    if len(cpu) < 2 or total <= 0:
        return ""
    return " / ".join(f"{v / total:.0%}" for _, v in sorted(cpu.items()))


def cpu_table(results: dict[str, Any]) -> str:
    rows = [
        "| C | system | tokens/s | engine | frontends | supervisor | one process | echo | server total | "
        "loadgen | cores busy (server + loadgen) | frontend shares |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    cs = sorted({r["sessions"] for r in results.get("runs", []) if r["mode"] == "pingpong"})
    for c in cs:
        for system in CPU_SYSTEMS:
            run = find_run(results, system, "pingpong", c)
            costs = (run or {}).get("cpu_us_per_token")
            if not costs:
                continue
            server = sum(v for k, v in costs.items() if k != "loadgen")
            busy = sum((run.get("cores_busy") or {}).values())
            cells = [_num(costs.get(k), 0) for k in CPU_KINDS]
            rows.append(
                f"| {c} | {SHAPE_LABELS.get(system, system)} | {_num(tps(run))} | {' | '.join(cells[:5])} | "
                f"{_num(server, 0)} | {cells[5]} | {busy:.2f} | {_balance(run)} |"
            )
    return "\n".join(rows)


THREAD_GROUPS = ("main", "zmq", "grpc", "other")
PROCESS_NAMES = {"engine": "engine", "frontend": "frontends", "server": "one process"}


def threads_table(results: dict[str, Any]) -> str:
    rows = [
        "| C | system | process | main thread | ZeroMQ I/O | gRPC core | other threads |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    cs = sorted({r["sessions"] for r in results.get("runs", []) if r["mode"] == "pingpong"})
    for c in cs:
        for system in SHAPES:
            threads = (find_run(results, system, "pingpong", c) or {}).get("thread_us_per_token") or {}
            for process, name in PROCESS_NAMES.items():
                if not any(k.startswith(f"{process}:") for k in threads):
                    continue
                cells = " | ".join(_num(threads.get(f"{process}:{g}"), 0) for g in THREAD_GROUPS)
                rows.append(f"| {c} | {SHAPE_LABELS[system]} | {name} | {cells} |")
    return "\n".join(rows)


# -- the scaling model -----------------------------------------------------------------------------------
def model_costs(results: dict[str, Any], c: int) -> tuple[str, scaling.Costs, float] | None:
    """(system, costs with the clients elsewhere, the loadgen's µs/token) from the default's run at C
    (the multi-frontend shape), else the one-frontend run's."""
    for system in ("ours", "ours-f1"):
        costs = (find_run(results, system, "pingpong", c) or {}).get("cpu_us_per_token") or {}
        if costs.get("engine") and costs.get("frontend"):
            model = scaling.Costs(costs["engine"], costs["frontend"], 0.0, costs.get("supervisor", 0.0))
            return system, model, costs.get("loadgen", 0.0)
    return None


def verdict(c: int, costs: scaling.Costs) -> str:
    """Where the next bottleneck is on each core count, and what to set there, in words."""
    saturate = scaling.frontends_to_saturate_engine(costs)
    each = []
    for cores in SCALING_CORES:
        p = scaling.recommend(costs, cores)
        each.append(
            f"on {cores} cores the {p.bottleneck} at {p.tokens_per_s:,.0f} tokens/s with `--frontends {p.frontends}`"
        )
    return (
        f"Measured at C={c}: the engine process costs {costs.engine:.0f} µs of CPU per token, so alone it answers "
        f"at most {1e6 / costs.engine:,.0f} tokens/s, and {saturate} frontend(s) ({costs.frontend:.0f} µs/token "
        f"between them) keep it busy. The next bottleneck: {'; '.join(each)}."
    )


def scaling_section(results: dict[str, Any]) -> list[str]:
    rows = [
        "| measured at | cores | --frontends | predicted tokens/s | bottleneck | engine bound | frontends bound | "
        "cores bound |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    checks, verdicts = [], []
    for c in (64, 256):
        found = model_costs(results, c)
        if found is None:
            continue
        system, costs, client = found
        label = f"C={c} ({SHAPE_LABELS[system]}: engine {costs.engine:.0f}, frontends {costs.frontend:.0f} µs/token)"
        roles = find_run(results, system, "pingpong", c).get("roles") or {}
        measured_frontends = len([r for r in roles if r.startswith("frontend-")]) or 1
        with_client = scaling.Costs(costs.engine, costs.frontend, client, costs.supervisor)
        here = scaling.predict(with_client, 2, measured_frontends)
        checks.append(
            f"C={c}: the model with the load generator on the box ({client:.0f} µs/token) predicts "
            f"{here.tokens_per_s:,.0f} tokens/s on 2 cores with {measured_frontends} frontend(s) ({here.bottleneck}); "
            f"measured {tps(find_run(results, system, 'pingpong', c)) or 0:,.0f}."
        )
        for cores in SCALING_CORES:
            p = scaling.recommend(costs, cores)
            rows.append(
                f"| {label} | {cores} | {p.frontends} | {p.tokens_per_s:,.0f} | {p.bottleneck} | "
                f"{p.engine_bound:,.0f} | {p.frontends_bound:,.0f} | {p.cores_bound:,.0f} |"
            )
        verdicts.append(verdict(c, costs))
    if len(rows) == 2:
        return ["Not measured in this run (needs ours at C=64 or C=256 with the engine's and frontends' CPU)."]
    return [
        "From the CPU per token of each process above (clients on other machines: the load generator's share "
        "is left out), `bench/scaling.py` predicts the most single-token throughput on a bigger machine: "
        "min(1e6 / engine µs, N × 1e6 / frontend µs, cores × 1e6 / (engine + frontends) µs) — the engine process "
        "is single-threaded (one core at most), each frontend an event loop (about one core), and all of them "
        "share the cores. *--frontends* is the fewest that reach the best prediction.",
        "",
        "\n".join(rows),
        "",
        *(f"- {v}" for v in verdicts),
        "",
        "Check of the model against this machine: " + " ".join(checks),
        "",
        "Left out of the model: the engine's cost per token falls as batches grow (more sessions than measured "
        "here lower it), a frontend's cost per token may rise when it gets a thinner share of the traffic, and "
        "memory bandwidth, kernel networking and hyper-threads do not scale exactly with cores.",
    ]


# -- session operations ----------------------------------------------------------------------------------
def session_ops_section(ops: dict[str, Any] | None) -> list[str]:
    if not ops:
        return ["Not measured in this run."]
    if ops.get("error"):
        return [f"Failed: {ops['error']}"]
    rpc, engine = ops["rpc"], ops.get("engine") or {}
    r, e = rpc["operations"], engine.get("operations", {})

    def cell(figs: dict[str, Any], key: str) -> str:
        f = figs.get(key) or {}
        return f"{_num(f.get('p50_us'))} / {_num(f.get('mean_us'))}"

    step = engine.get("step", {})
    rows = [
        "| operation | over RPC: p50 / mean µs | engine in-process: p50 / mean µs | "
        "frontend in-process: p50 / mean µs |",
        "|---|---:|---:|---:|",
        f"| Predict, one token | {cell(r, 'predict')} | {_num(step.get('p50_us'))} / {_num(step.get('mean_us'))} "
        "(the model step, batch 1) | — |",
        f"| GetSession | {cell(r, 'get')} | — | — |",
        f"| ForkSession | {cell(r, 'fork')} | {cell(e, 'fork')} | — |",
        f"| ExportSession | {cell(r, 'export')} | {cell(e, 'export')} | {cell(e, 'blob encode')} (blob encode) |",
        f"| ImportSession | {cell(r, 'import')} | {cell(e, 'import')} | {cell(e, 'blob decode')} (blob check) |",
    ]
    errors = f" Errors: {rpc['errors']}." if rpc.get("errors") else ""
    return [
        f"{rpc['sessions']} sessions with a history of {rpc['history_tokens']} tokens each, {rpc['rounds']} rounds; "
        "one call at a time against ours (default settings), every operation in turn on each session. The "
        f"exported blob is **{_num(rpc.get('blob_bytes'))} bytes** ({_num(engine.get('state_bytes'))} bytes of "
        "state plus the model's fingerprint, architecture, layout and a sha256). In-process: the engine's "
        "SessionOps on a pool (no RPC) and the frontend's blob encoding and checking." + errors,
        "",
        "\n".join(rows),
    ]


# -- the whole ---------------------------------------------------------------------------------------------
def sections(results: dict[str, Any]) -> list[str]:
    return [
        "## Process shapes: --frontends 0, --frontends 1, default",
        "",
        "Single tokens, ping-pong, the same loads as above: one process (engine on a thread beside gRPC), one "
        f"frontend in front of the engine process, and the default{_default_shape(results)}.",
        "",
        shapes_table(results),
        "",
        "## CPU per token, per process",
        "",
        "µs of CPU (utime+stime from /proc, sampled every 0.1 s) per token answered, over the measured window "
        "only, by process: the engine process, all frontends together, the supervisor, the one-process server "
        "(--frontends 0), the echo server and the load generator. *cores busy* is their CPU over the window's "
        "seconds; *frontend shares* how the frontends split their work.",
        "",
        cpu_table(results),
        "",
        "The same, by thread (µs of CPU per token): the main thread runs the event loop (a frontend, the one "
        "process) or the engine's loop; ZeroMQ's I/O thread moves the messages between the engine and the "
        "frontends; gRPC's core threads and the other threads (gRPC's poller, the metrics server) serve the "
        "connections.",
        "",
        threads_table(results),
        "",
        "## Scaling model: 8 and 16 cores",
        "",
        *scaling_section(results),
        "",
        "## Session operations",
        "",
        *session_ops_section(results.get("session_ops")),
        "",
    ]


def profiles_section(results: dict[str, Any]) -> list[str]:
    profiles = results.get("profiles") or {}
    if not profiles:
        return []
    out = ["## Profiles (py-spy, ours, pingpong C=64)", ""]
    for role, prof in profiles.items():
        out += [f"**{role}** — full summary: `{prof['summary']}`.", "", "```", prof["by_package"], "```", ""]
    return out

"""The "Many replicas (issue 13)" section of RESULTS.md and its plot panel, from bench/cluster.py's results.

Pure functions of the results dict (no parts started here), so the report renders from a
finished run, or from one whose cluster parts failed or were not installed.
"""

from __future__ import annotations

from typing import Any

from targets import median_tps

ORDER = ("direct", "nginx-off", "nginx-async", "nginx-sync")
LABELS = {
    "direct": "1 replica, direct, store off",
    "nginx-off": "3 replicas via nginx, store off",
    "nginx-async": "3 via nginx, Redis, durability async",
    "nginx-sync": "3 via nginx, Redis, durability sync",
}
SHORT_LABELS = {
    "direct": "1 direct",
    "nginx-off": "3 nginx\noff",
    "nginx-async": "3 nginx\nasync",
    "nginx-sync": "3 nginx\nsync",
}
PARTS = ("replicas", "nginx", "redis", "loadgen")


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    return "—" if value is None else (f"{value:.3f}" if value < 10 else f"{value:.1f}")


def _rows(cluster: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The rows of one topology, by round."""
    found = [r for r in cluster.get("rows", []) if r.get("topology") == name]
    return sorted(found, key=lambda r: r.get("round", 1))


def throughput_table(cluster: dict[str, Any]) -> str:
    all_rows = cluster.get("rows", [])
    off = median_tps(all_rows, "nginx-off")
    lines = [
        "| topology | round | tokens/s | vs 3 via nginx, off (median) | p50 ms | p90 ms | p99 ms | errors | "
        "cores busy: replicas / nginx / redis / loadgen | redis commands per token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, row in ((n, r) for n in ORDER for r in _rows(cluster, n)):
        lg = row.get("loadgen")
        if not lg:
            lines.append(f"| {LABELS[name]} | {row.get('round', 1)} | failed: {row.get('error', '?')} | | | | | | | |")
            continue
        lat = lg.get("latency_ms") or {}
        tps = lg.get("tokens_per_s")
        ratio = f"{tps / off:.2f}×" if tps and off else "—"
        cores = row.get("cores_busy") or {}
        busy = " / ".join(_num(cores.get(p), 2) for p in PARTS)
        errors = ", ".join(f"{k} {v}" for k, v in (lg.get("errors") or {}).items()) or "0"
        lines.append(
            f"| {LABELS[name]} | {row.get('round', 1)} | {_num(tps)} | {ratio} | {_ms(lat.get('p50'))} | "
            f"{_ms(lat.get('p90'))} | {_ms(lat.get('p99'))} | {errors} | {busy} | "
            f"{_num(row.get('redis_commands_per_token'), 2)} |"
        )
    failed = [r for r in cluster.get("rows", []) if not r.get("topology") and r.get("error")]
    lines += [f"| {r.get('step', '?')} | | failed: {r['error']} | | | | | | | |" for r in failed]
    return "\n".join(lines)


def failover_table(failover: dict[str, Any]) -> str:
    lines = [
        "| kill | failover s | calls tried | killed | taken over by | acknowledged before | position after | "
        "lost | restart s |",
        "|---:|---:|---:|---|---|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(failover.get("rounds", []), 1):
        if "error" in r:
            lines.append(f"| {i} | failed: {r['error']} | | | | | | | |")
            continue
        lines.append(
            f"| {i} | {r['failover_s']:.3f} | {r['attempts']} | {r['killed']} | {r['taken_over_by']} | "
            f"{r['acked_before_kill']} | {r['position_after']} | {r['lost_acked_tokens']} | {r['restart_s']:.1f} |"
        )
    return "\n".join(lines)


def section(cluster: dict[str, Any] | None) -> list[str]:
    head = ["## Many replicas (issue 13)", ""]
    if not cluster:
        return [*head, "Not measured in this run.", ""]
    plan = cluster.get("plan") or {}
    costs = cluster.get("costs") or {}
    parts = [
        *head,
        "The real parts the tests run (tests/cluster/): Debian's redis-server with append-only persistence "
        "(appendfsync everysec), replicas that are each a whole `seqpredict-server` with one frontend "
        "(supervisor, engine process, a frontend: three replicas on two cores), and nginx running the shipped "
        "deploy/nginx/nginx.conf rendered onto loopback. Each row starts its parts fresh. The load: "
        f"{plan.get('sessions', '?')} sessions, single tokens ping-pong on one Predict stream each, over "
        f"{plan.get('channels', '?')} connections, every call carrying `x-session-id` (nginx hashes on it); "
        f"{plan.get('warmup', '?')} s warm-up, {plan.get('duration', '?')} s measured. Latency is per request "
        "(write to answer). The three rows through nginx run "
        f"{plan.get('rounds', 1)} round(s) in alternating order (off, async, sync, then the reverse); the costs "
        "are ratios of the medians. *cores busy*: each part's CPU (utime+stime of its process tree, /proc) over "
        "the load's run, warm-up included.",
        "",
        "**This machine has 2 cores**: three replicas (nine processes), nginx's workers, redis-server and the "
        "load generator all share them, so the replicas together get about what one replica gets alone — three "
        "replicas here measure what the proxy, the store and their hops cost, not what more replicas buy. On a "
        "machine with a core per replica process the store-off throughput grows with the replicas, and the "
        "durability costs below are the figures to read: sync adds one pipelined Redis round trip per engine "
        "batch before its answers leave, async commits in the background.",
        "",
        throughput_table(cluster),
        "",
    ]
    found = []
    for mode in ("async", "sync"):
        cost = costs.get(mode)
        if cost is not None and cost >= 0:
            found.append(f"{mode} durability costs **{cost:.0%}** of the store-off throughput")
        elif cost is not None:  # faster than the store off: no cost this run could measure
            found.append(f"{mode} durability measured {-cost:.0%} *faster* than the store off (noise: no cost seen)")
    if costs.get("nginx_vs_direct") is not None:
        found.append(f"three replicas through nginx give {costs['nginx_vs_direct']:.2f}× one replica direct")
    if found:
        parts += ["Measured: " + "; ".join(found) + " (goals: sync ≤ 30 %, async ≤ 10 %).", ""]
    parts += ["### Failover", ""]
    failover = cluster.get("failover")
    if not failover:
        parts += ["Not measured in this run.", ""]
    elif failover.get("error"):
        parts += [f"Failed: {failover['error']}", ""]
    else:
        bg = failover.get("background") or {}
        bg_errors = ", ".join(f"{k} {v}" for k, v in (bg.get("errors") or {}).items()) or "none"
        parts += [
            "Sync durability, 3 replicas behind nginx, a background load of "
            f"{failover.get('background_sessions', '?')} ping-pong sessions through nginx. Each round feeds a new "
            "probe session a few tokens through nginx, one call per token with expected_position; the replica "
            "nginx's access log names for it is SIGKILLed (its whole process group, as a crash); the probe's next "
            "token is sent at once and retried on UNAVAILABLE until answered. *failover s*: from the SIGKILL to "
            "that answer; *lost*: tokens acknowledged before the kill missing from the session's position "
            "afterwards (GetSession through nginx; expected_position makes a retried token apply at most once). "
            "The killed replica is then started again on its ports, and the next round waits nginx's "
            "fail_timeout (2 s) so it is back in the ring.",
            "",
            f"**p50 {_num(failover.get('p50_s'), 3)} s, p99 {_num(failover.get('p99_s'), 3)} s** over "
            f"{failover.get('samples', 0)} kills (p99: nearest rank, the largest of fewer than 100), "
            f"{failover.get('failed_rounds', 0)} round(s) not recovered, **{failover.get('lost_acked_tokens', 0)} "
            f"acknowledged tokens lost**. Background load: {_num(bg.get('tokens_per_s'))} tokens/s over the rounds, "
            f"errors seen by its streams when their replica died: {bg_errors} (the load generator opens a new "
            "stream after an error; it does not use expected_position, so it is not counted for losses).",
            "",
            failover_table(failover),
            "",
        ]
    return parts


def plot_panel(ax: Any, cluster: dict[str, Any] | None) -> None:
    """Bars: tokens/s of each topology (median over rounds), with the worst round's p99 latency on each bar."""
    all_rows = (cluster or {}).get("rows", [])
    names = [n for n in ORDER if median_tps(all_rows, n)]
    if not names:
        ax.set_axis_off()
        ax.set_title("Many replicas: not measured")
        return
    values = [median_tps(all_rows, n) for n in names]
    colors = {"direct": "tab:blue", "nginx-off": "tab:gray", "nginx-async": "tab:olive", "nginx-sync": "tab:red"}
    bars = ax.bar(range(len(names)), values, color=[colors[n] for n in names], edgecolor="black", linewidth=0.4)
    for bar, n in zip(bars, names, strict=True):
        p99s = [r["loadgen"]["latency_ms"].get("p99") for r in _rows(cluster or {}, n) if r.get("loadgen")]
        p99 = max((v for v in p99s if v is not None), default=None)
        ax.annotate(
            f"p99 {_ms(p99)} ms",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_xticks(range(len(names)), [SHORT_LABELS[n] for n in names], fontsize=7)
    ax.set_ylabel("tokens/s, C=64 ping-pong (median of rounds)")
    failover = (cluster or {}).get("failover") or {}
    extra = f"; failover p99 {failover['p99_s']:.2f} s" if failover.get("p99_s") is not None else ""
    ax.set_title(f"Many replicas (2 cores shared){extra}", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)

"""Issue 13's `cluster` section: many replicas behind nginx, with the session state in Redis.

The parts are the real ones the tests start (tests/cluster/): Debian's redis-server with
append-only persistence, replicas that are each a whole server (`seqpredict-server`: a
supervisor, the engine process and one frontend), and nginx running the shipped
deploy/nginx/nginx.conf rendered onto loopback. Every call of the load carries its session
id in `x-session-id` metadata, which nginx hashes on (bench/loadgen.py --session-header).

Throughput: C sessions, single tokens ping-pong (the same load shape and window as the
pingpong rows of the main benchmark), for four topologies —
  direct       1 replica, no proxy, store off
  nginx-off    3 replicas through nginx, store off
  nginx-async  3 replicas through nginx, --state-store redis://… --durability async
  nginx-sync   the same with --durability sync
— and the cost of each durability mode against the store-off row of the same topology.
While a load runs, the CPU of every part (the replicas, nginx, redis-server, the load
generator) is read from /proc, so the report can say how the two cores were shared.

Failover, with sync durability, 3 replicas behind nginx and a background load: a probe
session is fed through nginx one token at a time with expected_position; the replica nginx
sent it to (from nginx's access log) is SIGKILLed (its whole process group, a crash), and the
probe's next token is sent at once and retried on UNAVAILABLE until it is answered. The time
from the SIGKILL to that answer is one failover sample; the session's position is then checked
against the tokens acknowledged before (lost acknowledged tokens: must be 0 in sync mode). The
replica is started again on its ports, and the next round waits for nginx to take it back.

    .venv/bin/python bench/cluster.py --short        # a quick run, JSON on stdout
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))  # tests/cluster: the same redis, replicas and nginx the test suite runs

import grpc  # noqa: E402
from proctree import tree_cpu_seconds  # noqa: E402
from targets import median_tps  # noqa: E402

from seqpredict.v1 import seqpredict_pb2 as pb  # noqa: E402
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc  # noqa: E402
from tests.cluster.nginx_conf import running_nginx  # noqa: E402
from tests.cluster.replicas import REDIS, REPLICA_SHAPE, RedisServer, Replicas  # noqa: E402

ROUTING = "x-session-id"
# Issue 13's goals.
SYNC_MAX_COST = 0.30  # sync durability costs at most 30 % of the store-off throughput, same topology
ASYNC_MAX_COST = 0.10  # async at most 10 %
FAILOVER_P99_S = 2.0  # p99 time from the SIGKILL to the affected session's next answer
# nginx's fail_timeout in deploy/nginx/nginx.conf: a restarted replica is back in the ring after it.
NGINX_FAIL_TIMEOUT_S = 2.0
ROUND_TIMEOUT_S = 30.0  # a failover round that has not recovered by then is recorded as failed


@dataclass(frozen=True)
class Topology:
    name: str
    replicas: int
    proxy: bool
    durability: str | None  # None: no store

    @property
    def label(self) -> str:
        via = "through nginx" if self.proxy else "direct"
        store = f"Redis, durability {self.durability}" if self.durability else "store off"
        return f"{self.replicas} replica{'s' if self.replicas > 1 else ''} {via}, {store}"


TOPOLOGIES = (
    Topology("direct", 1, False, None),
    Topology("nginx-off", 3, True, None),
    Topology("nginx-async", 3, True, "async"),
    Topology("nginx-sync", 3, True, "sync"),
)


@dataclass(frozen=True)
class ClusterPlan:
    sessions: int  # C of the throughput rows
    channels: int  # client connections the load spreads its streams over
    warmup: float
    duration: float
    kills: int  # failover rounds
    failover_load: int  # sessions of the background load during failover
    probe_tokens: int  # tokens the probe session is fed before each kill
    # Rounds of the three rows through nginx, in alternating order (off, async, sync, then sync,
    # async, off): the costs are ratios of medians, so drifting background load hits each mode alike.
    rounds: int = 1


FULL = ClusterPlan(
    sessions=64, channels=8, warmup=3.0, duration=15.0, kills=10, failover_load=16, probe_tokens=8, rounds=2
)
SHORT = ClusterPlan(sessions=64, channels=8, warmup=1.0, duration=3.0, kills=3, failover_load=8, probe_tokens=4)


def estimate_seconds(plan: ClusterPlan) -> float:
    """Measured on the 2-core machine: ~15 s to start three replicas (each a torch import in two
    processes), ~1 s for redis and nginx, ~2 s loadgen start-up and wind-down per row, and per
    failover round the feeds, the kill, the recovery (< 1 s), the restart under the background
    load (~19 s) and nginx's fail_timeout (2.5 s)."""
    per_row = 2 + plan.warmup + plan.duration
    rows = 8 + per_row + plan.rounds * sum(15 + per_row for t in TOPOLOGIES if t.proxy)
    return rows + 20 + plan.kills * 22


def missing_parts() -> list[str]:
    """The Debian programs this section needs that are not installed (`make system-deps` installs them)."""
    wanted = {"redis-server": REDIS, "redis-cli": "redis-cli", "nginx": None}
    missing = []
    for name, path in wanted.items():
        if shutil.which(name) is None and not (path and Path(path).exists()) and not Path(f"/usr/sbin/{name}").exists():
            missing.append(name)
    return missing


def empty(plan: ClusterPlan) -> dict[str, Any]:
    """The section's results before any part ran: filled in by record()."""
    return {"plan": asdict(plan), "rows": [], "failover": None, "costs": costs([])}


def steps(plan: ClusterPlan, work_dir: Path) -> list[tuple[str, Callable[[], dict[str, Any]]]]:
    """(label, run) for each throughput row and the failover, for a caller showing progress
    (bench/run.py); pass each result to record()."""
    out: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for r in range(plan.rounds):
        order = [t for t in TOPOLOGIES if t.proxy or r == 0]  # one replica direct: the first round only
        if r % 2:
            order.reverse()
        for t in order:
            label = f"cluster {t.name} C={plan.sessions}" + (f" (round {r + 1})" if plan.rounds > 1 else "")
            out.append((label, lambda t=t, r=r: run_topology(t, plan, work_dir / f"{t.name}-{r + 1}", r + 1)))
    out.append((f"cluster failover ×{plan.kills}", lambda: run_failover(plan, work_dir / "failover")))
    return out


def guarded(step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A part's result, or its error: one part failing (or a program missing) never stops the others."""
    missing = missing_parts()
    if missing:
        return {"error": f"not installed: {', '.join(missing)} (Debian's packages; make system-deps)"}
    try:
        return step()
    except Exception as exc:  # recorded in the report; the next part still runs
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def record(results: dict[str, Any], label: str, result: dict[str, Any]) -> None:
    if "failover" in label:
        results["failover"] = result
    else:
        results["rows"].append({"step": label, **result})
    results["costs"] = costs(results["rows"])


def summary_line(result: dict[str, Any]) -> str:
    """One line for the progress output."""
    if result.get("error"):
        return f"failed: {result['error'][:300]}"
    if "rounds" in result:
        return (
            f"failover p50 {result['p50_s']} s  p99 {result['p99_s']} s  over {result['samples']} kills, "
            f"{result['failed_rounds']} not recovered, {result['lost_acked_tokens']} acknowledged tokens lost"
        )
    lg = result.get("loadgen") or {}
    lat = lg.get("latency_ms") or {}
    cores = " ".join(f"{k} {v}" for k, v in (result.get("cores_busy") or {}).items())
    return (
        f"{lg.get('tokens_per_s', 0):9,.0f} tokens/s  p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms  "
        f"cores busy: {cores}  errors {lg.get('error_count')}"
    )


def run_all(plan: ClusterPlan, work_dir: Path, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every row and the failover, in order."""
    results = empty(plan)
    for label, step in steps(plan, work_dir):
        if progress:
            progress(label)
        record(results, label, guarded(step))
    return results


# -- the parts ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_server(work_dir: Path) -> Iterator[RedisServer]:
    redis = RedisServer(work_dir / "redis")
    try:
        yield redis
    finally:
        redis.stop()


@contextlib.contextmanager
def replica_set(work_dir: Path, count: int, store_url: str | None, durability: str | None) -> Iterator[Replicas]:
    """`count` replicas, each a ServerProcess (its own process group); all SIGKILLed at the end."""
    work_dir.mkdir(parents=True, exist_ok=True)
    if store_url:
        replicas = Replicas(work_dir, store_url, durability or "sync")
    else:  # Replicas always passes a store; without one, the same replicas with only the drain grace
        replicas = Replicas(work_dir, "", "off")
        replicas.args = (*REPLICA_SHAPE, "--grace-s", "10")
    try:
        replicas.add(count)
        yield replicas
    finally:
        replicas.stop_all()


@contextlib.contextmanager
def front(topology: Topology, replicas: Replicas, work_dir: Path) -> Iterator[tuple[str, Path | None]]:
    """(the address the clients use, nginx's folder or None)."""
    if not topology.proxy:
        yield replicas[0].address, None
        return
    prefix = work_dir / "nginx"
    with running_nginx([r.address for r in replicas], prefix) as port:
        yield f"127.0.0.1:{port}", prefix


def nginx_pid(prefix: Path | None) -> int | None:
    if prefix is None:
        return None
    with contextlib.suppress(OSError, ValueError):
        return int((prefix / "nginx.pid").read_text().strip())
    return None


def _parts(replicas: Replicas, nginx: int | None, redis: RedisServer | None) -> dict[str, list[int]]:
    parts = {"replicas": [r.proc.pid for r in replicas]}
    if nginx:
        parts["nginx"] = [nginx]
    if redis is not None and redis.proc is not None:
        parts["redis"] = [redis.proc.pid]
    return parts


def _cpu(pids: list[int]) -> float:
    return sum(tree_cpu_seconds(pid) for pid in pids)


# -- throughput ---------------------------------------------------------------------------------------------


def loadgen_argv(target: str, plan: ClusterPlan, sessions: int, warmup: float, duration: float) -> list[str]:
    return [
        sys.executable,
        str(BENCH_DIR / "loadgen.py"),
        *("--target", target, "--mode", "pingpong", "--sessions", str(sessions)),
        *("--channels", str(min(plan.channels, sessions)), "--warmup", str(warmup), "--duration", str(duration)),
        *("--session-header", "--progress", "0", "--json"),
    ]


def run_topology(topology: Topology, plan: ClusterPlan, work_dir: Path, round_: int = 1) -> dict[str, Any]:
    """One throughput row: the parts started fresh, one load, the parts stopped."""
    work_dir.mkdir(parents=True, exist_ok=True)
    row: dict[str, Any] = {"topology": topology.name, "label": topology.label, "round": round_, **asdict(topology)}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(work_dir)) if topology.durability else None
        replicas = stack.enter_context(
            replica_set(work_dir, topology.replicas, redis.url if redis else None, topology.durability)
        )
        target, prefix = stack.enter_context(front(topology, replicas, work_dir))
        parts = _parts(replicas, nginx_pid(prefix), redis)
        commands0 = redis_commands(redis)
        before = {name: _cpu(pids) for name, pids in parts.items()}
        started = time.monotonic()
        argv = loadgen_argv(target, plan, plan.sessions, plan.warmup, plan.duration)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=plan.warmup + plan.duration + 120)
        wall = time.monotonic() - started
        after = {name: _cpu(pids) for name, pids in parts.items()}
        try:
            row["loadgen"] = lg = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            row["error"] = f"loadgen exited {done.returncode}: {done.stderr.strip()[-500:]}"
            return row
        # CPU of each part over the whole load run (warm-up included), as cores busy: how two
        # cores were shared between the replicas, nginx, redis and the load generator.
        cores = {name: round((after[name] - before[name]) / wall, 2) for name in parts}
        cores["loadgen"] = round(lg["client_cpu_s"] / wall, 2)
        row["cores_busy"] = cores
        tokens = lg["tokens_total"]
        row["cpu_us_per_token"] = {
            name: round((after[name] - before[name]) / tokens * 1e6, 1) for name in parts if tokens
        }
        if redis is not None and tokens:  # round trips to the store per token: batching at work
            row["redis_commands_per_token"] = round((redis_commands(redis) - commands0) / tokens, 3)
    return row


def redis_commands(redis: RedisServer | None) -> int:
    """Commands redis-server has processed since it started (INFO stats)."""
    if redis is None:
        return 0
    for line in redis.cli("info", "stats").splitlines():
        if line.startswith("total_commands_processed:"):
            return int(line.split(":", 1)[1])
    return 0


def tps(row: dict[str, Any] | None) -> float | None:
    lg = (row or {}).get("loadgen") or {}
    return lg.get("tokens_per_s") or None


def costs(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each durability mode's throughput cost against the store-off rows through nginx (medians over rounds)."""
    off = median_tps(rows, "nginx-off")
    out: dict[str, Any] = {}
    for mode in ("async", "sync"):
        t = median_tps(rows, f"nginx-{mode}")
        out[mode] = round(1 - t / off, 3) if t and off else None
    direct = median_tps(rows, "direct")
    out["nginx_vs_direct"] = round(off / direct, 3) if off and direct else None
    return out


# -- failover -----------------------------------------------------------------------------------------------


class Probe:
    """One session fed through nginx, one token per call, each with expected_position."""

    def __init__(self, address: str, sid: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.SequencePredictorStub(self.channel)
        self.sid = sid
        self.acked = 0  # tokens the server acknowledged (answers received)
        self.lost = 0  # acknowledged tokens a later answer showed missing
        self.applied_unanswered = 0  # attempts that failed on the wire but turned out applied

    def close(self) -> None:
        self.channel.close()

    def feed(self, timeout: float = 10.0) -> pb.PredictResponse:
        """One token; raises grpc.RpcError on a failed call. An in-band FAILED_PRECONDITION tells
        the session's real position: higher by one, the previous attempt was applied (counted,
        never sent again); lower, acknowledged tokens were lost (counted, then fed on from there)."""
        request = pb.PredictRequest(session_id=self.sid, tokens=[1], expected_position=self.acked)
        (answer,) = self.stub.Predict(iter([request]), metadata=((ROUTING, self.sid),), timeout=timeout)
        if answer.HasField("error") and answer.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]:
            if answer.position > self.acked:
                self.applied_unanswered += answer.position - self.acked
            else:
                self.lost += self.acked - answer.position
            self.acked = answer.position
            return self.feed(timeout)
        if answer.HasField("error"):
            raise RuntimeError(f"probe answer error {answer.error.code}: {answer.error.message}")
        self.acked = answer.position
        return answer

    def position(self) -> int:
        request = pb.GetSessionRequest(session_id=self.sid)
        return self.stub.GetSession(request, metadata=((ROUTING, self.sid),), timeout=10).position


def holder_address(access_log: Path, sid: str) -> str | None:
    """The replica nginx last sent the session's calls to, from its access log (upstream=…)."""
    found = None
    with contextlib.suppress(OSError):
        for line in access_log.read_text(errors="replace").splitlines():
            if f"session={sid} " in line and "upstream=" in line:
                # "upstream=A, B upstream_status=…" when nginx tried A, then B: the last one answered.
                tried = line.split("upstream=", 1)[1].split(" upstream_status=", 1)[0]
                found = tried.split(",")[-1].strip()
    return found


def _background_load(target: str, plan: ClusterPlan, log: Path) -> subprocess.Popen[str]:
    argv = loadgen_argv(target, plan, plan.failover_load, 0.0, 0.0)  # --duration 0: until SIGTERM
    with open(log, "a") as err:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, text=True)


def _stop_background(proc: subprocess.Popen[str]) -> dict[str, Any] | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        stdout, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, _ = proc.communicate()
    with contextlib.suppress(IndexError, json.JSONDecodeError):
        return json.loads(stdout.strip().splitlines()[-1])
    return None


def failover_round(probe: Probe, replicas: Replicas, access_log: Path, tokens: int) -> dict[str, Any]:
    """Feed, SIGKILL the probe's replica, time the next answer, check the position, restart it."""
    for _ in range(tokens):
        probe.feed()
    address = holder_address(access_log, probe.sid)
    victim = next((r for r in replicas if r.address == address), None)
    if victim is None:
        raise RuntimeError(f"nginx's log does not say which replica holds {probe.sid} (found {address!r})")
    acked_before = probe.acked
    killed = time.monotonic()
    victim.kill()
    attempts, codes = 0, {}
    while True:
        attempts += 1
        try:
            probe.feed(timeout=ROUND_TIMEOUT_S)
            answered = time.monotonic()
            break
        except grpc.RpcError as exc:
            codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
            if time.monotonic() - killed > ROUND_TIMEOUT_S:
                raise RuntimeError(f"no answer {ROUND_TIMEOUT_S:.0f} s after the kill ({codes})") from exc
            time.sleep(0.005)
    position = probe.position()
    new_holder = holder_address(access_log, probe.sid)
    restarted = time.monotonic()
    replicas.restart(victim)
    restart_s = time.monotonic() - restarted
    return {
        "failover_s": round(answered - killed, 4),
        "attempts": attempts,
        "failed_codes": codes,
        "killed": address,
        "taken_over_by": new_holder,
        "acked_before_kill": acked_before,
        "position_after": position,
        "expected_position_after": probe.acked,
        "applied_unanswered": probe.applied_unanswered,
        # Lost: answers showed fewer tokens than acknowledged, or the stored position disagrees.
        "lost_acked_tokens": probe.lost + max(probe.acked - position, 0),
        "restart_s": round(restart_s, 2),
    }


def run_failover(plan: ClusterPlan, work_dir: Path) -> dict[str, Any]:
    work_dir.mkdir(parents=True, exist_ok=True)
    topology = Topology("failover", 3, True, "sync")
    out: dict[str, Any] = {"rounds": [], "durability": "sync", "replicas": 3, "background_sessions": plan.failover_load}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(redis_server(work_dir))
        replicas = stack.enter_context(replica_set(work_dir, 3, redis.url, "sync"))
        target, prefix = stack.enter_context(front(topology, replicas, work_dir))
        assert prefix is not None
        background = _background_load(target, plan, work_dir / "background-loadgen.log")
        try:
            time.sleep(1.0)  # the background sessions are running before the first kill
            for k in range(plan.kills):
                probe = Probe(target, f"probe-{k}-{secrets.token_hex(3)}")
                try:
                    out["rounds"].append(failover_round(probe, replicas, prefix / "access.log", plan.probe_tokens))
                except Exception as exc:  # one failed round is reported, the others still run
                    out["rounds"].append({"error": f"{type(exc).__name__}: {exc}"[:1000]})
                finally:
                    probe.close()
                time.sleep(NGINX_FAIL_TIMEOUT_S + 0.5)  # nginx takes the restarted replica back
        finally:
            out["background"] = _stop_background(background)
    out.update(summarize_failover(out["rounds"]))
    return out


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100): with ten samples, p99 is the largest."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def summarize_failover(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["failover_s"] for r in rounds if "failover_s" in r]
    return {
        "samples": len(times),
        "failed_rounds": len([r for r in rounds if "error" in r]),
        "p50_s": round(statistics.median(times), 3) if times else None,
        "p99_s": percentile(times, 99),
        "max_s": max(times) if times else None,
        "lost_acked_tokens": sum(r.get("lost_acked_tokens", 0) for r in rounds),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="the quick plan (3 kills, 3 s windows)")
    p.add_argument("--kills", type=int, default=None, help="override the failover rounds")
    p.add_argument("--duration", type=float, default=None, help="override the measured seconds per row")
    p.add_argument("--out", type=Path, default=None, help="work folder for logs (default: a temporary one)")
    args = p.parse_args(argv)
    plan = SHORT if args.short else FULL
    if args.kills is not None:
        plan = ClusterPlan(**{**asdict(plan), "kills": args.kills})
    if args.duration is not None:
        plan = ClusterPlan(**{**asdict(plan), "duration": args.duration})
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        work = args.out or Path(tmp)
        results = run_all(plan, work, progress=lambda label: print(label, file=sys.stderr))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

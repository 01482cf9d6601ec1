"""`make soak`: a long mixed load against a server with low limits; fails on one wrong answer or on RSS growth.

The server runs as a child process with every limit set low (soak_context.py), so eviction
by capacity and by TTL, flow control and size refusals all happen all the time. Against it,
for --duration seconds (default 10 min), the drivers run side by side:

- soak_tracked.py: tracked sessions, every answer compared with tests/reference.py within 1e-5
  (and, when it misses, with the same model in float64: soak_check.py says why);
- soak_load.py: pipelined Predict streams over more ids than the server holds, Generate with
  every sampling option, churn of short sessions (bookkeeping checked on every answer);
- soak_bad.py: bad requests of every kind, each expected to get its documented code;
- soak_pipelines.py: one session pipelined on one stream, answered in full and in order — floods
  of maximal requests, and 10,000 single tokens — every answer checked against the reference;
- soak_unread.py: a client that writes large-answer requests and never reads, abandoning its
  stream every few seconds, in phases, so its effect on the rest is measured in the same run.

soak_check.py judges the answers and counts everything; this file starts the server, runs the
drivers, samples RSS and the answers so far every few seconds and hands it all to
soak_report.py, which gives the verdict and writes bench/soak/ (report.json; report.md by
soak_markdown.py, rss.png by soak_plot.py, from soak_figures.py's figures and soak_log.py's
reading of server.log). Exit status 1 if a single correct request was answered wrongly, a bad
one got the wrong code, RSS keeps growing, the load stalled, or the server logged an error the
soak cannot explain.

    .venv/bin/python bench/soak.py --duration 120
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/: the same reference and server process the test suite uses

import soak_report  # noqa: E402
import torch  # noqa: E402
from grpc import aio  # noqa: E402
from soak_bad import bad_requests  # noqa: E402
from soak_check import Checker, Tallies  # noqa: E402
from soak_context import LOAD_STREAMS, SERVER_FLAGS, Soak  # noqa: E402
from soak_load import GENERATORS, churn, generator, load_stream  # noqa: E402
from soak_pipelines import FLOOD, PIPELINE, pipelines  # noqa: E402
from soak_tracked import Tracked  # noqa: E402
from soak_unread import never_reads  # noqa: E402
from tqdm import tqdm  # noqa: E402

from seqpredict.models import load_checkpoint  # noqa: E402
from seqpredict.server.config import default_checkpoint  # noqa: E402
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc  # noqa: E402
from tests.bystanders import Metrics  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

TRACKED = 6


async def sample(server: ServerProcess, soak: Soak, duration: float, every: float) -> list[dict]:
    """RSS, a few gauges and the answers so far every `every` seconds, with a progress bar."""
    samples = []
    with tqdm(total=round(duration), unit="s", desc="soak", dynamic_ncols=True) as bar:
        while not soak.stop.is_set():
            elapsed = time.monotonic() - soak.started
            m = await asyncio.to_thread(Metrics, server.metrics_url)
            t = soak.tallies
            samples.append(
                {
                    "t": elapsed,
                    "rss_bytes": server.rss_bytes(),
                    "sessions": m.value("seqpredict_sessions_active"),
                    "streams": m.value("seqpredict_streams_active"),
                    "streams_paused": m.value("seqpredict_streams_paused"),
                    "calls": sum(t.outcomes.values()),  # what the rest of the load got answered: never_read has none
                    "never_read": soak.never_read_open,
                }
            )
            bar.set_postfix(
                calls=sum(t.outcomes.values()),
                checked=t.checked,
                wrong=t.wrong_count,
                rss=f"{samples[-1]['rss_bytes'] / 2**20:.0f}MB",
                sessions=int(samples[-1]["sessions"]),
            )
            bar.update(min(round(elapsed), round(duration)) - bar.n)
            if elapsed >= duration:
                soak.stop.set()
                break
            await asyncio.sleep(every)
    return samples


async def run(server: ServerProcess, duration: float, every: float) -> tuple[Tallies, list[dict]]:
    torch.set_num_threads(1)  # the reference runs beside the server on a shared machine
    checkpoint = load_checkpoint(default_checkpoint())
    tallies = Tallies()
    async with aio.insecure_channel(server.address) as channel:
        soak = Soak(
            pb_grpc.SequencePredictorStub(channel),
            channel,
            checkpoint.vocab,
            Checker(checkpoint.build_model(), tallies),
            asyncio.Event(),
        )
        workers = [
            *(Tracked(soak, n).run() for n in range(TRACKED)),
            *(load_stream(soak, w) for w in range(LOAD_STREAMS)),
            *(generator(soak, w) for w in range(GENERATORS)),
            churn(soak),
            bad_requests(soak),
            pipelines(soak, FLOOD, seed=21),
            pipelines(soak, PIPELINE, seed=22),
            never_reads(soak, server.address, seed=23),
        ]
        tasks = [asyncio.create_task(w) for w in workers]
        samples = await sample(server, soak, duration, every)
        done, pending = await asyncio.wait(tasks, timeout=60)
        for task in pending:
            task.cancel()
        for task in done:
            if task.exception() is not None:
                tallies.wrong_answer(f"a worker failed: {task.exception()!r}")
    return tallies, samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument(
        "--max-rss-slope",
        type=float,
        default=soak_report.MAX_RSS_SLOPE_MB_PER_MIN,
        help="MB/min: RSS trend over the second half above this fails the run (see soak_report.py)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak", help="report directory")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "server.log"
    log.unlink(missing_ok=True)  # ServerProcess appends: the report's log is this run's alone
    server = ServerProcess(log, *SERVER_FLAGS)
    started = time.time()
    try:
        tallies, samples = asyncio.run(run(server, args.duration, args.sample_every))
        final = Metrics(server.metrics_url)
    finally:
        server.signal()
        exit_code = server.wait(60)
    verdict = soak_report.write(
        args.out,
        soak_report.Run(
            started=started,
            duration=args.duration,
            flags=SERVER_FLAGS,
            tallies=tallies,
            samples=samples,
            metrics=final,
            server_exit=exit_code,
            server_log=log.read_text(errors="replace"),
            max_rss_slope=args.max_rss_slope,
        ),
    )
    print(verdict.summary)
    return 0 if verdict.passed else 1


if __name__ == "__main__":
    sys.exit(main())

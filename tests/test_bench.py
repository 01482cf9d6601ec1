"""The benchmark's and the soak's moving parts: the echo server and the load generator end to end,
and the pure arithmetic their reports and verdicts are made of.

`make bench` and `make soak` take minutes and are run by hand; this keeps their tools from
rotting in between. It checks that answers come back without errors and that the figures are
computed as documented, never how fast anything is (timings on a shared CI box mean nothing).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch

from seqpredict.models import Checkpoint
from seqpredict.v1 import seqpredict_pb2 as pb
from tests.conftest import RunningServer

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import plan  # noqa: E402
import report  # noqa: E402
import soak_check  # noqa: E402
import soak_figures  # noqa: E402
import soak_log  # noqa: E402
import soak_plot  # noqa: E402
import soak_report  # noqa: E402
import soak_unread  # noqa: E402
import targets  # noqa: E402
from soak_check import Tallies, mismatched_tops  # noqa: E402


def run_loadgen(target: str, *extra: str, mode: str = "pingpong") -> dict[str, Any]:
    """Two sessions for ~2 s, in a process of their own like in the benchmark."""
    argv = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        "--target",
        target,
        "--mode",
        mode,
        "--sessions",
        "2",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--connect-timeout",
        "20",
        "--json",
        *extra,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def echo_address() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "echo_server.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = proc.stdout.readline()  # type: ignore[union-attr]
        assert first_line, proc.stderr.read()  # type: ignore[union-attr]
        yield f"127.0.0.1:{json.loads(first_line)['port']}"
    finally:
        proc.terminate()
        proc.wait(10)


# -- end to end: the load generator against real servers -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loadgen_against_the_echo_server(echo_address: str) -> None:
    result = run_loadgen(echo_address)
    assert result["tokens"] > 0
    assert result["error_count"] == 0, result["errors"]
    assert result["vocab_size"] == 82


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loadgen_against_our_server(server: RunningServer) -> None:
    result = run_loadgen(server.address)
    assert result["tokens"] > 0
    assert result["error_count"] == 0, result["errors"]
    assert result["tokens_total"] >= result["tokens"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_loadgen_pipelines_against_our_server(server: RunningServer) -> None:
    """Sessions pipelining their requests on one stream each are answered without a refusal."""
    result = run_loadgen(server.address, "--pipeline-requests", "300", mode="pipeline")
    assert result["tokens"] > 0
    assert result["error_count"] == 0, result["errors"]
    assert result["pipeline_requests"] == 300 and result["latency_kind"] == "offered_to_answered"


# -- the benchmark's plan and report ---------------------------------------------------------------------------


def _run(mode: str, tokens_per_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "system": "ours",
        "mode": mode,
        "sessions": 1,
        "chunk": 1,
        "loadgen": {"tokens_per_s": tokens_per_s},
        **extra,
    }


def test_every_plan_measures_the_pipeline_right_after_the_prefill_row_it_is_compared_with() -> None:
    for p in (plan.FULL, plan.SHORT):
        labels = [r.label for r in plan.load_runs(p, profile=False)]
        assert "pipeline C=1 ours" in labels and "prefill C=1 ours" in labels
        assert labels.index("pipeline C=1 ours") == labels.index(f"prefill C={p.prefill[-1]} ours") + 1
        assert p.pipeline_requests == 10_000


def test_pipeline_figure_is_a_ratio_of_two_rows_of_the_same_run() -> None:
    results = {
        "runs": [
            _run("prefill", 20_000.0, chunk=1024),
            _run("pipeline", 5_000.0, pipeline_requests=10_000),
            _run("pipeline", 1.0, profiled=True),
        ]
    }
    results["runs"][1]["loadgen"]["pipeline_requests"] = 10_000
    figure = targets.pipeline_vs_prefill(results)
    assert figure == {
        "requests": 10_000,
        "chunk": 1024,
        "pipeline_tokens_per_s": 5_000.0,
        "prefill_tokens_per_s": 20_000.0,
        "ratio": 0.25,
    }
    assert "0.25× the 1,024-token prefill row" in report.pipeline_line(results)
    assert targets.pipeline_vs_prefill({"runs": results["runs"][1:]}) is None, "no prefill row: no ratio"
    assert "not measured" in report.pipeline_line({"runs": results["runs"][:1]})


# -- the soak's checker and figures ----------------------------------------------------------------------------


def _top(row: torch.Tensor, k: int = 3) -> list[pb.TokenProbability]:
    best = row.topk(k)
    pairs = zip(best.indices.tolist(), best.values.tolist(), strict=True)
    return [pb.TokenProbability(id=i, probability=p) for i, p in pairs]


def test_the_vectorised_check_flags_exactly_the_answers_that_differ_from_the_reference() -> None:
    rows = torch.softmax(torch.randn(6, 82, generator=torch.Generator().manual_seed(0)), dim=-1)
    tops = [_top(row) for row in rows]
    assert mismatched_tops(tops, rows) == []
    tops[1][0].probability += 2e-5  # beyond the 1e-5 contract
    tops[2][1].id = tops[2][2].id  # a probability that belongs to another token
    tops[3] = tops[3][:2]  # a shorter list than the rest
    tops[4][0].id = 82  # outside the vocabulary
    tops[5][2].probability += 5e-6  # within the contract
    assert mismatched_tops(tops, rows) == [1, 2, 3, 4]
    assert mismatched_tops([[]], rows[:1]) == [0], "an empty top-k is never right"
    assert mismatched_tops([], rows[:0]) == []


def _samples(calls: list[int], never_read: list[bool] | None = None) -> list[dict[str, Any]]:
    flags = never_read or [False] * len(calls)
    return [{"t": 2.0 * i, "calls": c, "never_read": f} for i, (c, f) in enumerate(zip(calls, flags, strict=True))]


def test_a_stall_is_the_longest_span_without_a_single_answer() -> None:
    assert soak_figures.longest_stall(_samples([0, 5, 9, 12])) == 0.0
    assert soak_figures.longest_stall(_samples([0, 5, 5, 5, 7, 7, 8])) == 4.0
    assert soak_figures.longest_stall(_samples([3, 3])) == 2.0
    assert soak_figures.longest_stall(_samples([3])) == 0.0


def test_phase_rates_count_only_intervals_inside_one_phase() -> None:
    samples = _samples([0, 10, 20, 40, 60, 70, 80], [False, False, False, True, True, True, False])
    # off: 0→10→20 (20 answers in 4 s) and nothing after; the 20→40 and 70→80 intervals straddle phases
    assert soak_figures.phase_rates(samples) == {"on": 30 / 4, "off": 20 / 4}
    assert soak_figures.phase_rates(samples, after=2.0) == {"on": 30 / 4, "off": 10 / 2}
    assert soak_figures.phase_rates(_samples([0, 1])) == {"on": None, "off": 1 / 2}


def test_the_never_reading_client_starts_off_and_its_on_phases_are_shaded() -> None:
    on, off = soak_unread.ON_S, soak_unread.OFF_S
    assert not soak_unread.phase_on(0.0) and not soak_unread.phase_on(off - 0.1)
    assert soak_unread.phase_on(off) and soak_unread.phase_on(off + on - 0.1)
    assert not soak_unread.phase_on(off + on)
    samples = _samples([0] * 6, [False, True, True, False, True, True])
    assert soak_plot.on_spans(samples) == [(2.0, 6.0), (8.0, 10.0)]


def test_rss_trend_is_the_slope_over_the_second_half_only() -> None:
    warm_up = [{"t": float(t), "rss_bytes": (100 + t) * 2**20} for t in range(0, 60, 2)]
    flat = [{"t": float(t), "rss_bytes": 300 * 2**20} for t in range(60, 120, 2)]
    slope, intercept = soak_figures.rss_trend(warm_up + flat, duration=120)
    assert abs(slope) < 1e-9 and abs(intercept - 300) < 1e-6
    assert soak_figures.rss_trend(warm_up, duration=120) is None, "no sample in the second half"


def test_the_server_log_errors_are_explained_or_counted_against_the_run() -> None:
    known = next(iter(soak_log.KNOWN))
    log = "\n".join(
        [
            "2026-11-30 13:33:07,001 INFO seqpredict.server: settings:",
            "  max_sessions = 500",
            f"2026-11-30 13:33:41,539 ERROR grpc._cython.cygrpc: {known}",
            "Traceback (most recent call last):",
            '  File "server.pyx.pxi", line 710, in _handle_exceptions',
            "2026-11-30 13:33:42,000 INFO seqpredict.server.app: expired 4 idle session(s)",
            "2026-11-30 13:33:43,000 ERROR seqpredict.server.service: unexpected error in Predict",
            "Traceback (most recent call last):",
            "2026-11-30 13:33:44,000 WARNING seqpredict.server: something odd",
            "Traceback (most recent call last):",
        ]
    )
    assert soak_log.log_errors(log) == {known: 1, soak_log.UNEXPLAINED: 2}
    assert soak_log.log_errors("2026-11-30 13:33:07,001 INFO seqpredict.server: stopped\n") == {}


def test_log_records_of_the_multi_process_server_are_read_with_their_role_and_traceback() -> None:
    """Records carry the process's role in brackets; an ERROR without a traceback still counts, and a
    failed final status is known only when the status is all that failed."""
    predict, status_only = soak_log.KNOWN
    core = "2026-11-30 20:25:25,060 ERROR [frontend-1] grpc._cython.cygrpc: ExecuteBatchError raised in core by "
    failed = 'grpc._cython.cygrpc.ExecuteBatchError: Failed "execute_batch": (<grpc._cython.cygrpc.{} object at 0x7>,)'
    log = "\n".join(
        [
            core + "servicer method [/seqpredict.v1.SequencePredictor/Generate]",
            "Traceback (most recent call last):",
            '  File "callback_common.pyx.pxi", line 99, in execute_batch',
            failed.format("SendStatusFromServerOperation"),
            core + "servicer method [/seqpredict.v1.SequencePredictor/Generate]",
            "Traceback (most recent call last):",
            failed.format("SendMessageOperation"),
            core + "servicer method [/seqpredict.v1.SequencePredictor/Predict]",
            "2026-11-30 20:25:26,000 ERROR [engine] seqpredict.server.engine_loop: cannot encode an answer",
            "2026-11-30 20:25:27,000 INFO [engine] seqpredict.server.engine_side: expired 1 idle session(s)",
        ]
    )
    assert soak_log.log_errors(log) == {status_only: 1, predict: 1, soak_log.UNEXPLAINED: 2}


class _Scrape:
    """The final metrics scrape, as soak_report reads it."""

    def __init__(self) -> None:
        self.samples = {("seqpredict_sessions_ended_total", frozenset({("reason", "ttl")})): 3.0}

    def value(self, name: str) -> float:
        return 7.0


def _soak_run(tallies: Any, calls: list[int], log: str = "") -> soak_report.Run:
    samples = [
        {**s, "rss_bytes": 300 * 2**20, "sessions": 10, "streams": 5, "streams_paused": 1} for s in _samples(calls)
    ]
    return soak_report.Run(0.0, 2.0 * len(calls), ("--stream-window", "8"), tallies, samples, _Scrape(), 0, log, 2.0)


def test_the_soak_report_passes_a_clean_run_and_names_every_reason_to_fail_one(tmp_path: Path) -> None:
    """Every reason the verdict knows, but for the server's exit status and RSS growth."""
    tallies = Tallies()
    tallies.outcome("predict", grpc.StatusCode.OK)
    tallies.checked = 1
    tallies.event("never_read/streams opened", 2)
    tallies.event("never_read/streams held back when abandoned", 2)
    tallies.record("pipeline/seconds per completed pipeline", 12.5)
    verdict = soak_report.write(tmp_path, _soak_run(tallies, [0, 10, 20, 30]))
    assert verdict.passed, verdict.reasons
    assert {p.name for p in tmp_path.iterdir()} == {"report.json", "report.md", "rss.png"}
    assert "**PASSED**" in (tmp_path / "report.md").read_text()

    tallies.wrong_answer("tracked-1 at 5: position 4 ended False")
    tallies.rounding_tail("tracked-2 at 9: token id 3 probability 0.5000200, float32 0.5000000, float64 0.5000100")
    tallies.events["never_read/streams held back when abandoned"] = 0
    unexplained = "2026-11-30 13:33:43,000 ERROR seqpredict.server.service: unexpected error in Predict\n"
    verdict = soak_report.write(tmp_path, _soak_run(tallies, [0, 10, 10, 10, 10, 10, 10, 10, 20], unexplained))
    assert not verdict.passed
    assert verdict.reasons == [
        "1 request(s) answered wrongly",
        "1 answer(s) off by float32 rounding, more than 0.1% of those checked",
        "the server logged 1 error(s) or traceback(s) the soak cannot explain",
        "the load got no answer for 12 s (limit 10)",
        "the server never held back a stream that was never read",
    ]
    shown = (tmp_path / "report.md").read_text()
    assert "tracked-1 at 5" in shown and "tracked-2 at 9" in shown


def test_an_answer_missing_the_float32_reference_is_judged_again_by_the_float64_model(checkpoint: Checkpoint) -> None:
    """Outside 1e-5 of the float32 reference but within 1e-4 of the float64 model: float32 rounding, counted
    apart (the rounding tail); beyond 1e-4 of the float64 model: wrong."""
    rows = torch.softmax(torch.randn(3, 82, generator=torch.Generator().manual_seed(1)), dim=-1)
    exact = rows.double().clone()
    exact[2] += 8e-6  # the float32 reference is 8e-6 below the exact value here
    history = soak_check.History([5, 6], rows, model64=None)
    history._exact = exact  # as if computed: no model needed
    tallies = Tallies()
    checker = soak_check.Checker(checkpoint.build_model(), tallies)
    p = exact[2][7].item()

    asyncio.run(checker.probability(history, 1, 3, rows[1][3].item(), "right"))
    asyncio.run(checker.probability(history, 2, 7, p + 8e-6, "rounded"))  # 1.6e-5 from float32, 8e-6 from float64
    asyncio.run(checker.probability(history, 2, 7, p + 2e-4, "wrong"))
    assert (tallies.checked, tallies.tail_count, tallies.wrong_count) == (3, 1, 1)
    assert tallies.tail[0].startswith("rounded:") and tallies.wrong[0].startswith("wrong:")

    ids, values = _best(exact[2], 3)
    rounded = [pb.TokenProbability(id=i, probability=v + 4e-6) for i, v in zip(ids, values, strict=True)]
    wrong = [pb.TokenProbability(id=i, probability=v + 3e-4) for i, v in zip(ids, values, strict=True)]
    asyncio.run(checker.tops(history, [2, 1, 2], [rounded, _top(rows[1]), wrong], "tops"))
    assert (tallies.checked, tallies.tail_count, tallies.wrong_count) == (6, 2, 2)
    assert tallies.tail[1].startswith("tops: answer 0") and tallies.wrong[1].startswith("tops: answer 2")


def _best(row: torch.Tensor, k: int) -> tuple[list[int], list[float]]:
    best = row.topk(k)
    return best.indices.tolist(), best.values.tolist()

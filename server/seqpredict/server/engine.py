"""One batched step of the model for many sessions, on the inference thread.

The scheduler hands over a batch of runs — per session, one job or several consecutive
ones that share a chunk, each with the tokens it may feed now — and a list to append
deliveries to. For every batch:

1. bookkeeping first: each job's `start` (sessions found or created, the guard checked,
   `reset` applied) and `chunk`, so nothing is ever computed on the wrong state;
2. Generate rows sample their token (one batched draw), then every row feeding exactly
   one token joins one fused step: one gather, one cell call per layer, one scatter;
3. longer rows (prefill, pipelined runs) go through nn.LSTM as whole sequences, one group
   per length;
4. after each group: logits only where a job asked for them (one head matmul, one
   log-softmax and one top-k for the group), positions advanced, and each job's `absorb`
   turns them into its payload — so if a later group fails, earlier groups stay answered
   and their sessions consistent.

No asyncio and no grpc here; the state pool is touched only from this thread.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import Tensor

from seqpredict.models import Checkpoint, FusedStepper
from seqpredict.server.errors import RequestFailed
from seqpredict.server.jobs import Chunk, Job, Sampling, StepOutput, TopK
from seqpredict.server.metrics import Metrics
from seqpredict.server.ops import SessionOps
from seqpredict.server.sampling import sample
from seqpredict.server.sessions import SessionPool

log = logging.getLogger(__name__)

Delivery = tuple[Job, object]
KINDS = ("predict", "generate", "session", "fork", "export", "import", "list")


@dataclass(slots=True)
class Run:
    """One session's share of a batch: its jobs in order, each with the tokens it may feed now."""

    session_id: str
    entries: list[tuple[Job, int]]


@dataclass(eq=False, slots=True)
class _Segment:
    job: Job
    chunk: Chunk
    begin: int  # index of its first token in the row
    end: int
    points: range = range(0)  # row-relative indices of the logits it needs (-1: before the row)
    top_count: int = 0  # how many of them, at the end, want top-k
    first_need: int = 0  # where its points start in the group's list of needed logits


@dataclass(eq=False, slots=True)
class _Row:
    """One session's tokens for this batch: the chunks of its run, back to back."""

    session_id: str
    slot: int
    tokens: list[int] = field(default_factory=list)
    segments: list[_Segment] = field(default_factory=list)
    sample: Sampling | None = None
    sampled_probability: float = 0.0
    sampled_log_probability: float = 0.0


class Engine:
    def __init__(self, checkpoint: Checkpoint, pool: SessionPool, metrics: Metrics) -> None:
        self.model = checkpoint.build_model()
        self.stepper = FusedStepper(self.model)
        self.vocab = checkpoint.vocab
        self.pool = pool
        self.metrics = metrics
        self.ops = SessionOps(pool, metrics, tuple(checkpoint.vocab.chars))
        # Label children resolved once: a labels() lookup per job showed up in profiles.
        self._ok = {kind: metrics.requests.labels(kind, "OK") for kind in KINDS}
        self._latency = {kind: metrics.request_latency.labels(kind) for kind in KINDS}

    def enter_thread(self) -> None:
        """Call first on the inference thread: no autograd there, set once for the thread
        rather than by a context manager around every batch (a few µs each, per batch)."""
        torch.set_grad_enabled(False)

    # -- the batch ------------------------------------------------------------------------------
    def begin_batch(self) -> None:
        """Call before `run` (and before loading the batch's sessions from a shared store)."""
        self.ops.begin_batch(self.pool.clock())

    def run(self, batch: list[Run], out: list[Delivery]) -> None:
        """Advance every job of `batch`; append what to deliver to `out` as soon as it is final,
        so that if something fails half-way, whatever was already answered stays answered."""
        started = time.perf_counter()
        rows = [row for run in batch if (row := self._open(run, started, out)) is not None]
        singles = [r for r in rows if len(r.tokens) == 1 or r.sample is not None]
        by_length: dict[int, list[_Row]] = defaultdict(list)
        for r in rows:
            if len(r.tokens) > 1:
                by_length[len(r.tokens)].append(r)
        empties = [r for r in rows if not r.tokens and r.sample is None]
        hidden: dict[int, Tensor] = {}  # id(row) → (T + 1, H): the top layer before and after each token
        if singles:
            step_logits = self._run_singles(singles, hidden)
            self._finish(singles, self._logits(singles, step_logits, hidden), out)
        for group in by_length.values():
            self._run_chunk(group, hidden)
            self._finish(group, self._logits(group, None, hidden), out)
        if empties:
            self._initial_hidden(empties, hidden)
            self._finish(empties, self._logits(empties, None, hidden), out)
        m = self.metrics
        m.batch_size.observe(len(rows))
        m.batch_tokens.observe(sum(len(r.tokens) for r in rows))
        m.batch_seconds.observe(time.perf_counter() - started)

    def _open(self, run: Run, now: float, out: list[Delivery]) -> _Row | None:
        """Start the run's jobs (bookkeeping and checks) and lay their chunks out in one row."""
        ops, row, pending = self.ops, None, 0
        for job, allotted in run.entries:
            try:
                if not job.started:
                    self.metrics.queue_wait.observe(now - job.received)
                    payload = job.start(ops, pending)
                    job.started = True
                    if payload is not None:
                        self._answer(job, payload, out, time.perf_counter())
                        job.done = True
                        self._ok[job.kind].inc()
                        continue
                chunk = job.chunk(allotted)
            except RequestFailed as exc:
                self._refuse(job, exc, out)
                continue
            if chunk is None:  # finished quietly (a generation nobody reads any more)
                job.done = True
                self.ops.busy.discard(self.pool.slot(job.session_id))  # type: ignore[arg-type]
                continue
            if row is None:
                row = _Row(run.session_id, ops.slot_of_started(run.session_id))
            begin = len(row.tokens)
            row.tokens += chunk.tokens
            end = len(row.tokens)
            if chunk.sample is not None:
                row.sample = chunk.sample
                end = begin + 1  # the sampled token, filled in before the step
            points, top_count = _points(chunk, begin, end)
            row.segments.append(_Segment(job, chunk, begin, end, points, top_count))
            pending += end - begin
        return row

    def _refuse(self, job: Job, error: RequestFailed, out: list[Delivery]) -> None:
        job.done = True
        out.append((job, error))
        self.metrics.count_failure(job.kind, error)

    def _answer(self, job: Job, payload: object, out: list[Delivery], now: float) -> None:
        out.append((job, payload))
        self._latency[job.kind].observe(now - (job.answered_at or job.received))
        job.answered_at = now

    # -- one token per row: sampling and the fused step ------------------------------------------------
    def _run_singles(self, rows: list[_Row], hidden: dict[int, Tensor]) -> Tensor:
        """Sample where asked, step every row by its one token; returns the step's logits (B, V)."""
        slots = torch.tensor([r.slot for r in rows])
        state = self.pool.gather(slots)  # each (L, B, H)
        if any(r.sample is not None for r in rows):
            self._sample_into(rows, state)
        tokens = torch.tensor([r.tokens[0] for r in rows])
        logits, new_state = self.stepper.step(tokens, state)  # (B, V)
        self.pool.scatter(slots, new_state)
        before, after = state[0][-1], new_state[0][-1]  # top layer's h: (B, H)
        for i, r in enumerate(rows):
            if any(p < 0 for seg in r.segments for p in seg.points):
                hidden[id(r)] = torch.stack((before[i], after[i]))
        return logits

    def _sample_into(self, rows: list[_Row], state: tuple[Tensor, ...]) -> None:
        """Pick the token of every row that samples in this batch (one batched draw)."""
        picks = [i for i, r in enumerate(rows) if r.sample is not None]
        samplings: list[Sampling] = [rows[i].sample for i in picks]  # type: ignore[misc]
        missing = [j for j, s in enumerate(samplings) if s.prior is None]
        if missing:  # no logits kept yet (no prompt): the head over the state's top layer
            fresh = self.model.next_logits(tuple(s[:, [picks[j] for j in missing]] for s in state))
            for n, j in enumerate(missing):
                samplings[j].prior = fresh[n]
        tokens, probs, logps = sample(
            torch.stack([s.prior for s in samplings]),
            [s.temperature for s in samplings],
            [s.top_k for s in samplings],
            [s.top_p for s in samplings],
            [s.uniform for s in samplings],
        )
        for i, token, prob, logp in zip(picks, tokens, probs, logps, strict=True):
            rows[i].tokens = [token]
            rows[i].sampled_probability, rows[i].sampled_log_probability = prob, logp

    # -- whole chunks: nn.LSTM over the sequence --------------------------------------------------------
    def _run_chunk(self, group: list[_Row], hidden: dict[int, Tensor]) -> None:
        """Rows of one length through nn.LSTM together."""
        slots = torch.tensor([r.slot for r in group])
        state = self.pool.gather(slots)
        feats, new_state = self.model.features(torch.tensor([r.tokens for r in group]), state)  # (G, T, H)
        self.pool.scatter(slots, new_state)
        before = state[0][-1]  # (G, H)
        for j, r in enumerate(group):
            hidden[id(r)] = torch.cat((before[j : j + 1], feats[j]))  # (T + 1, H)

    def _initial_hidden(self, rows: list[_Row], hidden: dict[int, Tensor]) -> None:
        """Rows that feed nothing and only predict from the state."""
        state = self.pool.gather(torch.tensor([r.slot for r in rows]))
        for j, r in enumerate(rows):
            hidden[id(r)] = state[0][-1][j : j + 1]  # (1, H)

    def _logits(self, rows: list[_Row], step_logits: Tensor | None, hidden: dict[int, Tensor]) -> Tensor | None:
        """The logits every segment of `rows` asked for, in order (each segment's `first_need` says
        where its rows start): the fused step's own where it computed them (`step_logits`, one per
        row), the rest through one head matmul."""
        extra: list[Tensor] = []
        order: list[int] = []  # per need: its row in cat(step_logits, head(extra))
        base = step_logits.shape[0] if step_logits is not None else 0
        for i, r in enumerate(rows):
            for seg in r.segments:
                seg.first_need = len(order)
                for p in seg.points:
                    if step_logits is not None and p == 0:
                        order.append(i)
                    else:
                        order.append(base + len(extra))
                        extra.append(hidden[id(r)][p + 1])
        if not order:
            return None
        if not extra and step_logits is not None and order == list(range(base)):
            return step_logits  # the common case: one answer per single-token row, in order
        parts = [step_logits] if step_logits is not None else []
        if extra:
            parts.append(self.model.head(torch.stack(extra)))
        table = torch.cat(parts) if len(parts) > 1 else parts[0]
        return table.index_select(0, torch.tensor(order))

    # -- results -----------------------------------------------------------------------------------------
    def _finish(self, rows: list[_Row], logits: Tensor | None, out: list[Delivery]) -> None:
        """Advance positions, then let every job absorb its share: top-k, kept logits, sampled token."""
        tops, scores = self._read(rows, logits) if logits is not None else ([], [])
        scored = 0
        counts = [len(r.tokens) for r in rows]
        ends = self.pool.advance_all([r.slot for r in rows], counts)  # one vectorised update
        ops, pool, now = self.ops, self.pool, time.perf_counter()
        consumed = generated = 0
        for r, end_position in zip(rows, ends, strict=True):
            base = end_position - len(r.tokens)
            incarnation = pool.incarnation(r.slot)
            if r.tokens:
                ops.touched.add(r.session_id)
            for seg in r.segments:
                chunk, job = seg.chunk, seg.job
                fed = seg.end - seg.begin
                output = StepOutput(base + seg.end, incarnation, fed)
                last = seg.first_need + len(seg.points)  # one past its last logits row
                if chunk.top_k:
                    output.top = tops[last - seg.top_count : last]
                if chunk.keep_logits and logits is not None:
                    output.logits = logits[last - 1]
                if chunk.score:
                    output.scores = scores[scored : scored + fed]
                    scored += fed
                if chunk.sample is not None:
                    output.sampled = r.tokens[0]
                    output.sampled_probability = r.sampled_probability
                    output.sampled_log_probability = r.sampled_log_probability
                    generated += 1
                else:
                    consumed += fed
                try:
                    payload = job.absorb(output, ops)
                except RequestFailed as exc:
                    self._refuse(job, exc, out)
                    continue
                if payload is not None:
                    self._answer(job, payload, out, now)
                if job.done:
                    ops.busy.discard(r.slot)
                    self._ok[job.kind].inc()
                else:
                    ops.busy.add(r.slot)
        if consumed:
            self.metrics.tokens_consumed.inc(consumed)
        if generated:
            self.metrics.tokens_generated.inc(generated)

    def _read(self, rows: list[_Row], logits: Tensor) -> tuple[list[TopK], list[float]]:
        """From one log-softmax of the group's logits: the top-k of every needed row (k of its job; 0:
        none) and, for scoring chunks, each token's log-probability under the state before it."""
        ks: list[int] = []
        score_rows: list[int] = []
        score_tokens: list[int] = []
        for r in rows:
            for seg in r.segments:
                n, k = len(seg.points), seg.chunk.top_k
                ks.extend([0] * (n - seg.top_count) + [k] * seg.top_count if k else [0] * n)
                if seg.chunk.score and seg.end > seg.begin:  # its first points are the states before each token
                    score_rows.extend(range(seg.first_need, seg.first_need + seg.end - seg.begin))
                    score_tokens.extend(r.tokens[seg.begin : seg.end])
        k_max = max(ks)
        if k_max == 0 and not score_rows:
            return [], []
        logp_all = torch.log_softmax(logits, dim=-1)  # (N, V)
        scores = logp_all[score_rows, score_tokens].tolist() if score_rows else []
        if k_max == 0:
            return [], scores
        logp, indices = logp_all.topk(k_max, dim=-1)  # (N, k)
        ids, probs, logps = indices.tolist(), logp.exp().tolist(), logp.tolist()
        if all(k == k_max for k in ks):  # the common case, kept free of per-row slicing
            return list(zip(ids, probs, logps, strict=True)), scores
        return [(i[:k], p[:k], lp[:k]) for i, p, lp, k in zip(ids, probs, logps, ks, strict=True)], scores

    def discard(self, session_ids: list[str]) -> None:
        """Drop sessions whose state a failed batch may have left half-updated: better lost than wrong."""
        for sid in session_ids:
            slot = self.pool.slot(sid)
            if slot is not None:
                self.ops.busy.discard(slot)
                self.pool.release(sid, "error")

    # -- warm-up --------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the fused step and a prefill once so the first request does not pay for lazy init."""
        with torch.inference_mode():
            state = self.model.zero_state(1)
            self.stepper.step(torch.zeros(1, dtype=torch.long), state)
            self.model.features(torch.zeros(1, 8, dtype=torch.long), state)


def _points(chunk: Chunk, begin: int, end: int) -> tuple[range, int]:
    """Row-relative indices of the logits a chunk needs, and how many of them (at the end) want top-k.

    Scoring needs the state before each token (begin - 1 ... end - 2); all_steps the state after each
    (begin ... end - 1); an answer the state after the last token — which, for a chunk that feeds
    nothing, is the state before it. Together they are always one contiguous range.
    """
    after_last = chunk.answer or chunk.keep_logits or chunk.every_step
    top_count = (end - begin) if chunk.every_step else (1 if chunk.answer else 0)
    if chunk.score:
        return range(begin - 1, end if after_last else end - 1), top_count
    if chunk.every_step:
        return range(begin, end), top_count
    if after_last:
        return range(end - 1, end), top_count
    return range(0), 0

"""One batched step of the model for many sessions, on the inference thread.

The scheduler hands over a batch — at most one job per session, each with the number of
tokens it may process now — and gets back what to deliver. Within a batch:

1. bookkeeping first: sessions are found or created, `expected_position` is checked and
   `reset` applied, so nothing is ever computed on the wrong state;
2. every job feeding exactly one token (single-token Predict, one Generate step) joins one
   fused step: one gather, one matmul per layer, one scatter;
3. longer chunks (prefill) run through nn.LSTM as whole sequences, grouped by length.

No asyncio and no grpc here; the state pool is touched only from this thread.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch import Tensor

from seqpredict.models import Checkpoint, FusedStepper
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import NO_TOP, GenerateEvent, GenerateJob, Job, PredictJob, PredictResult, SessionJob, TopK
from seqpredict.server.metrics import Metrics
from seqpredict.server.sampling import sample
from seqpredict.server.sessions import SessionPool

log = logging.getLogger(__name__)

Delivery = tuple[Job, object]


@dataclass(eq=False, slots=True)
class _Row:
    """One job's share of this batch."""

    job: Job
    slot: int
    tokens: list[int]  # what it feeds now; empty for "predict from the current state"
    want_topk: bool  # answer after the last token of this chunk
    first_step: int  # index of this chunk's first token within the job (for all_steps)


class Engine:
    def __init__(self, checkpoint: Checkpoint, pool: SessionPool, metrics: Metrics) -> None:
        self.model = checkpoint.build_model()
        self.stepper = FusedStepper(self.model)
        self.vocab = checkpoint.vocab
        self.vocab_chars = checkpoint.vocab.chars
        self.pool = pool
        self.metrics = metrics
        # Label children resolved once: a labels() lookup per row showed up in profiles.
        self._ok = {kind: metrics.requests.labels(kind, "OK") for kind in ("predict", "generate")}
        self._latency = {kind: metrics.request_latency.labels(kind) for kind in ("predict", "generate")}

    def enter_thread(self) -> None:
        """Call first on the inference thread: no autograd there, set once for the thread
        rather than by a context manager around every batch (a few µs each, per batch)."""
        torch.set_grad_enabled(False)

    # -- the batch ------------------------------------------------------------------------------
    def run(self, batch: list[tuple[Job, int]]) -> list[Delivery]:
        """Advance every job of `batch` by its allotted tokens; sets `job.done` on finished jobs."""
        started = time.perf_counter()
        out: list[Delivery] = []
        singles: list[_Row] = []
        chunks: list[_Row] = []
        pool = self.pool
        now = pool.clock()
        # Touch every live session of the batch first so LRU eviction never picks one of them.
        pinned: set[int] = set()
        for job, _ in batch:
            slot = pool.slot(job.session_id)
            if slot is not None:
                pool.touch(job.session_id, slot, now)
                pinned.add(slot)
        tokens_in = 0
        for job, allotted in batch:
            try:
                if isinstance(job, SessionJob):
                    out.append((job, self._session_op(job)))
                    job.done = True
                    continue
                slot = self._begin(job, pinned, started)
            except RequestFailed as exc:
                out.append((job, exc))
                job.done = True
                self.metrics.count_failure(_kind(job), exc)
                continue
            row = self._row(job, slot, allotted)
            tokens_in += len(row.tokens)
            (singles if len(row.tokens) <= 1 else chunks).append(row)
        if singles:
            self._run_singles(singles, out)
        if chunks:
            self._run_chunks(chunks, out)
        m = self.metrics
        m.batch_size.observe(len(batch))
        m.batch_tokens.observe(tokens_in)
        m.batch_seconds.observe(time.perf_counter() - started)
        return out

    def _begin(self, job: Job, pinned: set[int], now: float) -> int:
        """The job's slot; on its first batch also check expected_position, create, reset."""
        pool = self.pool
        if job.started:
            slot = pool.slot(job.session_id)
            if slot is None:
                raise RequestFailed(Code.FAILED_PRECONDITION, f"session {job.session_id!r} was evicted mid-request", 0)
            return slot
        self.metrics.queue_wait.observe(now - job.received)
        slot = pool.slot(job.session_id)
        expected = job.expected_position  # type: ignore[attr-defined]
        if expected is not None:
            actual = pool.position(slot) if slot is not None else 0
            if actual != expected:
                raise RequestFailed(
                    Code.FAILED_PRECONDITION,
                    f"session {job.session_id!r} is at position {actual}, not the expected {expected}",
                    actual,
                )
        slot, created = pool.acquire(job.session_id, pinned)
        pinned.add(slot)
        if created:
            self.metrics.sessions_created.inc()
        elif job.reset:  # type: ignore[attr-defined]
            pool.reset(slot)
        job.started, job.created = True, created
        return slot

    def _row(self, job: Job, slot: int, allotted: int) -> _Row:
        if isinstance(job, PredictJob):
            start = job.offset
            end = min(len(job.tokens), start + max(allotted, 1))
            last = end == len(job.tokens)
            return _Row(job, slot, job.tokens[start:end], last or job.all_steps, start)
        assert isinstance(job, GenerateJob)
        if job.offset < len(job.prompt):
            end = min(len(job.prompt), job.offset + max(allotted, 1))
            return _Row(job, slot, job.prompt[job.offset : end], end == len(job.prompt), job.offset)
        return _Row(job, slot, [-1], True, 0)  # -1: sampled in this batch, then fed

    def _session_op(self, job: SessionJob) -> object:
        pool = self.pool
        if job.end:
            position = pool.release(job.session_id, "end")
            if position is None:
                raise RequestFailed(Code.NOT_FOUND, f"session {job.session_id!r} does not exist")
            return position
        record = pool.record(job.session_id)
        if record is None:
            raise RequestFailed(Code.NOT_FOUND, f"session {job.session_id!r} does not exist")
        return record

    # -- one token per session: the fused step ------------------------------------------------------
    def _run_singles(self, rows: list[_Row], out: list[Delivery]) -> None:
        pool = self.pool
        slots = torch.tensor([r.slot for r in rows])
        state = pool.gather(slots)  # each (L, B, H)
        head_rows = [i for i, r in enumerate(rows) if not r.tokens or (r.tokens[0] < 0 and r.job.logits is None)]
        state_logits = self.model.next_logits(tuple(s[:, head_rows] for s in state)) if head_rows else None
        row_logits: dict[int, Tensor] = {}
        if state_logits is not None:
            row_logits = {i: state_logits[j] for j, i in enumerate(head_rows)}
        self._sample_into(rows, row_logits)
        step_rows = [i for i, r in enumerate(rows) if r.tokens]
        logits = None
        if step_rows:
            sub = state if len(step_rows) == len(rows) else tuple(s[:, step_rows] for s in state)
            tokens = torch.tensor([rows[i].tokens[0] for i in step_rows])
            logits, new_state = self.stepper.step(tokens, sub)  # (B, V)
            pool.scatter(slots if sub is state else slots[step_rows], new_state)
        results: dict[int, Tensor] = {i: state_logits[j] for j, i in enumerate(head_rows) if not rows[i].tokens}
        if logits is not None:
            results.update({i: logits[j] for j, i in enumerate(step_rows) if rows[i].want_topk})
        self._finish(rows, results, out)

    def _sample_into(self, rows: list[_Row], state_logits: dict[int, Tensor]) -> None:
        """Pick the token of every Generate row that samples in this batch."""
        picks = [i for i, r in enumerate(rows) if r.tokens == [-1]]
        if not picks:
            return
        jobs: list[GenerateJob] = [rows[i].job for i in picks]  # type: ignore[misc]
        logits = torch.stack(
            [j.logits if j.logits is not None else state_logits[i] for i, j in zip(picks, jobs, strict=False)]
        )
        tokens, probs = sample(
            logits,
            [j.temperature for j in jobs],
            [j.top_k for j in jobs],
            [j.top_p for j in jobs],
            [j.rng.random() for j in jobs],
        )
        for i, job, token, prob in zip(picks, jobs, tokens, probs, strict=True):
            rows[i].tokens = [token]
            job.sampled_probability = prob

    # -- whole chunks: nn.LSTM over the sequence ------------------------------------------------------
    def _run_chunks(self, rows: list[_Row], out: list[Delivery]) -> None:
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(rows):
            by_length[len(r.tokens)].append(i)
        results: dict[int, Tensor] = {}
        for idx in by_length.values():
            slots = torch.tensor([rows[i].slot for i in idx])
            tokens = torch.tensor([rows[i].tokens for i in idx])  # (G, T)
            feats, new_state = self.model.features(tokens, self.pool.gather(slots))  # (G, T, H)
            self.pool.scatter(slots, new_state)
            for j, i in enumerate(idx):
                r = rows[i]
                if isinstance(r.job, PredictJob) and r.job.all_steps:
                    results[i] = self.model.head(feats[j])  # (T, V)
                elif r.want_topk:
                    results[i] = self.model.head(feats[j, -1])  # (V,)
        self._finish(rows, results, out)

    # -- results ---------------------------------------------------------------------------------------
    def _finish(self, rows: list[_Row], logits: dict[int, Tensor], out: list[Delivery]) -> None:
        """Advance positions and answer: top-k for Predict, one event per token for Generate."""
        pool, m = self.pool, self.metrics
        topk_rows = [i for i, r in enumerate(rows) if i in logits and type(r.job) is PredictJob]
        topk = self._topk([logits[i] for i in topk_rows], [rows[i].job.top_k for i in topk_rows]) if topk_rows else []
        topk_of = dict(zip(topk_rows, topk, strict=True))
        counts = [len(r.tokens) for r in rows]
        positions = pool.advance_all([r.slot for r in rows], counts)  # one vectorised update
        now = time.perf_counter()
        consumed = generated = answered = 0
        latency = self._latency["predict"]
        for i, r in enumerate(rows):
            job, n = r.job, counts[i]
            if type(job) is PredictJob:
                consumed += n
                job.offset += n
                top = topk_of.get(i)
                if job.all_steps and n and top is not None:
                    job.steps = (job.steps or []) + top
                if job.offset < len(job.tokens):
                    continue
                result = PredictResult(positions[i], job.created, top[-1] if top else NO_TOP)
                if job.all_steps:
                    result.steps = job.steps
                if job.end:
                    pool.release(job.session_id, "end")
                    result.ended = True
                job.done = True
                out.append((job, result))
                answered += 1
                latency.observe(now - job.received)
            else:
                assert isinstance(job, GenerateJob)
                if job.offset < len(job.prompt):
                    consumed += n
                    job.offset += n
                    if job.offset == len(job.prompt):
                        job.logits = logits.get(i)
                    continue
                generated += 1
                out.append((job, self._generated(job, positions[i], r.tokens[0], logits[i], now)))
        if answered:
            self._ok["predict"].inc(answered)
        if consumed:
            m.tokens_consumed.inc(consumed)
        if generated:
            m.tokens_generated.inc(generated)

    def _generated(self, job: GenerateJob, position: int, token: int, logits: Tensor, now: float) -> GenerateEvent:
        job.logits = logits
        job.generated += 1
        event = GenerateEvent(
            token=token,
            probability=job.sampled_probability,
            position=position,
            created=job.created and job.generated == 1,
        )
        if job.stop:
            longest = max(len(s) for s in job.stop)
            job.tail = (job.tail + self.vocab_chars[token])[-longest:]
            matched = next((s for s in job.stop if job.tail.endswith(s)), "")
            if matched:
                event.finish, event.stop = "stop", matched
        if not event.finish and job.generated >= job.max_tokens:
            event.finish = "max_tokens"
        self._latency["generate"].observe(now - (job.last_emit or job.received))
        job.last_emit = now
        if event.finish:
            if job.end:
                self.pool.release(job.session_id, "end")
            job.done = True
            self._ok["generate"].inc()
        return event

    def _topk(self, logits: list[Tensor], ks: list[int]) -> list[list[TopK]]:
        """Per row: a list (one per step; one step unless all_steps) of the k best tokens."""
        flat = torch.cat([x.reshape(-1, x.shape[-1]) for x in logits])  # (N, V)
        k_max = max(ks)
        logp, indices = torch.log_softmax(flat, dim=-1).topk(k_max, dim=-1)  # (N, k)
        ids, probs, logps = indices.tolist(), logp.exp().tolist(), logp.tolist()
        out: list[list[TopK]] = []
        start = 0
        for x, k in zip(logits, ks, strict=True):
            if x.dim() == 1 and k == k_max:  # the common case, kept free of per-row comprehensions
                out.append([(ids[start], probs[start], logps[start])])
                start += 1
                continue
            end = start + (1 if x.dim() == 1 else x.shape[0])
            out.append([(ids[r][:k], probs[r][:k], logps[r][:k]) for r in range(start, end)])
            start = end
        return out

    # -- warm-up --------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """Run the fused step and a prefill once so the first request does not pay for lazy init."""
        with torch.inference_mode():
            state = self.model.zero_state(1)
            self.stepper.step(torch.zeros(1, dtype=torch.long), state)
            self.model.features(torch.zeros(1, 8, dtype=torch.long), state)


def _kind(job: Job) -> str:
    return "generate" if isinstance(job, GenerateJob) else "predict" if isinstance(job, PredictJob) else "session"

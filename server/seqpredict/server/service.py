"""The gRPC servicer: protobuf in, jobs to the scheduler, protobuf out. No tensor math here.

Per-request problems on a Predict stream are answered in-band (`PredictResponse.error`) so
the stream and its other sessions go on; problems with a whole call end it with a status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from seqpredict.models import Checkpoint
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import GenerateEvent, GenerateJob, PredictJob, PredictResult, SessionJob, TopK
from seqpredict.server.metrics import Metrics
from seqpredict.server.scheduler import Scheduler
from seqpredict.server.sessions import SessionRecord
from seqpredict.server.streams import DRAINED, END_OF_STREAM, OrderedAnswers, Unit
from seqpredict.server.validation import DEFAULT_TOP_K, Validator
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}
POSITION_METADATA = "seqpredict-position"
_FINISH = {"max_tokens": pb.FINISH_REASON_MAX_TOKENS, "stop": pb.FINISH_REASON_STOP}


async def abort(context: aio.ServicerContext, error: RequestFailed) -> None:
    """End the call with the error's status; FAILED_PRECONDITION carries the position as metadata."""
    trailing = () if error.position is None else ((POSITION_METADATA, str(error.position)),)
    await context.abort(GRPC_CODES[int(error.code)], error.message, trailing_metadata=trailing)


class SequencePredictorService(pb_grpc.SequencePredictorServicer):
    def __init__(
        self,
        scheduler: Scheduler,
        validator: Validator,
        checkpoint: Checkpoint,
        model_info: pb.ModelInfo,
        metrics: Metrics,
    ) -> None:
        self.scheduler = scheduler
        self.validator = validator
        self.metrics = metrics
        self.model_info = model_info
        # id → text, resolved once: building a TokenProbability must not touch the vocabulary object.
        self._texts = checkpoint.vocab.chars
        self.draining = False
        self._streams: set[OrderedAnswers] = set()

    def drain(self) -> None:
        """Stop taking requests: each open Predict stream answers what it has and ends UNAVAILABLE."""
        self.draining = True
        for answers in self._streams:
            answers.mark(DRAINED)

    # -- Predict -------------------------------------------------------------------------------------
    async def Predict(self, request_iterator: AsyncIterator[pb.PredictRequest], context: aio.ServicerContext):
        async for unit in self._answer_in_order(request_iterator, context, lambda req: [self._submit(req)]):
            req, result = unit.results()[0]
            yield self._response(req, result)

    async def PredictMany(self, request_iterator: AsyncIterator[pb.PredictManyRequest], context: aio.ServicerContext):
        def submit_all(message: pb.PredictManyRequest) -> list[tuple[pb.PredictRequest, Any]]:
            return [self._submit(req) for req in message.requests]

        async for unit in self._answer_in_order(request_iterator, context, submit_all):
            yield pb.PredictManyResponse(responses=[self._response(req, result) for req, result in unit.results()])

    async def _answer_in_order(
        self,
        request_iterator: AsyncIterator[Any],
        context: aio.ServicerContext,
        submit: Callable[[Any], list[tuple[pb.PredictRequest, Any]]],
    ) -> AsyncIterator[Unit]:
        """Read requests in a task of their own (so many can be in flight); yield answers in order."""
        answers = OrderedAnswers()
        failure: list[Exception] = []

        async def read() -> None:
            try:
                async for message in request_iterator:
                    answers.add(submit(message))
            except Exception as exc:  # a broken stream ends the call; the writer re-raises it
                failure.append(exc)
            answers.mark(END_OF_STREAM)

        self.metrics.streams_active.inc()
        self._streams.add(answers)
        reader = asyncio.create_task(read())
        try:
            while True:
                unit = await answers.ready.get()
                if unit.marker == END_OF_STREAM:
                    if failure:
                        raise failure[0]
                    return
                if unit.marker == DRAINED:
                    # Everything received before the drain was answered above; nothing after it was applied.
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is draining; reconnect to continue")
                yield unit
        finally:
            self.metrics.streams_active.dec()
            self._streams.discard(answers)
            reader.cancel()
            answers.abandon()

    def _submit(self, req: pb.PredictRequest) -> tuple[pb.PredictRequest, PredictJob | PredictResult]:
        received = time.perf_counter()
        v = self.validator
        try:
            if self.draining:
                raise RequestFailed(Code.UNAVAILABLE, "the server is draining; not applied")
            job = PredictJob(
                v.session_id(req.session_id),
                received,
                tokens=v.tokens(req.tokens, req.text),
                top_k=v.top_k(req.top_k if req.HasField("top_k") else None, DEFAULT_TOP_K),
                all_steps=req.all_steps,
                reset=req.reset,
                end=req.end,
                expected_position=req.expected_position if req.HasField("expected_position") else None,
            )
            self.scheduler.submit(job)
            return req, job
        except RequestFailed as exc:
            self.metrics.count_failure("predict", exc)
            return req, PredictResult(position=0, error=exc)

    def _response(self, req: pb.PredictRequest, result: PredictResult) -> pb.PredictResponse:
        response = pb.PredictResponse(
            session_id=req.session_id,
            request_id=req.request_id,
            position=result.position,
            created=result.created,
            ended=result.ended,
            next=self._top(result.next),
        )
        if result.steps is not None:
            response.steps.extend(pb.StepPrediction(top=self._top(step)) for step in result.steps)
        if result.error is not None:
            response.error.code = int(result.error.code)
            response.error.message = result.error.message
        return response

    def _top(self, top: TopK) -> list[pb.TokenProbability]:
        texts, make = self._texts, pb.TokenProbability
        ids, probs, logps = top
        rows = zip(ids, probs, logps, strict=True)
        return [make(id=t, text=texts[t], probability=p, log_probability=lp) for t, p, lp in rows]

    # -- Generate ------------------------------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, context: aio.ServicerContext):
        v = self.validator
        try:
            job = GenerateJob(
                v.session_id(request.session_id),
                time.perf_counter(),
                prompt=v.tokens(request.prompt_tokens, request.prompt_text, "prompt"),
                max_tokens=v.max_tokens(request.max_tokens),
                temperature=v.temperature(request.temperature if request.HasField("temperature") else None),
                top_k=v.top_k(request.top_k if request.HasField("top_k") else None, None),
                top_p=v.top_p(request.top_p if request.HasField("top_p") else None),
                rng=random.Random(request.seed if request.HasField("seed") else None),
                stop=v.stop(request.stop),
                reset=request.reset,
                end=request.end,
                expected_position=request.expected_position if request.HasField("expected_position") else None,
                sink=asyncio.Queue(),
            )
            self.scheduler.submit(job)
        except RequestFailed as exc:
            self.metrics.count_failure("generate", exc)
            await abort(context, exc)
            return
        self.metrics.streams_active.inc()
        try:
            while True:
                event: GenerateEvent = await job.sink.get()  # type: ignore[union-attr]
                if event.error is not None:
                    await abort(context, event.error)
                yield pb.GenerateResponse(
                    token=event.token,
                    text=self._texts[event.token],
                    position=event.position,
                    created=event.created,
                    finish_reason=_FINISH.get(event.finish, pb.FINISH_REASON_UNSPECIFIED),
                    stop=event.stop,
                    probability=event.probability,
                )
                if event.finish:
                    return
        finally:
            self.metrics.streams_active.dec()
            job.cancelled = True  # cancelled or aborted: stop generating before the next batch

    # -- sessions and model --------------------------------------------------------------------------
    async def GetSession(self, request: pb.GetSessionRequest, context: aio.ServicerContext) -> pb.SessionInfo:
        record = await self._session_op(request.session_id, end=False, context=context)
        assert isinstance(record, SessionRecord)
        return pb.SessionInfo(
            session_id=record.session_id,
            position=record.position,
            created_at=_timestamp(record.created_at),
            last_used_at=_timestamp(record.last_used_at),
            expires_at=_timestamp(record.expires_at),
        )

    async def EndSession(self, request: pb.EndSessionRequest, context: aio.ServicerContext) -> pb.EndSessionResponse:
        position = await self._session_op(request.session_id, end=True, context=context)
        assert isinstance(position, int)
        return pb.EndSessionResponse(session_id=request.session_id, position=position)

    async def _session_op(self, session_id: str, end: bool, context: aio.ServicerContext) -> object:
        try:
            job = SessionJob(
                self.validator.session_id(session_id),
                time.perf_counter(),
                end=end,
                future=asyncio.get_running_loop().create_future(),
            )
            self.scheduler.submit(job)
            result = await job.future  # type: ignore[misc]
        except RequestFailed as exc:  # refused before reaching the engine (which counts its own)
            self.metrics.count_failure("session", exc)
            result = exc
        if isinstance(result, RequestFailed):
            await abort(context, result)
        return result

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: aio.ServicerContext) -> pb.ModelInfo:
        return self.model_info


def build_model_info(checkpoint: Checkpoint, limits: pb.ServerLimits, state_bytes: int) -> pb.ModelInfo:
    cfg = checkpoint.config
    return pb.ModelInfo(
        name=checkpoint.path.rsplit("/", 1)[-1],
        fingerprint=checkpoint.fingerprint,
        architecture=pb.Architecture(
            cell=cfg.cell,
            vocab_size=cfg.vocab_size,
            embed_dim=cfg.embed_dim,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.num_layers,
            state_names=list(cfg.state_names),
        ),
        vocabulary=list(checkpoint.vocab.chars),
        training_record_json=json.dumps(checkpoint.training, sort_keys=True),
        state_bytes_per_session=state_bytes,
        limits=limits,
    )


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts

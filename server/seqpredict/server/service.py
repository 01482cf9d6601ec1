"""The gRPC servicer: protobuf in, jobs to the engine, protobuf out. No tensor math here.

Per-request problems on a Predict stream are answered in-band (`PredictResponse.error`) so
the stream and its other sessions go on; problems with a whole call end it with a status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

# What a write raises once the client has reset the stream (it went away while flow control held
# the answer): the call is over, not broken. Not re-exported by grpc.aio.
from grpc._cython.cygrpc import ExecuteBatchError

from seqpredict.server.answer_size import AnswerSizer, receive_limit
from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.handle import EngineHandle
from seqpredict.server.jobs import (
    LIST_QUEUE,
    EndSessionJob,
    ExportJob,
    ForkJob,
    FutureJob,
    GenerateEvent,
    GenerateJob,
    GetSessionJob,
    ImportJob,
    ListJob,
    PredictJob,
    PredictResult,
    TopK,
)
from seqpredict.server.metrics import Metrics
from seqpredict.server.model_card import ModelCard
from seqpredict.server.paging import after_id, page_token
from seqpredict.server.routing import check_route, routing_key
from seqpredict.server.session_blob import BlobCodec
from seqpredict.server.session_state import SessionRecord
from seqpredict.server.streams import DRAINED, END_OF_STREAM, OrderedAnswers, Unit, Window
from seqpredict.server.validation import DEFAULT_TOP_K, Validator
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}
# How long a handler whose write failed waits for gRPC to cancel it (it happens within a loop turn or two).
CLIENT_GONE_WAIT_S = 1.0
POSITION_METADATA = "seqpredict-position"
INCARNATION_METADATA = "seqpredict-incarnation"
_FINISH = {"max_tokens": pb.FINISH_REASON_MAX_TOKENS, "stop": pb.FINISH_REASON_STOP}
# A message and the bound of its answer's bytes.
Submitted = tuple[list[tuple[pb.PredictRequest, "PredictJob | PredictResult"]], int]


async def abort(context: aio.ServicerContext, error: RequestFailed) -> None:
    """End the call with the error's status; FAILED_PRECONDITION carries position and incarnation as metadata."""
    trailing: tuple[tuple[str, str], ...] = ()
    if error.position is not None:
        trailing += ((POSITION_METADATA, str(error.position)),)
    if error.incarnation is not None:
        trailing += ((INCARNATION_METADATA, str(error.incarnation)),)
    await context.abort(GRPC_CODES[int(error.code)], error.message, trailing_metadata=trailing)


async def written(context: aio.ServicerContext, answer: Any, rpc: str) -> bool:
    """Write one answer of a streaming call; False when the client has gone (reset, cancelled).

    Streaming handlers write rather than yield so that this failure is theirs to end quietly. On it,
    the handler waits for gRPC to notice the cancellation, which cancels the handler and ends the call
    without an error: gRPC may run the failed write's callback first, and a handler that returned at
    once had gRPC send a status on the dead call and log that as an error (seen in a soak)."""
    try:
        await context.write(answer)
        return True
    except ExecuteBatchError:
        log.debug("a %s stream went away", rpc)
        await asyncio.sleep(CLIENT_GONE_WAIT_S)
        return False


def _optional(message: object, name: str) -> int | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


class SequencePredictorService(pb_grpc.SequencePredictorServicer):
    def __init__(
        self,
        engine: EngineHandle,
        validator: Validator,
        card: ModelCard,
        model_info: pb.ModelInfo,
        metrics: Metrics,
        window: Window,
        max_answer_bytes: int,
    ) -> None:
        self.engine = engine
        self.validator = validator
        self.metrics = metrics
        self.model_info = model_info
        self.window = window
        self.max_answer_bytes = max_answer_bytes
        self.sizer = AnswerSizer.of(validator.vocab)
        self.blobs = BlobCodec(card, model_info.architecture)
        # id → text, resolved once: building a TokenProbability must not touch the vocabulary object.
        self._texts = card.vocabulary
        self.draining = False
        self._streams: set[OrderedAnswers] = set()

    def drain(self) -> None:
        """Stop taking requests: each open Predict stream answers what it has and ends UNAVAILABLE."""
        self.draining = True
        for answers in self._streams:
            answers.mark(DRAINED)

    # -- Predict -------------------------------------------------------------------------------------
    async def Predict(self, request_iterator: AsyncIterator[pb.PredictRequest], context: aio.ServicerContext):
        metadata = context.invocation_metadata()
        limit = receive_limit(metadata, self.max_answer_bytes)
        route = routing_key(metadata)  # a stream routed by one session carries only that session

        def submit(req: pb.PredictRequest) -> Submitted:
            prepared, bound = self._prepare(req)
            if route is not None and route != req.session_id and not isinstance(prepared, RequestFailed):
                try:
                    check_route(route, req.session_id)
                except RequestFailed as exc:
                    prepared = exc
            if bound > limit:
                prepared = self._too_large(bound, limit)
            return [(req, self._submit(prepared))], bound

        def render(unit: Unit) -> pb.PredictResponse:
            req, result = unit.results()[0]
            return self._response(req, result)

        await self._answer_in_order(request_iterator, context, submit, render)

    async def PredictMany(self, request_iterator: AsyncIterator[pb.PredictManyRequest], context: aio.ServicerContext):
        limit = receive_limit(context.invocation_metadata(), self.max_answer_bytes)

        def submit(message: pb.PredictManyRequest) -> Submitted:
            prepared = [self._prepare(req) for req in message.requests]
            bound = sum(self.sizer.in_message(b) for _, b in prepared)
            if bound > limit:  # all or nothing: no request of a message whose answer cannot be sent runs
                refusal = self._too_large(bound, limit, "this message's answer")
                return [(req, self._submit(refusal)) for req in message.requests], bound
            return [(req, self._submit(p)) for req, (p, _) in zip(message.requests, prepared, strict=True)], bound

        def render(unit: Unit) -> pb.PredictManyResponse:
            return pb.PredictManyResponse(responses=[self._response(req, result) for req, result in unit.results()])

        await self._answer_in_order(request_iterator, context, submit, render)

    async def _answer_in_order(
        self,
        request_iterator: AsyncIterator[Any],
        context: aio.ServicerContext,
        submit: Callable[[Any], Submitted],
        render: Callable[[Unit], Any],
    ) -> None:
        """Read requests in a task of their own (so many can be in flight, up to the window);
        write the answers in order (`written`: a client that went away ends the call quietly)."""
        answers = OrderedAnswers(self.window)
        failure: list[Exception] = []
        metrics = self.metrics

        async def read() -> None:
            try:
                async for message in request_iterator:
                    answers.add(*submit(message))
                    if answers.full:  # stop reading: HTTP/2 flow control holds the client back
                        metrics.stream_pauses.inc()
                        metrics.streams_paused.inc()
                        try:
                            await answers.wait_for_room()
                        finally:
                            metrics.streams_paused.dec()
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
                if not await written(context, render(unit), "Predict"):
                    return
                answers.sent(unit)
        finally:
            self.metrics.streams_active.dec()
            self._streams.discard(answers)
            reader.cancel()
            answers.abandon()

    def _prepare(self, req: pb.PredictRequest) -> tuple[PredictJob | RequestFailed, int]:
        """The validated job (or why it is refused) and the bound of its answer's bytes."""
        v = self.validator
        try:
            if self.draining:
                raise RequestFailed(Code.UNAVAILABLE, "the server is draining; not applied")
            job = PredictJob(
                v.session_id(req.session_id),
                time.perf_counter(),
                tokens=v.tokens(req.tokens, req.text),
                top_k=v.top_k(_optional(req, "top_k"), DEFAULT_TOP_K),
                all_steps=req.all_steps,
                reset=req.reset,
                end=req.end,
                expected_position=_optional(req, "expected_position"),
                expected_incarnation=_optional(req, "expected_incarnation"),
                score=req.score,
            )
        except RequestFailed as exc:
            return exc, self.sizer.predict(req.session_id, 0, 0, False, False)
        return job, self.sizer.predict(req.session_id, len(job.tokens), job.top_k, job.all_steps, job.score)

    def _too_large(self, bound: int, limit: int, what: str = "this request's answer") -> RequestFailed:
        return RequestFailed(
            Code.RESOURCE_EXHAUSTED,
            f"{what} could be {bound} bytes, over the {limit}-byte limit of what this client can receive"
            f" (gRPC's default unless declared in seqpredict-max-receive-bytes metadata, at most the server's"
            f" max_answer_bytes {self.max_answer_bytes}); nothing was applied: ask for fewer steps, a smaller"
            " top_k, or split the message",
            limit="answer_size",
        )

    def _submit(self, prepared: PredictJob | RequestFailed) -> PredictJob | PredictResult:
        try:
            if isinstance(prepared, RequestFailed):
                raise prepared
            self.engine.submit(prepared)
            return prepared
        except RequestFailed as exc:
            self.metrics.count_failure("predict", exc)
            return PredictResult(position=0, error=exc)

    def _response(self, req: pb.PredictRequest, result: PredictResult) -> pb.PredictResponse:
        response = pb.PredictResponse(
            session_id=req.session_id,
            request_id=req.request_id,
            position=result.position,
            incarnation=result.incarnation,
            created=result.created,
            ended=result.ended,
        )
        self._fill(response.next, result.next)
        if result.steps is not None:
            for step in result.steps:
                self._fill(response.steps.add().top, step)
        if result.token_log_probs is not None:
            response.token_log_probs.extend(result.token_log_probs)
            response.log_prob_sum = result.log_prob_sum
        if result.error is not None:
            response.error.code = int(result.error.code)
            response.error.message = result.error.message
        return response

    def _fill(self, field: Any, top: TopK) -> None:
        """Append top-k rows to a repeated TokenProbability field: adding in place is about twice as
        fast as building messages and copying them in, on the path of every answer."""
        texts, add = self._texts, field.add
        ids, probs, logps = top
        for t, p, lp in zip(ids, probs, logps, strict=True):
            add(id=t, text=texts[t], probability=p, log_probability=lp)

    # -- Generate ------------------------------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, context: aio.ServicerContext) -> None:
        """Streams the tokens as they are sampled, each written (not yielded) as Predict's are."""
        v = self.validator
        try:
            check_route(routing_key(context.invocation_metadata()), request.session_id)
            job = GenerateJob(
                v.session_id(request.session_id),
                time.perf_counter(),
                prompt=v.tokens(request.prompt_tokens, request.prompt_text, "prompt"),
                max_tokens=v.max_tokens(request.max_tokens),
                temperature=v.temperature(_optional(request, "temperature")),
                top_k=v.top_k(_optional(request, "top_k"), None),
                top_p=v.top_p(_optional(request, "top_p")),
                seed=_optional(request, "seed"),
                stop=v.stop(request.stop),
                reset=request.reset,
                end=request.end,
                expected_position=_optional(request, "expected_position"),
                expected_incarnation=_optional(request, "expected_incarnation"),
                sink=asyncio.Queue(),
            )
            self.engine.submit(job)
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
                answer = pb.GenerateResponse(
                    token=event.token,
                    text=self._texts[event.token],
                    position=event.position,
                    incarnation=event.incarnation,
                    created=event.created,
                    finish_reason=_FINISH.get(event.finish, pb.FINISH_REASON_UNSPECIFIED),
                    stop=event.stop,
                    probability=event.probability,
                    log_probability=event.log_probability,
                )
                if not await written(context, answer, "Generate") or event.finish:
                    return
        finally:
            self.metrics.streams_active.dec()
            job.cancel()  # cancelled or aborted: stop generating before the next batch

    # -- sessions and model --------------------------------------------------------------------------
    async def GetSession(self, request: pb.GetSessionRequest, context: aio.ServicerContext) -> pb.SessionInfo:
        record = await self._session_op(GetSessionJob, request.session_id, context)
        assert isinstance(record, SessionRecord)
        return session_info(record)

    async def EndSession(self, request: pb.EndSessionRequest, context: aio.ServicerContext) -> pb.EndSessionResponse:
        record = await self._session_op(EndSessionJob, request.session_id, context)
        assert isinstance(record, SessionRecord)
        return pb.EndSessionResponse(
            session_id=request.session_id, position=record.position, incarnation=record.incarnation
        )

    async def ForkSession(self, request: pb.ForkSessionRequest, context: aio.ServicerContext) -> pb.SessionInfo:
        source, target = request.source_session_id, request.target_session_id

        def check() -> dict[str, Any]:
            self.validator.session_id(target)
            if target == source:
                raise RequestFailed(Code.INVALID_ARGUMENT, "target_session_id must differ from source_session_id")
            return {"target": target, "replace": request.replace, **_guard(request)}

        record = await self._session_op(ForkJob, source, context, check)
        assert isinstance(record, SessionRecord)
        return session_info(record)

    async def ExportSession(
        self, request: pb.ExportSessionRequest, context: aio.ServicerContext
    ) -> pb.ExportSessionResponse:
        result = await self._session_op(ExportJob, request.session_id, context, lambda: _guard(request))
        record, state = result  # type: ignore[misc]
        return pb.ExportSessionResponse(blob=self.blobs.encode(record.session_id, state), session=session_info(record))

    async def ImportSession(self, request: pb.ImportSessionRequest, context: aio.ServicerContext) -> pb.SessionInfo:
        def check() -> dict[str, Any]:
            _blob, state = self.blobs.decode(request.blob)
            return {"state": state, "force": request.force}

        # The name defaults to the one the blob was exported under.
        name = request.session_id or _exported_name(request.blob)
        record = await self._session_op(ImportJob, name, context, check)
        assert isinstance(record, SessionRecord)
        return session_info(record)

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: aio.ServicerContext
    ) -> pb.ListSessionsResponse:
        prefix = request.prefix

        def check() -> dict[str, Any]:
            self.validator.prefix(prefix)
            limit = self.validator.page_size(request.page_size)
            return {"prefix": prefix, "after": after_id(request.page_token, prefix), "limit": limit}

        result = await self._session_op(ListJob, LIST_QUEUE, context, check)
        records, more = result  # type: ignore[misc]
        token = page_token(prefix, records[-1].session_id) if more and records else ""
        return pb.ListSessionsResponse(sessions=[session_info(r) for r in records], next_page_token=token)

    async def _session_op(
        self,
        kind: type[FutureJob],
        session_id: str,
        context: aio.ServicerContext,
        fields: Callable[[], dict[str, Any]] = dict,
    ) -> object:
        """Validate, queue a bookkeeping job behind the session's other work and wait for its answer.

        `fields()` validates the request and gives the job's own fields (RequestFailed refuses it).
        """
        try:
            own = fields()
            if kind.per_session:
                self.validator.session_id(session_id)
                check_route(routing_key(context.invocation_metadata()), session_id)
            job = kind(session_id, time.perf_counter(), future=asyncio.get_running_loop().create_future(), **own)
            self.engine.submit(job)
            result = await job.future  # type: ignore[misc]
        except RequestFailed as exc:  # refused before reaching the engine (which counts its own)
            self.metrics.count_failure(kind.kind, exc)
            result = exc
        if isinstance(result, RequestFailed):
            await abort(context, result)
        return result

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: aio.ServicerContext) -> pb.ModelInfo:
        return self.model_info


def build_model_info(card: ModelCard, limits: pb.ServerLimits) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=card.name,
        fingerprint=card.fingerprint,
        architecture=pb.Architecture(
            cell=card.cell,
            vocab_size=card.vocab_size,
            embed_dim=card.embed_dim,
            hidden_size=card.hidden_size,
            num_layers=card.num_layers,
            state_names=list(card.state_names),
        ),
        vocabulary=list(card.vocabulary),
        training_record_json=json.dumps(card.training, sort_keys=True),
        state_bytes_per_session=card.state_bytes_per_session,
        limits=limits,
    )


def _guard(request: Any) -> dict[str, int | None]:
    return {
        "expected_position": _optional(request, "expected_position"),
        "expected_incarnation": _optional(request, "expected_incarnation"),
    }


def _exported_name(data: bytes) -> str:
    """The session id a blob was exported under ('' when it cannot be read: the full check says why)."""
    blob = pb.SessionBlob()
    try:
        blob.ParseFromString(data)
    except Exception:
        return ""
    return blob.session_id


def session_info(record: SessionRecord) -> pb.SessionInfo:
    return pb.SessionInfo(
        session_id=record.session_id,
        position=record.position,
        incarnation=record.incarnation,
        created_at=_timestamp(record.created_at),
        last_used_at=_timestamp(record.last_used_at),
        expires_at=_timestamp(record.expires_at),
    )


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts

"""The blocking client: `Client` owns one channel, `Session` wraps one server-side session.

    with Client("127.0.0.1:50051") as client:
        chat = client.session("alice", strict=True)
        print(chat.feed("To be, or not to be").top.text)
        print(chat.generate_text(40, seed=1))

`AsyncClient` in `seqpredict.client.aio` has the same surface for asyncio.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, overload

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.client.channel import DEFAULT_TARGET, ChannelConfig
from seqpredict.client.errors import NotFound, SeqpredictError, from_rpc_error
from seqpredict.client.generation import Generation
from seqpredict.client.requests import (
    FeedInput,
    FeedRequest,
    GenerateOptions,
    Tokens,
    answer,
    answers,
    as_feed,
    export_request,
    fork_request,
    generate_request,
    many_request,
    only,
    predict_request,
)
from seqpredict.client.tracking import PositionTracker
from seqpredict.client.types import ExportedSession, ModelInfo, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class Client:
    """A connection to a seqpredict server; thread-safe, cheap to share, close it when done."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float | None = 30.0,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.config = ChannelConfig(
            target, timeout, token, root_certificates, private_key, certificate_chain, tuple(options or ())
        )
        opts = self.config.channel_options()
        if self.config.secure:
            self._channel = grpc.secure_channel(target, self.config.credentials(), opts)
        else:
            self._channel = grpc.insecure_channel(target, opts)
        self._stub = pb_grpc.SequencePredictorStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._metadata = self.config.metadata()

    @property
    def target(self) -> str:
        return self.config.target

    @property
    def timeout(self) -> float | None:
        """Deadline of every unary call, in seconds."""
        return self.config.timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(
        self, session_id: str, *, strict: bool = False, position: int | None = None, incarnation: int | None = None
    ) -> Session:
        """A handle on a server-side session (created by its first feed; no call is made here).

        `strict`: every feed and generate carries the tracked position and incarnation as
        expected_position / expected_incarnation, so lost state (eviction, restart, reset, another
        writer) raises PositionMismatch instead of silently continuing on other state.
        `position` (and `incarnation`): where the session is known to be, e.g. 0 for one that
        must be new; unknown positions are fetched from the server first.
        """
        return Session(self, session_id, strict=strict, position=position, incarnation=incarnation)

    def model_info(self) -> ModelInfo:
        """The served model: name, sha256 fingerprint, architecture, vocabulary, training record, limits."""
        return ModelInfo.from_pb(self._unary(self._stub.GetModelInfo, pb.GetModelInfoRequest()))

    def health(self, service: str = "") -> str:
        """The serving status of `service` ("" is the whole server): "SERVING", "NOT_SERVING", ..."""
        resp = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def predict_many(self, requests: Iterable[tuple[str, FeedInput]]) -> list[Prediction | SeqpredictError]:
        """Feed many sessions in one message (a gateway's batch), answers in the same order.

        `requests` are (session_id, input) pairs, the input a str, token ids or a FeedRequest.
        A failed request comes back as its exception object in its place rather than raised:
        the other requests were applied, and raising would hide their results.
        """
        message, feeds = many_request(requests)
        call = self._stub.PredictMany(iter([message]), timeout=self.timeout, metadata=self._metadata)
        try:
            reply = only(list(call))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from exc
        return answers(reply, feeds)

    def fork_session(
        self,
        source: str,
        target: str,
        *,
        replace: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
    ) -> SessionInfo:
        """Copy `source` (state and position, after all its earlier requests) to `target`, as a new
        incarnation; the source is unchanged. AlreadyExists when the target exists, unless `replace`;
        NotFound without a source; PositionMismatch when the guard differs."""
        req = fork_request(source, target, replace, (expected_position, expected_incarnation))
        return SessionInfo.from_pb(self._unary(self._stub.ForkSession, req, source))

    def export_session(
        self, session_id: str, *, expected_position: int | None = None, expected_incarnation: int | None = None
    ) -> ExportedSession:
        """The session's whole state as a self-describing blob; the session is unchanged."""
        req = export_request(session_id, (expected_position, expected_incarnation))
        return ExportedSession.from_pb(self._unary(self._stub.ExportSession, req, session_id))

    def import_session(self, blob: bytes, session_id: str | None = None, *, force: bool = False) -> SessionInfo:
        """Install an exported state (under `session_id`, or the name it was exported under), with the
        position and incarnation it had. Over an existing session only when it is exactly that state,
        unless `force`: PositionMismatch when it moved on or is another history of it."""
        req = pb.ImportSessionRequest(session_id=session_id or "", blob=blob, force=force)
        return SessionInfo.from_pb(self._unary(self._stub.ImportSession, req, session_id))

    def list_sessions(self, prefix: str = "", *, page_size: int = 0) -> Iterator[SessionInfo]:
        """Every session whose id starts with `prefix`, in name order, fetched a page at a time."""
        token = ""
        while True:
            req = pb.ListSessionsRequest(prefix=prefix, page_size=page_size, page_token=token)
            page = self._unary(self._stub.ListSessions, req)
            yield from (SessionInfo.from_pb(s) for s in page.sessions)
            token = page.next_page_token
            if not token:
                return

    def _unary(self, method: Any, request: Any, session_id: str | None = None) -> Any:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, session_id) from exc


class Session:
    """One named session on the server; `position` follows every answer (None while unknown).

    Not thread-safe: the server orders one session's requests as they arrive, so a session
    should have one writer at a time anyway.
    """

    def __init__(
        self,
        client: Client,
        session_id: str,
        *,
        strict: bool = False,
        position: int | None = None,
        incarnation: int | None = None,
    ) -> None:
        self.client = client
        self.session_id = session_id
        self._tracker = PositionTracker(strict, position, incarnation)

    @property
    def strict(self) -> bool:
        return self._tracker.strict

    @property
    def position(self) -> int | None:
        """Tokens the session has consumed, as of the last answer; 0 after it was ended."""
        return self._tracker.position

    @position.setter
    def position(self, value: int | None) -> None:
        # For resynchronising after a PositionMismatch the caller has dealt with.
        self._tracker.position = value

    @property
    def incarnation(self) -> int | None:
        """Which history of the session the client is on (0: it does not exist); None while unknown."""
        return self._tracker.incarnation

    @incarnation.setter
    def incarnation(self, value: int | None) -> None:
        self._tracker.incarnation = value

    def __repr__(self) -> str:
        return f"Session({self.session_id!r}, position={self.position}, strict={self.strict})"

    def feed(
        self,
        tokens_or_text: Tokens = (),
        *,
        top_k: int | None = None,
        all_steps: bool = False,
        reset: bool = False,
        end: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
        score: bool = False,
    ) -> Prediction:
        """Feed text (a str) or token ids and return the next-token prediction; empty input feeds nothing.

        `score`: also return each token's log-probability under the state before it (surprisal,
        perplexity). An error answered by the server raises its typed exception (InvalidArgument,
        PositionMismatch, ...), and then nothing was computed and `position` is unchanged.
        """
        feed = FeedRequest(tokens_or_text, top_k, all_steps, reset, end, expected_position, expected_incarnation, score)
        self._sync_position()
        req = predict_request(
            self.session_id, feed, self._tracker.expected(expected_position, expected_incarnation, reset)
        )
        call = self.client._stub.Predict(iter([req]), timeout=self.client.timeout, metadata=self.client._metadata)
        try:
            resp = only(list(call))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.session_id) from exc
        return self._result(resp, feed)

    @overload
    def stream(
        self, inputs: Iterable[FeedInput], *, timeout: float | None = ..., return_errors: Literal[False] = ...
    ) -> Iterator[Prediction]: ...

    @overload
    def stream(
        self, inputs: Iterable[FeedInput], *, timeout: float | None = ..., return_errors: Literal[True]
    ) -> Iterator[Prediction | SeqpredictError]: ...

    def stream(
        self, inputs: Iterable[FeedInput], *, timeout: float | None = None, return_errors: bool = False
    ) -> Iterator[Prediction | SeqpredictError]:
        """Feed every input over one Predict stream, yielding each answer as it arrives, in order.

        Inputs are sent as fast as the stream takes them (they may be a lazy iterator), without
        waiting for earlier answers. An in-band error raises when its answer is reached and
        cancels the rest; with `return_errors=True` the exception object is yielded in its place
        and the stream goes on. Strict sessions number every request's expected_position ahead.
        Closing the iterator early cancels the call; inputs already sent may have been applied.
        """
        self._sync_position()
        plan = self._tracker.planner()
        sent: deque[FeedRequest] = deque()
        failure: list[BaseException] = []

        def requests() -> Iterator[pb.PredictRequest]:
            try:
                for i, item in enumerate(inputs):
                    feed = as_feed(item)
                    req = predict_request(self.session_id, feed, plan(feed), request_id=i)
                    sent.append(feed)  # before the request leaves, so its answer always finds it
                    yield req
            except Exception as exc:  # grpc would only log it: hand it to the reading side instead
                failure.append(exc)
                raise

        call = self.client._stub.Predict(requests(), timeout=timeout, metadata=self.client._metadata)
        finished = False
        try:
            for resp in call:
                outcome = self._outcome(resp, sent.popleft())
                if isinstance(outcome, SeqpredictError) and not return_errors:
                    raise outcome
                yield outcome
            finished = True
        except grpc.RpcError as exc:
            finished = True
            if failure:
                raise failure[0] from exc
            raise from_rpc_error(exc, self.session_id) from exc
        finally:
            if not finished:
                call.cancel()

    def generate(
        self,
        max_tokens: int,
        *,
        prompt: Tokens | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
        reset: bool = False,
        end: bool = False,
        expected_position: int | None = None,
        expected_incarnation: int | None = None,
        timeout: float | None = None,
    ) -> Generation:
        """Sample up to `max_tokens` tokens after an optional prompt, streamed as they are produced.

        The generated tokens are fed to the session, so later feeds continue after them. The
        call starts on the first `next()`. To stop early, `close()` it or leave a `with` block:
        that cancels the call so the server stops promptly, and since the server may have fed a
        few more tokens than arrived, re-reads `position` from the server.
        """
        opts = GenerateOptions(
            max_tokens,
            prompt,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            reset,
            end,
            expected_position,
            expected_incarnation,
        )

        def start() -> Any:
            self._sync_position()
            guard = self._tracker.expected(opts.expected_position, opts.expected_incarnation, opts.reset)
            req = generate_request(self.session_id, opts, guard)
            return self.client._stub.Generate(req, timeout=timeout, metadata=self.client._metadata)

        return Generation(self.session_id, self._tracker, opts.end, start, self._after_cancel)

    def generate_text(self, max_tokens: int, **options: Any) -> str:
        """The whole generated text of `generate(max_tokens, **options)`."""
        with self.generate(max_tokens, **options) as tokens:
            return "".join(token.text for token in tokens)

    def info(self) -> SessionInfo:
        """The session's bookkeeping; NotFound when it does not exist."""
        msg = self.client._unary(
            self.client._stub.GetSession, pb.GetSessionRequest(session_id=self.session_id), self.session_id
        )
        info = SessionInfo.from_pb(msg)
        self._tracker.observe(info.position, info.incarnation, ended=False)
        return info

    def refresh(self) -> int:
        """Re-read the position from the server (0 when the session does not exist) and return it."""
        try:
            return self.info().position
        except NotFound:
            self._tracker.observe(0, 0, ended=True)
            return 0

    def fork(self, target: str, *, replace: bool = False) -> Session:
        """A copy of this session under `target` (strict: only from the state this handle expects),
        as a handle on the copy with the same strictness and a known position and incarnation."""
        self._sync_position()
        guard = self._tracker.expected(None, None, reset=False)
        info = self.client.fork_session(
            self.session_id, target, replace=replace, expected_position=guard[0], expected_incarnation=guard[1]
        )
        return Session(self.client, target, strict=self.strict, position=info.position, incarnation=info.incarnation)

    def export(self) -> ExportedSession:
        """This session's whole state as a blob (strict: only the state this handle expects)."""
        self._sync_position()
        position, incarnation = self._tracker.expected(None, None, reset=False)
        exported = self.client.export_session(
            self.session_id, expected_position=position, expected_incarnation=incarnation
        )
        self._tracker.observe(exported.info.position, exported.info.incarnation, ended=False)
        return exported

    def end(self) -> int:
        """Release the session on the server and return its final position; NotFound when it does not exist."""
        msg = self.client._unary(
            self.client._stub.EndSession, pb.EndSessionRequest(session_id=self.session_id), self.session_id
        )
        self._tracker.observe(msg.position, msg.incarnation, ended=True)
        return msg.position

    # -- internals ------------------------------------------------------------------------------
    def _sync_position(self) -> None:
        if self._tracker.needs_refresh:
            self.refresh()

    def _outcome(self, resp: pb.PredictResponse, feed: FeedRequest) -> Prediction | SeqpredictError:
        outcome = answer(resp, feed)
        if isinstance(outcome, Prediction):
            self._tracker.observe(outcome.position, outcome.incarnation, outcome.ended)
        return outcome

    def _result(self, resp: pb.PredictResponse, feed: FeedRequest) -> Prediction:
        outcome = self._outcome(resp, feed)
        if isinstance(outcome, SeqpredictError):
            raise outcome
        return outcome

    def _after_cancel(self) -> None:
        """The server stops between steps, after tokens we never received: ask where it stopped.

        GetSession is queued behind the cancelled generation on the server, so it answers with
        the position the generation really left.
        """
        self._tracker.lost_track()
        try:
            self.refresh()
        except SeqpredictError as exc:
            log.warning("session %s: position unknown after cancelling a generation: %s", self.session_id, exc)

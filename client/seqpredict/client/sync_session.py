"""The blocking `Session`: one server-side session's feeds, streams, generations and state operations.

Made by `Client.session`; the bookkeeping it shares with `AsyncSession` is in `handle.py`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import grpc

from seqpredict.client.channel import routed
from seqpredict.client.errors import (
    NotFound,
    PositionMismatch,
    SeqpredictError,
    from_rpc_error,
)
from seqpredict.client.generation import Generation
from seqpredict.client.handle import SessionHandle
from seqpredict.client.requests import (
    FeedInput,
    FeedRequest,
    GenerateOptions,
    Tokens,
    as_feed,
    generate_request,
    only,
    predict_request,
)
from seqpredict.client.retrying import CUT_OFF, RETRY_DELAYS_S, applied_before, may_resend
from seqpredict.client.session_ops import end_request, get_request
from seqpredict.client.types import ExportedSession, Prediction, SessionInfo
from seqpredict.v1 import seqpredict_pb2 as pb

if TYPE_CHECKING:
    from seqpredict.client.sync import Client

log = logging.getLogger(__name__)


class Session(SessionHandle):
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
        super().__init__(session_id, strict=strict, position=position, incarnation=incarnation)
        self.client = client
        self._metadata = routed(client._metadata, session_id)  # every call of it carries its routing key

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

        A feed guarded by a known position and incarnation (strict sessions, or both given) that
        fails UNAVAILABLE — its replica died or drained, the store was unreachable — is sent again
        a few times; when the lost attempt had been applied, the resend is refused and the
        prediction is asked for at the new position (AnswerLost for all_steps/score answers).
        """
        feed = FeedRequest(tokens_or_text, top_k, all_steps, reset, end, expected_position, expected_incarnation, score)
        self._sync_position()
        guard = self._tracker.expected(expected_position, expected_incarnation, reset)
        req = predict_request(self.session_id, feed, guard)
        delays = RETRY_DELAYS_S if may_resend(feed, guard) else ()
        for attempt in range(len(delays) + 1):
            try:
                return self._result(self._predict_one(req), feed)
            except CUT_OFF as exc:  # the call ended without its answer: its outcome is unknown
                if attempt == len(delays):
                    raise
                log.info("session %s: %s; sending the feed again", self.session_id, exc.message)
                time.sleep(delays[attempt])
            except PositionMismatch as exc:
                if attempt == 0 or not applied_before(exc, feed, guard):
                    raise
                return self._applied_anyway(feed, exc)
        raise AssertionError("unreachable")

    def _predict_one(self, req: pb.PredictRequest) -> pb.PredictResponse:
        call = self.client._stub.Predict(iter([req]), timeout=self.client.timeout, metadata=self._metadata)
        try:
            return only(list(call))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, self.session_id) from exc

    def _applied_anyway(self, feed: FeedRequest, refusal: PositionMismatch) -> Prediction:
        """An attempt whose answer was lost had applied `feed`: the prediction at the position it left."""
        position, incarnation = self._lost_answer(feed, refusal)
        return self.feed((), top_k=feed.top_k, expected_position=position, expected_incarnation=incarnation)

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

        call = self.client._stub.Predict(requests(), timeout=timeout, metadata=self._metadata)
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
            return self.client._stub.Generate(req, timeout=timeout, metadata=self._metadata)

        return Generation(self.session_id, self._tracker, opts.end, start, self._after_cancel)

    def generate_text(self, max_tokens: int, **options: Any) -> str:
        """The whole generated text of `generate(max_tokens, **options)`."""
        with self.generate(max_tokens, **options) as tokens:
            return "".join(token.text for token in tokens)

    def info(self) -> SessionInfo:
        """The session's bookkeeping; NotFound when it does not exist."""
        msg = self.client._unary(self.client._stub.GetSession, get_request(self.session_id), self.session_id)
        return self._seen(SessionInfo.from_pb(msg))

    def refresh(self) -> int:
        """Re-read the position from the server (0 when the session does not exist) and return it."""
        try:
            return self.info().position
        except NotFound:
            return self._gone()

    def fork(self, target: str, *, replace: bool = False) -> Session:
        """A copy of this session under `target` (strict: only from the state this handle expects),
        as a handle on the copy with the same strictness and a known position and incarnation."""
        self._sync_position()
        position, incarnation = self._state_guard()
        info = self.client.fork_session(
            self.session_id, target, replace=replace, expected_position=position, expected_incarnation=incarnation
        )
        return Session(self.client, target, strict=self.strict, position=info.position, incarnation=info.incarnation)

    def export(self) -> ExportedSession:
        """This session's whole state as a blob (strict: only the state this handle expects)."""
        self._sync_position()
        position, incarnation = self._state_guard()
        return self._exported(
            self.client.export_session(self.session_id, expected_position=position, expected_incarnation=incarnation)
        )

    def end(self) -> int:
        """Release the session on the server and return its final position; NotFound when it does not exist."""
        return self._ended(
            self.client._unary(self.client._stub.EndSession, end_request(self.session_id), self.session_id)
        )

    # -- internals ------------------------------------------------------------------------------
    def _sync_position(self) -> None:
        if self._tracker.needs_refresh:
            self.refresh()

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

"""The asyncio client against the real server: the core flows of the sync tests, via asyncio.run."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from seqpredict.client import (
    AlreadyExists,
    AsyncClient,
    FeedRequest,
    InvalidArgument,
    NotFound,
    PositionMismatch,
    Prediction,
    Unavailable,
)

PROMPT = "JULIET:\nO Romeo"
TOL = 1e-5


def run(server: Any, test: Callable[[AsyncClient], Awaitable[None]]) -> None:
    """Run one test coroutine with a fresh AsyncClient on its own event loop."""

    async def main() -> None:
        async with AsyncClient(server.address, timeout=30) as client:
            await test(client)

    asyncio.run(main())


def sid() -> str:
    return f"test-{uuid.uuid4().hex}"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_same_distribution(a: Prediction, b: Prediction) -> None:
    assert [t.id for t in a.next] == [t.id for t in b.next]
    for x, y in zip(a.next, b.next, strict=True):
        assert x.probability == pytest.approx(y.probability, abs=TOL)


def test_feed_keeps_state_and_reset_restarts(server) -> None:
    async def test(client: AsyncClient) -> None:
        s = client.session(sid())
        first = await s.feed("Now is the ")
        assert (first.position, first.created) == (11, True)
        vocab = (await client.model_info()).vocabulary
        later = await s.feed([vocab.index(ch) for ch in "winter"])
        assert (later.position, later.created, s.position) == (17, False, 17)
        assert_same_distribution(later, await client.session(sid()).feed("Now is the winter"))
        again = await s.feed("winter", reset=True)
        assert again.position == 6
        assert_same_distribution(again, await client.session(sid()).feed("winter"))

    run(server, test)


def test_stream_answers_in_order(server) -> None:
    async def test(client: AsyncClient) -> None:
        s = client.session(sid(), strict=True, position=0)

        async def inputs() -> AsyncIterator[Any]:
            for item in ["of ", "our", [1, 2], FeedRequest("d", top_k=2)]:
                yield item

        answers = [p async for p in s.stream(inputs())]
        assert [p.position for p in answers] == [3, 6, 8, 9]
        assert [p.request_id for p in answers] == [0, 1, 2, 3] and len(answers[-1].next) == 2
        outcomes = [o async for o in s.stream(["x", "\u20ac", "y"], return_errors=True)]
        assert isinstance(outcomes[0], Prediction) and outcomes[0].position == 10
        assert isinstance(outcomes[1], InvalidArgument)
        # Strict numbering assumed the bad input would be fed; it was not, so what follows mismatches.
        assert isinstance(outcomes[2], PositionMismatch) and outcomes[2].actual_position == 10
        loose = client.session(s.session_id)
        outcomes = [o async for o in loose.stream(["x", "\u20ac", "y"], return_errors=True)]
        assert [o.position for o in outcomes if isinstance(o, Prediction)] == [11, 12]

    run(server, test)


def test_generate_and_cancel_early(server) -> None:
    async def test(client: AsyncClient) -> None:
        s = client.session(sid())
        full = [t async for t in s.generate(300, prompt=PROMPT, seed=4, reset=True)]
        assert len(full) == 300 and full[-1].finish_reason == "max_tokens"
        assert await s.generate_text(40, prompt=PROMPT, seed=4, reset=True) == "".join(t.text for t in full[:40])
        early = client.session(sid())
        async with early.generate(300, prompt=PROMPT, seed=4) as tokens:
            async for token in tokens:
                if token.position == len(PROMPT) + 5:
                    break
        fed = early.position - len(PROMPT)  # re-read from the server after the cancel
        assert 5 <= fed <= 300
        replay = client.session(sid())
        await replay.feed(PROMPT)
        expected = await replay.feed([t.token for t in full[:fed]])
        here = await early.feed()
        assert here.position == expected.position
        assert_same_distribution(here, expected)

    run(server, test)


def test_generate_stop_and_continue(server) -> None:
    async def test(client: AsyncClient) -> None:
        s = client.session(sid())
        full = await s.generate_text(60, prompt=PROMPT, seed=8, reset=True)
        stop = full[15]
        tokens = [t async for t in s.generate(60, prompt=PROMPT, seed=8, reset=True, stop=[stop])]
        assert (tokens[-1].finish_reason, tokens[-1].stop) == ("stop", stop)
        text = "".join(t.text for t in tokens)
        assert text == full[: full.index(stop) + 1]
        after = await s.feed("!")
        assert_same_distribution(after, await client.session(sid()).feed(PROMPT + text + "!"))

    run(server, test)


def test_info_end_and_errors(server) -> None:
    async def test(client: AsyncClient) -> None:
        assert await client.health() == "SERVING"
        s = client.session(sid(), strict=True)
        await s.feed("hello")
        assert (await s.info()).position == 5
        with pytest.raises(InvalidArgument):
            await s.feed("\u20ac")
        with pytest.raises(InvalidArgument):
            await client.session("bad id!").feed("x")
        await client.session(s.session_id).end()  # behind the strict session's back
        with pytest.raises(PositionMismatch) as caught:
            await s.feed("again")
        assert caught.value.actual_position == 0
        with pytest.raises(PositionMismatch):
            await s.generate_text(3)
        with pytest.raises(NotFound) as missing:
            await s.info()
        assert missing.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(NotFound):
            await s.end()
        many = await client.predict_many([(s.session_id, "abc"), ("bad id!", "x")])
        assert isinstance(many[0], Prediction) and many[0].created and isinstance(many[1], InvalidArgument)
        assert await s.end() == 3

    run(server, test)


def test_fork_export_import_list_and_score(server) -> None:
    """The session-state operations through the asyncio half, as `Session` has them."""

    async def test(client: AsyncClient) -> None:
        s = client.session(sid(), strict=True)
        await s.feed(PROMPT)
        child = await s.fork(s.session_id + "-child")
        assert (child.position, child.strict) == (len(PROMPT), True) and child.incarnation not in (None, s.incarnation)
        with pytest.raises(AlreadyExists):
            await s.fork(child.session_id)
        exported = await s.export()
        assert (exported.info.position, exported.info.incarnation) == (s.position, s.incarnation)
        assert await s.end() == len(PROMPT)
        info = await client.import_session(exported.blob)
        assert (info.session_id, info.position, info.incarnation) == (
            s.session_id,
            len(PROMPT),
            exported.info.incarnation,
        )
        await s.refresh()
        here, there = await s.feed(" doth", score=True), await child.feed(" doth", score=True)
        assert here.token_log_probs is not None and len(here.token_log_probs) == 5
        assert here.token_log_probs == pytest.approx(there.token_log_probs, abs=TOL) and here.perplexity > 1
        listed = [i.session_id async for i in client.list_sessions(s.session_id, page_size=1)]
        assert listed == [s.session_id, child.session_id]
        with pytest.raises(NotFound):
            await client.export_session(sid())
        await client.session(s.session_id).feed("x", reset=True)  # another writer: another history
        with pytest.raises(PositionMismatch):
            await s.export()
        with pytest.raises(PositionMismatch):
            await client.import_session(exported.blob)  # over another history, without force
        assert (await client.import_session(exported.blob, force=True)).position == len(PROMPT)

    run(server, test)


def test_unreachable_server_raises_unavailable() -> None:
    async def main() -> None:
        async with AsyncClient(f"127.0.0.1:{closed_port()}", timeout=3) as client:
            with pytest.raises(Unavailable):
                await client.model_info()
            with pytest.raises(Unavailable):
                await client.session("s").feed("x")

    asyncio.run(main())

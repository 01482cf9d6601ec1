"""The client's resend of a guarded feed whose answer was lost (a replica died after applying it).

The fault is injected on the client side — the real server applies the feed and answers, and the
answer is dropped as if its connection had died — so the server's refusal of the resend, and the
client's reading of it, are the real ones.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from seqpredict.client import AnswerLost, AsyncClient, Client, Unavailable
from seqpredict.client.errors import Unavailable as UnavailableError


def lose_first_answers(session: Any, count: int = 1) -> list[int]:
    """Make the session's next `count` Predict calls reach the server but lose their answers."""
    lost: list[int] = []
    real = session._predict_one

    def flaky(req: Any) -> Any:
        answer = real(req)
        if len(lost) < count:
            lost.append(answer.position)
            raise UnavailableError("injected: the answer was lost with its connection")
        return answer

    session._predict_one = flaky
    return lost


def lose_first_answers_async(session: Any, count: int = 1) -> list[int]:
    lost: list[int] = []
    real = session._predict_one

    async def flaky(req: Any) -> Any:
        answer = await real(req)
        if len(lost) < count:
            lost.append(answer.position)
            raise UnavailableError("injected: the answer was lost with its connection")
        return answer

    session._predict_one = flaky
    return lost


def sid() -> str:
    return f"resend-{uuid.uuid4().hex[:12]}"


def test_a_strict_feed_applied_before_its_answer_was_lost_answers_from_the_new_position(server: Any) -> None:
    with Client(server.address, timeout=30) as client:
        name = sid()
        session = client.session(name, strict=True, position=0)
        session.feed("To be")
        lost = lose_first_answers(session)
        answer = session.feed(", or")
        assert lost == [9], "the first attempt was applied"
        assert answer.position == 9 and session.position == 9, "applied once, not twice"
        fresh = client.session(sid())
        assert [t.id for t in answer.next] == [t.id for t in fresh.feed("To be, or").next]


def test_per_step_answers_lost_with_a_replica_are_reported_not_invented(server: Any) -> None:
    with Client(server.address, timeout=30) as client:
        session = client.session(sid(), strict=True, position=0)
        session.feed("abc")
        lose_first_answers(session)
        with pytest.raises(AnswerLost) as lost:
            session.feed("def", score=True)
        assert lost.value.position == 6 and session.position == 6
        assert session.feed("g").position == 7, "the session goes on from where it stands"


def test_an_unguarded_feed_is_never_sent_twice(server: Any) -> None:
    with Client(server.address, timeout=30) as client:
        session = client.session(sid())  # not strict: nothing tells whether a resend would feed twice
        session.feed("abc")
        lose_first_answers(session)
        with pytest.raises(Unavailable):
            session.feed("def")
        assert session.refresh() == 6, "applied exactly once"


def test_the_asyncio_client_resends_the_same_way(server: Any) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.address, timeout=30) as client:
            session = client.session(sid(), strict=True, position=0)
            await session.feed("To be")
            lose_first_answers_async(session)
            answer = await session.feed(", or")
            assert answer.position == 9 and session.position == 9
            lose_first_answers_async(session)
            with pytest.raises(AnswerLost):
                await session.feed("xy", all_steps=True)
            assert session.position == 11

    asyncio.run(scenario())


def test_single_session_calls_carry_their_routing_key(server: Any) -> None:
    """Every call about one session names it in x-session-id (what a proxy hashes on)."""
    with Client(server.address, timeout=30) as client:
        seen: list[tuple[str, Any]] = []
        for name in ("Predict", "Generate", "GetSession", "EndSession", "ForkSession", "ExportSession"):
            _record(client._stub, name, seen)
        name = sid()
        session = client.session(name)
        session.feed("abc")
        session.generate_text(3, seed=1)
        session.info()
        session.fork(name + "-fork").end()
        session.export()
        session.end()
        assert {method for method, _ in seen} == {
            "Predict",
            "Generate",
            "GetSession",
            "EndSession",
            "ForkSession",
            "ExportSession",
        }
        for method, metadata in seen:
            keys = [v for k, v in metadata if k == "x-session-id"]
            assert keys in ([name], [name + "-fork"]), (method, metadata)


def _record(stub: Any, name: str, seen: list[tuple[str, Any]]) -> None:
    real: Callable[..., Any] = getattr(stub, name)

    def call(request: Any, **kwargs: Any) -> Any:
        seen.append((name, kwargs.get("metadata") or ()))
        return real(request, **kwargs)

    setattr(stub, name, call)

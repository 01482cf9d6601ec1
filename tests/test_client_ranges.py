"""The Python client raises InvalidArgument, naming the field, for a number its request cannot carry.

protobuf alone would raise a bare ValueError ("Value out of range: -5"); nothing reaches the
server, so the session is untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from seqpredict.client import AsyncClient, Client, InvalidArgument, NotFound


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: list(s.generate(-5)), "max_tokens"),
        (lambda s: list(s.generate(2**32)), "max_tokens"),
        (lambda s: list(s.generate(5, seed=-1)), "seed"),
        (lambda s: list(s.generate(5, seed=10**20)), "seed"),
        (lambda s: list(s.generate(5, top_k=-1)), "top_k"),
        (lambda s: list(s.generate(5, prompt=[2**31])), "tokens"),
        (lambda s: s.feed("x", top_k=-1), "top_k"),
        (lambda s: s.feed([1, -(2**31) - 1]), "tokens"),
        (lambda s: s.feed("x", expected_position=-1), "expected_position"),
        (lambda s: list(s.stream(["x", [2**40]])), "tokens"),
        (lambda s: s.feed("x", expected_incarnation=2**64), "expected_incarnation"),
        (lambda s: s.client.fork_session(s.session_id, "copy", expected_position=-1), "expected_position"),
        (lambda s: s.client.export_session(s.session_id, expected_incarnation=-1), "expected_incarnation"),
        (lambda s: list(s.client.list_sessions(s.session_id, page_size=-1)), "page_size"),
    ],
)
def test_out_of_range_numbers_raise_invalid_argument(server, call: Callable[[Any], Any], field: str) -> None:
    with Client(server.address) as client:
        session = client.session(f"ranges-{field}")
        with pytest.raises(InvalidArgument, match=field):
            call(session)
        if "stream" not in repr(call.__code__.co_names):
            with pytest.raises(NotFound):
                session.info()  # nothing was sent


def test_the_async_client_raises_it_too(server) -> None:
    async def main() -> None:
        async with AsyncClient(server.address) as client:
            session = client.session("ranges-async")
            with pytest.raises(InvalidArgument, match="seed"):
                async for _ in session.generate(5, seed=-1):
                    pass
            with pytest.raises(InvalidArgument, match="top_k"):
                await session.feed("x", top_k=2**32)
            with pytest.raises(InvalidArgument, match="expected_position"):
                await client.fork_session("ranges-async", "copy", expected_position=2**64)
            with pytest.raises(InvalidArgument, match="page_size"):
                async for _ in client.list_sessions(page_size=2**32):
                    pass

    asyncio.run(main())

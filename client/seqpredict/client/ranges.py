"""Numbers a request can carry, checked against their protobuf field types before protobuf sees them.

protobuf refuses a number that does not fit its field with a bare `ValueError: Value out of
range: -5`, naming no field. The client raises InvalidArgument naming the option instead, the
same exception the server's own refusal of a bad value becomes; what fits the wire but makes
no sense (top_k 0, a token outside the vocabulary) is still the server's to judge.
"""

from __future__ import annotations

from collections.abc import Iterable

from seqpredict.client.errors import InvalidArgument

INT32 = (-(2**31), 2**31 - 1)  # token ids
UINT32 = (0, 2**32 - 1)  # top_k, max_tokens
UINT64 = (0, 2**64 - 1)  # seed, expected_position, expected_incarnation


def check(name: str, value: int | None, bounds: tuple[int, int]) -> None:
    """InvalidArgument unless `value` is None or an integer within `bounds` (inclusive)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        return  # not a number protobuf would range-check; a wrong type is protobuf's TypeError
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be an integer from {low} to {high}, got {value}")


def check_tokens(name: str, tokens: str | Iterable[int]) -> None:
    if not isinstance(tokens, str):
        for index, token in enumerate(tokens):
            if isinstance(token, int) and not INT32[0] <= token <= INT32[1]:
                raise InvalidArgument(f"{name}[{index}] = {token} is not a token id (a 32-bit integer)")


def check_request_numbers(
    *,
    tokens: str | Iterable[int] = (),
    top_k: int | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    expected_position: int | None = None,
    expected_incarnation: int | None = None,
) -> None:
    """Every number of one Predict or Generate request; raises InvalidArgument naming the first bad one."""
    check_tokens("tokens", tokens)
    check("top_k", top_k, UINT32)
    check("max_tokens", max_tokens, UINT32)
    check("seed", seed, UINT64)
    check("expected_position", expected_position, UINT64)
    check("expected_incarnation", expected_incarnation, UINT64)

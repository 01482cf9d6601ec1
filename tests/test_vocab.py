"""The vocabulary maps characters to ids reproducibly and never guesses at unknown text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from seqpredict.models import UnknownCharacterError, Vocabulary

ALPHABET = "\n !',.?abcdefghijklmnopqrstuvwxyzé€"


def test_from_texts_is_sorted_and_deterministic() -> None:
    """Ids are a function of the character set alone, so retraining on the same corpus gives the same ids."""
    texts = ["hello world\n", "Zebra, ok?", "héllo"]
    vocab = Vocabulary.from_texts(texts)
    assert list(vocab.chars) == sorted(set("".join(texts)))
    assert Vocabulary.from_texts(reversed(texts)) == vocab
    assert Vocabulary.from_texts(iter(texts)) == vocab  # a one-shot iterator (e.g. a generator) works
    assert hash(Vocabulary.from_texts(texts)) == hash(vocab)
    assert len(vocab) == len(set("".join(texts)))
    assert "Z" in vocab
    assert "q" not in vocab


def test_encode_decode_round_trip() -> None:
    vocab = Vocabulary.from_texts(["abc€d\n"])
    ids = vocab.encode("d€\nba")
    assert ids == [vocab.chars.index(c) for c in "d€\nba"]
    assert vocab.decode(ids) == "d€\nba"
    assert vocab.encode("") == []
    assert vocab.decode([]) == ""


@given(st.text(alphabet=ALPHABET, max_size=200))
def test_round_trip_property(text: str) -> None:
    """Any text over the vocabulary survives encode → decode unchanged."""
    vocab = Vocabulary(ALPHABET)
    ids = vocab.encode(text)
    assert all(0 <= i < len(vocab) for i in ids)
    assert vocab.decode(ids) == text


def test_to_string_rebuilds_the_same_vocabulary() -> None:
    """Checkpoints store the vocabulary as one string; it must rebuild the identical mapping."""
    vocab = Vocabulary.from_texts(["the quick brown fox\n€"])
    assert Vocabulary(vocab.to_string()) == vocab


def test_unknown_character_names_char_and_position() -> None:
    """The error points at the exact character (0-based, in characters not bytes) so users can fix their text."""
    vocab = Vocabulary("abcd")
    with pytest.raises(UnknownCharacterError) as info:
        vocab.encode("abc€d")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.char == "€"
    assert err.position == 3
    assert "'€'" in str(err)
    assert "position 3" in str(err)
    assert "U+20AC" in str(err)


def test_unknown_character_reports_the_first_one() -> None:
    vocab = Vocabulary("ab")
    with pytest.raises(UnknownCharacterError) as info:
        vocab.encode("abxyz")
    assert (info.value.char, info.value.position) == ("x", 2)


@pytest.mark.parametrize("bad_id", [-1, 4, 100])
def test_decode_rejects_out_of_range_ids(bad_id: int) -> None:
    """-1 would otherwise silently decode as the last character through Python indexing."""
    vocab = Vocabulary("abcd")
    with pytest.raises(ValueError, match=f"token id {bad_id}"):
        vocab.decode([0, bad_id])


@pytest.mark.parametrize(
    ("chars", "match"),
    [
        ("abca", "unique"),
        ("", "at least one"),
        ([], "at least one"),
        (["a", "bc"], "exactly one character"),
        (["a", ""], "exactly one character"),
    ],
)
def test_invalid_vocabularies_are_rejected(chars: str | list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Vocabulary(chars)


def test_from_texts_of_nothing_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Vocabulary.from_texts(["", ""])

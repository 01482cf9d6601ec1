"""Character vocabulary: built from training text, stored in the checkpoint, never guesses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class UnknownCharacterError(ValueError):
    """Text contains a character the model was never trained on."""

    def __init__(self, char: str, position: int) -> None:
        self.char = char
        self.position = position
        super().__init__(f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the vocabulary")


class Vocabulary:
    """A fixed, ordered set of characters; token id = index in `chars`."""

    def __init__(self, chars: Sequence[str]) -> None:
        chars = list(chars)
        if not chars:
            raise ValueError("a vocabulary needs at least one character")
        if any(len(ch) != 1 for ch in chars):
            raise ValueError("every vocabulary entry must be exactly one character")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
        self.chars: tuple[str, ...] = tuple(chars)
        self._index = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Vocabulary:
        """Sorted set of every character in `texts`, so the same corpus gives the same ids."""
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(sorted(seen))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __contains__(self, char: str) -> bool:
        return char in self._index

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; raises UnknownCharacterError naming the first unknown character."""
        index = self._index
        try:
            return [index[ch] for ch in text]
        except KeyError:
            for position, ch in enumerate(text):
                if ch not in index:
                    raise UnknownCharacterError(ch, position) from None
            raise

    def decode(self, ids: Iterable[int]) -> str:
        chars = self.chars
        out = []
        for i in ids:
            if not 0 <= i < len(chars):
                raise ValueError(f"token id {i} is outside the vocabulary of {len(chars)}")
            out.append(chars[i])
        return "".join(out)

    def to_string(self) -> str:
        return "".join(self.chars)

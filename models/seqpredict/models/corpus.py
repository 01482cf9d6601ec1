"""Text corpora for training and evaluation: read, fingerprint, encode."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from seqpredict.models.vocab import UnknownCharacterError, Vocabulary


@dataclass(frozen=True)
class TextFile:
    path: str
    text: str
    sha256: str

    def record(self) -> dict[str, object]:
        return {"path": self.path, "sha256": self.sha256, "chars": len(self.text)}


def read_text_files(paths: list[str]) -> list[TextFile]:
    """Strict UTF-8: a corpus with undecodable bytes is a data bug, not something to guess at."""
    files = []
    for p in paths:
        raw = Path(p).read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{p}: not valid UTF-8 at byte {exc.start}") from None
        if not text:
            raise ValueError(f"{p}: empty file")
        files.append(TextFile(path=p, text=text, sha256=hashlib.sha256(raw).hexdigest()))
    return files


def encode_corpus(files: list[TextFile], vocab: Vocabulary) -> torch.Tensor:
    """All files concatenated into one int64 tensor of token ids."""
    ids: list[int] = []
    for f in files:
        try:
            ids.extend(vocab.encode(f.text))
        except UnknownCharacterError as exc:
            raise ValueError(f"{f.path}: {exc}") from None
    return torch.tensor(ids, dtype=torch.long)

"""Checkpoint IO: one self-describing file of primitives and tensors.

`torch.load(path, weights_only=True)` reads it, so loading never unpickles code. The file
holds a format tag and version, the architecture, the vocabulary, the state_dict (standard
nn.LSTM names under `rnn.`), and the training record.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from seqpredict.models.atomic import atomic_torch_save
from seqpredict.models.config import ModelConfig
from seqpredict.models.errors import CheckpointError
from seqpredict.models.network import CharRNN
from seqpredict.models.vocab import Vocabulary

FORMAT_TAG = "seqpredict-checkpoint"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    config: ModelConfig
    vocab: Vocabulary
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    # sha256 of the file's bytes: identifies the exact weights (snapshots are tagged with it).
    fingerprint: str = ""
    path: str = ""

    def build_model(self) -> CharRNN:
        """A float32 CharRNN in eval mode with these weights."""
        model = CharRNN(self.config)
        weights = {k: v.float() for k, v in self.state_dict.items()}
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())
            raise CheckpointError(
                f"{self.path or 'checkpoint'}: weights do not match the architecture: {detail}"
            ) from None
        return model.eval()


def save_checkpoint(
    path: str | os.PathLike[str],
    model: CharRNN,
    vocab: Vocabulary,
    training: dict[str, Any] | None = None,
    half: bool = False,
) -> None:
    """Write atomically, so a crash never leaves half a checkpoint.

    `half` stores weights as float16 (half the bytes); loading always gives float32.
    """
    state_dict = {
        k: (v.detach().half() if half else v.detach().float()).contiguous() for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "architecture": model.config.to_dict(),
        "vocabulary": vocab.to_string(),
        "state_dict": state_dict,
        "training": training or {},
    }
    atomic_torch_save(payload, path)


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read and validate a checkpoint; every refusal is a CheckpointError with a one-line reason."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    payload = _load_weights_only(path, data)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise CheckpointError(f"{path}: not a seqpredict checkpoint (no '{FORMAT_TAG}' format tag)")
    version = payload.get("version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format version {version!r} (this server reads {FORMAT_VERSION})"
        )
    try:
        config = ModelConfig.from_dict(dict(payload["architecture"]))
        vocab = Vocabulary(payload["vocabulary"])
        state_dict = dict(payload["state_dict"])
        training = payload.get("training") or {}
        if not isinstance(training, dict):
            raise TypeError(f"training record must be a dict, got {type(training).__name__}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed checkpoint: {exc}") from None
    if len(vocab) != config.vocab_size:
        raise CheckpointError(
            f"{path}: vocabulary has {len(vocab)} characters but the architecture says {config.vocab_size}"
        )
    if not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{path}: state_dict holds something other than tensors")
    ckpt = Checkpoint(
        config=config,
        vocab=vocab,
        state_dict=state_dict,
        training=dict(training),
        fingerprint=hashlib.sha256(data).hexdigest(),
        path=str(path),
    )
    ckpt.build_model()  # validates every shape now, not on the first request
    return ckpt


def _load_weights_only(path: Path, data: bytes) -> Any:
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise CheckpointError(f"{path}: not a seqpredict checkpoint (not a torch.save archive)")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        first = detail.split(" was not an allowed global")[0] or "disallowed object"
        raise CheckpointError(
            f"{path}: refused: the file contains objects that weights-only loading does not allow "
            f"(it could run code when unpickled): {first}"
        ) from None
    except Exception as exc:  # truncated or otherwise corrupt archives
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable seqpredict checkpoint: {first}") from None

"""Checkpoints round-trip exactly, and anything else is refused with one clear line.

The server loads whatever path it is given; a bad file must become a CheckpointError naming
the file (never a traceback, never code execution), and a good file must reproduce the
trained model's outputs bit for bit.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from seqpredict.models import CharRNN, CheckpointError, ModelConfig, Vocabulary, load_checkpoint, save_checkpoint
from seqpredict.models.checkpoint import FORMAT_TAG, FORMAT_VERSION

TEXT = "to be, or not to be: that is the question.\n"


@pytest.fixture
def vocab() -> Vocabulary:
    return Vocabulary.from_texts([TEXT])


@pytest.fixture
def model(vocab: Vocabulary) -> CharRNN:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=24, num_layers=2, dropout=0.1)
    return CharRNN(cfg).eval()


@pytest.fixture
def tokens(vocab: Vocabulary) -> torch.Tensor:
    return torch.tensor(vocab.encode(TEXT)).view(1, -1)


@pytest.fixture
def saved(tmp_path: Path, model: CharRNN, vocab: Vocabulary) -> Path:
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, vocab, {"steps": 7, "best_val_loss": 1.25, "note": "unit test"})
    return path


def _outputs(model: CharRNN, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        logits, state = model(tokens)
    return (logits, *state)


def _refusal(path: Path) -> str:
    """Load `path`, expecting a refusal; return its message after checking it is one line naming the file."""
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    return message


def _tampered(saved: Path, tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """Re-save the payload of a good checkpoint after `change`, as someone editing it by hand would."""
    payload = torch.load(saved, weights_only=True)
    change(payload)
    path = tmp_path / "tampered.pt"
    torch.save(payload, path)
    return path


# --- round trip ---------------------------------------------------------------------------------


def test_round_trip_restores_everything(saved: Path, model: CharRNN, vocab: Vocabulary, tokens: torch.Tensor) -> None:
    ckpt = load_checkpoint(saved)
    assert ckpt.config == model.config
    assert ckpt.vocab == vocab
    assert ckpt.training == {"steps": 7, "best_val_loss": 1.25, "note": "unit test"}
    assert ckpt.fingerprint == hashlib.sha256(saved.read_bytes()).hexdigest()
    assert ckpt.path == str(saved)
    loaded = ckpt.build_model()
    assert not loaded.training, "a served model must be in eval mode (no dropout)"
    for got, want in zip(_outputs(loaded, tokens), _outputs(model, tokens), strict=True):
        assert torch.equal(got, want)


def test_fingerprint_identifies_the_weights(tmp_path: Path, saved: Path, model: CharRNN, vocab: Vocabulary) -> None:
    """Same weights → same fingerprint; different weights → a different one (snapshots are tagged by it)."""
    again = tmp_path / "again.pt"
    save_checkpoint(again, model, vocab, {"steps": 7, "best_val_loss": 1.25, "note": "unit test"})
    with torch.no_grad():
        model.head.bias.add_(0.01)
    other = tmp_path / "other.pt"
    save_checkpoint(other, model, vocab, {"steps": 7, "best_val_loss": 1.25, "note": "unit test"})
    assert load_checkpoint(again).fingerprint == load_checkpoint(saved).fingerprint
    assert load_checkpoint(other).fingerprint != load_checkpoint(saved).fingerprint


def test_plain_torch_load_weights_only_reads_the_file(saved: Path, model: CharRNN, vocab: Vocabulary) -> None:
    """Only primitives and tensors inside, with the standard nn.LSTM parameter names."""
    payload = torch.load(saved, weights_only=True)
    assert payload["format"] == FORMAT_TAG
    assert payload["version"] == FORMAT_VERSION
    assert payload["architecture"] == model.config.to_dict()
    assert payload["vocabulary"] == vocab.to_string()
    keys = set(payload["state_dict"])
    assert keys == set(model.state_dict())
    for k in range(2):
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            assert f"rnn.{kind}_l{k}" in keys
    assert {"embed.weight", "head.weight", "head.bias"} <= keys
    assert payload["state_dict"]["rnn.weight_ih_l0"].shape == (4 * 24, 8)  # gates i, f, g, o stacked


def test_gru_round_trip(tmp_path: Path, vocab: Vocabulary, tokens: torch.Tensor) -> None:
    torch.manual_seed(1)
    gru = CharRNN(ModelConfig(vocab_size=len(vocab), embed_dim=8, hidden_size=16, num_layers=1, cell="gru")).eval()
    path = tmp_path / "gru.pt"
    save_checkpoint(path, gru, vocab)
    ckpt = load_checkpoint(path)
    assert ckpt.config.cell == "gru"
    assert ckpt.training == {}
    for got, want in zip(_outputs(ckpt.build_model(), tokens), _outputs(gru, tokens), strict=True):
        assert torch.equal(got, want)


def test_half_storage_loads_as_float32(
    tmp_path: Path, saved: Path, model: CharRNN, vocab: Vocabulary, tokens: torch.Tensor
) -> None:
    """float16 on disk halves the file; the served model is float32 and nearly identical."""
    path = tmp_path / "half.pt"
    save_checkpoint(path, model, vocab, half=True)
    payload = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values())
    assert path.stat().st_size < saved.stat().st_size
    loaded = load_checkpoint(path).build_model()
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for got, want in zip(_outputs(loaded, tokens), _outputs(model, tokens), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=1e-2, rtol=0)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path: Path, model: CharRNN, vocab: Vocabulary) -> None:
    """Saving over an existing checkpoint replaces it whole; creates missing parent directories."""
    path = tmp_path / "runs" / "a" / "model.pt"
    save_checkpoint(path, model, vocab, {"steps": 1})
    save_checkpoint(path, model, vocab, {"steps": 2})
    assert load_checkpoint(path).training == {"steps": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]


# --- refusals -----------------------------------------------------------------------------------


def test_refuses_missing_file(tmp_path: Path) -> None:
    message = _refusal(tmp_path / "nope.pt")
    assert "cannot read" in message


def test_refuses_a_directory(tmp_path: Path) -> None:
    _refusal(tmp_path)


@pytest.mark.parametrize(
    "content",
    [b"hello, I am a text file\nnot a model\n", b"", bytes(range(256)) * 4],
    ids=["text", "empty", "garbage"],
)
def test_refuses_files_that_are_not_torch_archives(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    assert "not a seqpredict checkpoint" in _refusal(path)


def test_refuses_a_truncated_checkpoint(tmp_path: Path, saved: Path) -> None:
    """A copy interrupted half way through (the zip directory is at the end, so it is gone)."""
    path = tmp_path / "truncated.pt"
    data = saved.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _refusal(path)


def test_refuses_a_zip_that_is_not_a_torch_archive(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "model.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert "not a readable seqpredict checkpoint" in _refusal(path)


@pytest.mark.parametrize(
    "payload",
    [
        {"state_dict": {"w": torch.zeros(2)}},
        {"format": "something-else", "version": 1},
        torch.zeros(3),
        [1, 2, 3],
    ],
    ids=["no-tag", "wrong-tag", "tensor", "list"],
)
def test_refuses_torch_files_without_the_format_tag(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    assert f"no '{FORMAT_TAG}' format tag" in _refusal(path)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_refuses_unknown_format_version(tmp_path: Path, saved: Path, version: object) -> None:
    path = _tampered(saved, tmp_path, lambda p: p.update(version=version))
    assert f"unsupported checkpoint format version {version!r}" in _refusal(path)


class _RunsCode:
    """Unpickling this runs `touch marker` through os.system: a stand-in for any code an attacker would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch '{self.marker}'",))


def test_refuses_pickle_that_would_run_code_without_running_it(
    tmp_path: Path, saved: Path, model: CharRNN, vocab: Vocabulary
) -> None:
    """weights_only loading refuses the object, and the proof is that the marker file never appears."""
    marker = tmp_path / "pwned"
    payload = torch.load(saved, weights_only=True)
    payload["training"] = {"steps": _RunsCode(marker)}  # hidden inside an otherwise valid checkpoint
    path = tmp_path / "evil.pt"
    torch.save(payload, path)

    message = _refusal(path)
    assert "refused" in message
    assert "could run code" in message
    assert not marker.exists(), "loading the checkpoint executed code from the file"

    # Sanity check that the file really is malicious: an unsafe load does run the code.
    control = tmp_path / "control"
    torch.save(_RunsCode(control), tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.exists()


def test_refuses_weights_that_do_not_match_the_architecture(tmp_path: Path, saved: Path) -> None:
    """An architecture edited to hidden_size 32 no longer fits the 24-wide tensors: refused at load, not later."""
    path = _tampered(saved, tmp_path, lambda p: p["architecture"].update(hidden_size=32))
    message = _refusal(path)
    assert "do not match the architecture" in message
    assert "rnn.weight_hh_l0" in message


def test_refuses_missing_and_extra_tensors(tmp_path: Path, saved: Path) -> None:
    path = _tampered(saved, tmp_path, lambda p: p["state_dict"].pop("head.bias"))
    assert "head.bias" in _refusal(path)
    path = _tampered(saved, tmp_path, lambda p: p["state_dict"].update({"rnn.weight_ih_l7": torch.zeros(1)}))
    assert "rnn.weight_ih_l7" in _refusal(path)


def test_refuses_vocabulary_size_mismatch(tmp_path: Path, saved: Path, vocab: Vocabulary) -> None:
    path = _tampered(saved, tmp_path, lambda p: p.update(vocabulary=p["vocabulary"] + "#"))
    message = _refusal(path)
    assert f"vocabulary has {len(vocab) + 1} characters" in message
    assert f"architecture says {len(vocab)}" in message


@pytest.mark.parametrize(
    "change",
    [
        lambda p: p.pop("architecture"),
        lambda p: p["architecture"].update(cell="transformer"),
        lambda p: p["architecture"].update(colour="blue"),
        lambda p: p["architecture"].update(hidden_size="24"),
        lambda p: p["architecture"].update(hidden_size=24.0),
        lambda p: p.update(vocabulary="aab"),
        lambda p: p.update(state_dict=[1, 2]),
        lambda p: p["state_dict"].update({"head.bias": [0.0]}),
        lambda p: p.update(training="not a dict"),
        lambda p: p.update(training=[1, 2]),
    ],
    ids=[
        "no-architecture",
        "unknown-cell",
        "unknown-field",
        "str-size",
        "float-size",
        "duplicate-chars",
        "state-dict-list",
        "non-tensor",
        "training-str",
        "training-list",
    ],
)
def test_refuses_malformed_payloads(tmp_path: Path, saved: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Every malformed field is a CheckpointError, never a stray TypeError/ValueError that would crash a server."""
    _refusal(_tampered(saved, tmp_path, change))

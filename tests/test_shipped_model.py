"""The shipped default checkpoint: size, safe loading, and no degeneration on long inputs.

A model trained with its state carried across batches can learn a state it never leaves
(validation streams collapsing into gibberish after an epoch was seen in trials). The
service feeds sessions of any length, so one session reads a whole play here, statefully,
and every stretch of it must stay well predicted.
"""

from __future__ import annotations

from pathlib import Path

import torch

from seqpredict.models import load_checkpoint
from seqpredict.models.corpus import encode_corpus, read_text_files
from seqpredict.models.evaluation import evaluate
from seqpredict.server.config import default_checkpoint

VALIDATION = Path(__file__).resolve().parent.parent / "models" / "data" / "shakespeare" / "shakespeare-val.txt"


def test_the_checkpoint_is_small_and_loads_weights_only():
    path = Path(default_checkpoint())
    assert path.stat().st_size <= 10 * 1024 * 1024
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "seqpredict-checkpoint"
    record = payload["training"]
    assert record["best_val_loss"] <= 1.45
    assert {f["sha256"] for f in record["train_files"]}, "the training record names its data"


def test_one_session_reading_a_whole_play_never_degenerates():
    ckpt = load_checkpoint(default_checkpoint())
    ids = encode_corpus(read_text_files([str(VALIDATION)]), ckpt.vocab)[:100_000]  # Richard II and more
    result = evaluate(ckpt.build_model(), ids, streams=1, window=5_000)
    assert result.loss_nats < 1.6
    assert result.worst_window_loss < 1.9, "a stretch of the play fell apart"

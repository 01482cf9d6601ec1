"""seqpredict-train and seqpredict-eval end to end on tiny text files.

Training runs in-process once per module (a handful of steps: the point is the files it
leaves behind, not the model); seqpredict-eval is also run once as the installed console
script, so the entry point itself is covered.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from seqpredict.models import Vocabulary, eval_cli, load_checkpoint, train_cli

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog.\n"
    "Pack my box with five dozen liquor jugs!\n"
    "How vexingly quick daft zebras jump; sphinx of black quartz, judge my vow.\n"
) * 12
VAL_TEXT = "The lazy dog jumps over the quick brown fox.\nHow quick my box of quartz.\n" * 3


@dataclass(frozen=True)
class TrainRun:
    dir: Path
    train: Path
    val: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TrainRun:
    """One short seqpredict-train run shared by the tests that inspect its outputs."""
    d = tmp_path_factory.mktemp("train")
    train, val = d / "train.txt", d / "val.txt"
    train.write_text(TRAIN_TEXT, encoding="utf-8")
    val.write_text(VAL_TEXT, encoding="utf-8")
    # A dot inside the name on purpose: the curve files must keep the full stem.
    checkpoint = d / "out" / "tiny-v0.1.pt"
    argv = [
        "--train", str(train), "--val", str(val), "--out", str(checkpoint),
        "--hidden-size", "16", "--embed-dim", "8", "--max-steps", "20", "--eval-every", "10",
        "--batch-size", "4", "--seq-len", "16", "--eval-streams", "1", "--warmup-steps", "5", "--seed", "3",
    ]  # fmt: skip
    assert train_cli.main(argv) == 0
    return TrainRun(d, train, val, checkpoint)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_line_error(captured: pytest.CaptureFixture[str]) -> str:
    err = captured.readouterr().err.strip()
    assert err.startswith("seqpredict-")
    assert "\n" not in err, err
    assert "Traceback" not in err
    return err


# --- seqpredict-train -----------------------------------------------------------------------------


def test_train_writes_checkpoint_record_and_curves(run: TrainRun) -> None:
    out = run.checkpoint.parent
    expected = {"tiny-v0.1.pt", "tiny-v0.1-record.json"} | {f"tiny-v0.1-curve.{ext}" for ext in ("csv", "json", "png")}
    assert expected <= {p.name for p in out.iterdir()}
    assert (out / "tiny-v0.1-curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with (out / "tiny-v0.1-curve.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]
    points = json.loads((out / "tiny-v0.1-curve.json").read_text())
    assert [p["step"] for p in points] == [10, 20]
    assert all(math.isfinite(p["val_loss"]) for p in points)


def test_train_record_identifies_data_and_result(run: TrainRun) -> None:
    """The record ties the checkpoint to the exact data (sha256) and settings it came from."""
    record = json.loads(run.checkpoint.with_name("tiny-v0.1-record.json").read_text())
    assert record["train_files"] == [{"path": str(run.train), "sha256": _sha256(run.train), "chars": len(TRAIN_TEXT)}]
    assert record["val_files"] == [{"path": str(run.val), "sha256": _sha256(run.val), "chars": len(VAL_TEXT)}]
    assert math.isfinite(record["best_val_loss"])
    assert record["best_step"] in (10, 20)
    assert record["steps"] == 20
    assert record["train_config"]["max_steps"] == 20
    assert record["torch"] == torch.__version__
    assert record["val_single_stream"]["tokens"] == len(VAL_TEXT) - 1
    assert "partial" not in record  # the final save replaces the partial ones made during training

    ckpt = load_checkpoint(run.checkpoint)
    assert ckpt.training == record
    assert (ckpt.config.hidden_size, ckpt.config.embed_dim, ckpt.config.num_layers) == (16, 8, 2)
    assert ckpt.vocab == Vocabulary.from_texts([TRAIN_TEXT])


def test_train_rejects_validation_text_with_unseen_character(
    tmp_path: Path, run: TrainRun, capsys: pytest.CaptureFixture[str]
) -> None:
    val = tmp_path / "val.txt"
    val.write_text("The fox ate a crêpe.\n", encoding="utf-8")
    out = tmp_path / "never.pt"
    argv = ["--train", str(run.train), "--val", str(val), "--out", str(out), "--max-steps", "5"]
    assert train_cli.main(argv) == 2
    err = _one_line_error(capsys)
    assert str(val) in err
    assert "'ê'" in err
    assert "position 16" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("content", "extra", "match"),
    [
        (b"", [], "empty file"),
        (b"caf\xe9\n", [], "not valid UTF-8 at byte 3"),
        (b"fine\n", ["--max-steps", "0"], "budget"),
    ],
    ids=["empty", "latin-1", "no-budget"],
)
def test_train_refuses_bad_input_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, extra: list[str], match: str
) -> None:
    data = tmp_path / "data.txt"
    data.write_bytes(content)
    argv = ["--train", str(data), "--val", str(data), "--out", str(tmp_path / "m.pt"), *extra]
    if "--max-steps" not in extra:
        argv += ["--max-steps", "5"]
    assert train_cli.main(argv) == 2
    assert match in _one_line_error(capsys)


# --- seqpredict-eval ------------------------------------------------------------------------------


def test_eval_console_script_prints_json(run: TrainRun) -> None:
    """The installed entry point, as a user runs it."""
    script = Path(sys.executable).with_name("seqpredict-eval")
    assert script.exists(), f"{script} missing: is the package installed in this environment?"
    proc = subprocess.run(
        [str(script), str(run.checkpoint), "--text", str(run.val), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"loss_nats", "bits_per_char", "top1", "top5", "tokens_per_second", "tokens"} <= set(result)
    assert result["tokens"] == len(VAL_TEXT) - 1
    assert result["bits_per_char"] == pytest.approx(result["loss_nats"] / math.log(2))
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert result["tokens_per_second"] > 0
    # The same single-stream evaluation training recorded at the end.
    record = load_checkpoint(run.checkpoint).training
    assert result["loss_nats"] == pytest.approx(record["val_single_stream"]["loss_nats"], abs=1e-5)


def test_eval_chunk_size_does_not_change_the_result(run: TrainRun, capsys: pytest.CaptureFixture[str]) -> None:
    """The state is carried across chunks, so splitting the text differently gives the same loss."""
    results = []
    for chunk in ("512", "7"):
        assert eval_cli.main([str(run.checkpoint), "--text", str(run.val), "--json", "--chunk", chunk]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["loss_nats"] == pytest.approx(results[1]["loss_nats"], abs=1e-5)
    assert results[0]["top1"] == results[1]["top1"]


def test_eval_table_output(run: TrainRun, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_cli.main([str(run.checkpoint), "--text", str(run.val)]) == 0
    out = capsys.readouterr().out
    for label in ("tokens", "loss", "bits/char", "top-1 accuracy", "top-5 accuracy", "tokens/s"):
        assert label in out


def test_eval_unknown_character_fails_naming_it(
    tmp_path: Path, run: TrainRun, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "euro.txt"
    text.write_text("The fox costs €.\n", encoding="utf-8")
    assert eval_cli.main([str(run.checkpoint), "--text", str(text), "--json"]) != 0
    err = _one_line_error(capsys)
    assert "'€'" in err
    assert "position 14" in err
    assert str(text) in err


@pytest.mark.parametrize("kind", ["text", "missing", "torch-dict"])
def test_eval_refuses_non_checkpoint_with_exit_2(
    tmp_path: Path, run: TrainRun, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    bogus = tmp_path / "bogus.pt"
    if kind == "text":
        bogus.write_text("definitely not a model\n")
    elif kind == "torch-dict":
        torch.save({"weights": torch.zeros(3)}, bogus)
    assert eval_cli.main([str(bogus), "--text", str(run.val), "--json"]) == 2
    err = _one_line_error(capsys)
    assert str(bogus) in err
    assert capsys.readouterr().out == ""


def test_eval_missing_text_file_exits_2(run: TrainRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert eval_cli.main([str(run.checkpoint), "--text", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt" in _one_line_error(capsys)

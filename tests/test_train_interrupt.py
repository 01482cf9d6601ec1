"""Ctrl-C during `seqpredict-train`: one line saying what was saved where, never a traceback; and the
progress bar counts steps.

The console script runs as a person runs it, on tiny text files with a step budget far beyond
what the test waits for, and gets SIGINT (what Ctrl-C sends) once its first checkpoint exists.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from seqpredict.models import load_checkpoint
from tests.test_cli_models import TRAIN_TEXT, VAL_TEXT

SCRIPT = Path(sys.executable).with_name("seqpredict-train")
MAX_STEPS = 1_000_000


def start(tmp_path: Path, out: Path, eval_every: int) -> subprocess.Popen[str]:
    train, val = tmp_path / "train.txt", tmp_path / "val.txt"
    train.write_text(TRAIN_TEXT, encoding="utf-8")
    val.write_text(VAL_TEXT, encoding="utf-8")
    argv = [
        str(SCRIPT), "--train", str(train), "--val", str(val), "--out", str(out),
        "--hidden-size", "16", "--embed-dim", "8", "--max-steps", str(MAX_STEPS), "--eval-every", str(eval_every),
        "--batch-size", "4", "--seq-len", "16", "--eval-streams", "1", "--seed", "3", "--threads", "1",
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def interrupt(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.slow
def test_ctrl_c_after_a_validation_keeps_the_best_checkpoint_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "run" / "model.pt"
    proc = start(tmp_path, out, eval_every=20)
    try:
        deadline = time.monotonic() + 120
        while not out.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
        time.sleep(1.5)  # past the bar's first refresh (mininterval 1 s)
        code, err = interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("seqpredict-train: stopped at step ") and f"of {MAX_STEPS};" in last, last
    assert "the best checkpoint so far (step " in last and f"is {out}, marked partial" in last, last
    # The bar counts steps against the budget (tqdm: "n/total [elapsed<remaining, rate]").
    assert f"/{MAX_STEPS} [" in err and "step" in err.split(f"/{MAX_STEPS} [", 1)[1].split("\n", 1)[0], err[-600:]
    ckpt = load_checkpoint(out)
    assert ckpt.training["partial"] is True and ckpt.training["best_step"] % 20 == 0
    assert not (out.parent / "model-record.json").exists(), "the record is written only by a finished run"


@pytest.mark.slow
def test_ctrl_c_before_the_first_validation_says_nothing_was_saved(tmp_path: Path) -> None:
    out = tmp_path / "run" / "model.pt"
    proc = start(tmp_path, out, eval_every=MAX_STEPS)
    try:
        deadline = time.monotonic() + 120
        while "training" not in (proc.stderr.readline() if proc.stderr else ""):  # the bar has started
            assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.5)
        code, err = interrupt(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"seqpredict-train: stopped at step {err.strip().splitlines()[-1].split('step ')[1].split(' ')[0]} "
        f"of {MAX_STEPS}, before the first validation: nothing was saved"
    )
    assert not out.exists()

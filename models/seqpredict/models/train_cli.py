"""`seqpredict-train`: train a character model on UTF-8 text files and save the best checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
from pathlib import Path

import torch

from seqpredict.models.checkpoint import save_checkpoint
from seqpredict.models.config import ModelConfig
from seqpredict.models.corpus import encode_corpus, read_text_files
from seqpredict.models.curves import write_curve
from seqpredict.models.evaluation import evaluate
from seqpredict.models.training import TrainConfig, curve_rows, train
from seqpredict.models.version import version_line
from seqpredict.models.vocab import Vocabulary

log = logging.getLogger("seqpredict.train")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults_m, defaults_t = ModelConfig(vocab_size=1), TrainConfig(max_steps=1)
    p = argparse.ArgumentParser(prog="seqpredict-train", description=__doc__)
    p.add_argument("--version", action="version", version=version_line("seqpredict-train"))
    p.add_argument("--train", nargs="+", required=True, metavar="FILE", help="UTF-8 training text files")
    p.add_argument("--val", nargs="+", required=True, metavar="FILE", help="UTF-8 validation text files")
    p.add_argument("--out", required=True, help="checkpoint path to write (the best validation step)")
    p.add_argument("--curve", help="stem for the curve files (.csv/.json/.png); default: next to --out")
    p.add_argument("--cell", choices=["lstm", "gru"], default=defaults_m.cell)
    p.add_argument("--embed-dim", type=int, default=defaults_m.embed_dim)
    p.add_argument("--hidden-size", type=int, default=defaults_m.hidden_size)
    p.add_argument("--num-layers", type=int, default=defaults_m.num_layers)
    p.add_argument("--dropout", type=float, default=defaults_m.dropout)
    for name in ("batch_size", "seq_len", "warmup_steps", "eval_every", "eval_streams", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults_t, name))
    for name in ("lr", "anneal_fraction", "final_lr_ratio", "weight_decay", "grad_clip", "reset_prob"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults_t, name))
    p.add_argument("--max-steps", type=int, default=0, help="step budget (0: none)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="wall-clock budget (0: none)")
    p.add_argument("--half", action="store_true", help="store weights as float16 (loaded as float32)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        from tqdm import tqdm
    except ImportError:
        print("seqpredict-train: training needs the `train` extra: pip install 'seqpredict[train]'", file=sys.stderr)
        return 2
    try:
        cfg = TrainConfig(**{k: getattr(args, k) for k in TrainConfig.__dataclass_fields__})
        train_files, val_files = read_text_files(args.train), read_text_files(args.val)
        vocab = Vocabulary.from_texts(f.text for f in train_files)
        train_ids, val_ids = encode_corpus(train_files, vocab), encode_corpus(val_files, vocab)
        model_cfg = ModelConfig(
            vocab_size=len(vocab),
            embed_dim=args.embed_dim,
            hidden_size=args.hidden_size,
            num_layers=args.num_layers,
            dropout=args.dropout,
            cell=args.cell,
        )
    except (OSError, ValueError) as exc:
        print(f"seqpredict-train: {exc}", file=sys.stderr)
        return 2
    log.info(
        "vocabulary %d chars; train %d chars, validation %d chars; %s",
        len(vocab),
        train_ids.numel(),
        val_ids.numel(),
        model_cfg,
    )
    out = Path(args.out)

    def record(outcome_fields: dict) -> dict:
        return {
            "train_files": [f.record() for f in train_files],
            "val_files": [f.record() for f in val_files],
            "train_config": {k: getattr(cfg, k) for k in TrainConfig.__dataclass_fields__},
            "torch": str(torch.__version__),
            "python": platform.python_version(),
            **outcome_fields,
        }

    # Steps, with the ETA from the average rate since the start (smoothing=0): the pauses for
    # validation then lengthen the estimate evenly instead of making it jump after each one.
    bar = tqdm(
        total=cfg.max_steps or None, unit="step", desc="training", smoothing=0, dynamic_ncols=True, mininterval=1.0
    )
    saved: dict[str, float] = {}

    def on_progress(step: int, fraction: float, loss: float) -> None:
        postfix = {"loss": f"{loss:.3f}"}
        if not cfg.max_steps:  # a time budget: the steps to come are unknown, the minutes are not
            postfix["left"] = f"{(1 - fraction) * cfg.max_minutes:.1f}min"
        bar.set_postfix(postfix, refresh=False)
        bar.update(step - bar.n)

    def on_best(model, loss: float, step: int) -> None:
        # Saved as it happens, so a run stopped early still leaves its best checkpoint.
        save_checkpoint(
            out, model, vocab, record({"best_val_loss": loss, "best_step": step, "partial": True}), half=args.half
        )
        saved.update(step=step, loss=loss)

    try:
        outcome = train(model_cfg, cfg, train_ids, val_ids, on_progress=on_progress, on_best=on_best)
        bar.close()
        final = evaluate(outcome.model, val_ids, streams=1)
    except KeyboardInterrupt:
        bar.close()
        print(stopped_early(bar.n, cfg.max_steps, out, saved), file=sys.stderr)
        return 130
    rec = record({**outcome.record(), "val_single_stream": final.to_dict()})
    save_checkpoint(out, outcome.model, vocab, rec, half=args.half)
    stem = Path(args.curve) if args.curve else out.with_name(out.stem + "-curve")
    written = write_curve(
        curve_rows(outcome.curve), stem, f"{model_cfg.cell.upper()} H={model_cfg.hidden_size} × {model_cfg.num_layers}"
    )
    out.with_name(out.stem + "-record.json").write_text(json.dumps(rec, indent=1) + "\n")
    log.info(
        "best validation %.4f nats/char at step %d of %d (%.1f min); single-stream %.4f; wrote %s and %s",
        outcome.best_val_loss,
        outcome.best_step,
        outcome.steps,
        outcome.minutes,
        final.loss_nats,
        out,
        ", ".join(map(str, written)),
    )
    return 0


def stopped_early(step: int, max_steps: int, out: Path, saved: dict[str, float]) -> str:
    """The one line Ctrl-C leaves: where training stopped and what, if anything, was saved where."""
    at = f"step {step} of {max_steps}" if max_steps else f"step {step}"
    if not saved:
        return f"seqpredict-train: stopped at {at}, before the first validation: nothing was saved"
    return (
        f"seqpredict-train: stopped at {at}; the best checkpoint so far (step {int(saved['step'])}, validation "
        f"{saved['loss']:.4f} nats/char) is {out}, marked partial, without curve or record"
    )


if __name__ == "__main__":
    sys.exit(main())

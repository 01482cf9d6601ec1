"""`seqpredict-eval CHECKPOINT --text FILE`: stateful loss, accuracy and speed on a text."""

from __future__ import annotations

import argparse
import json
import sys

import torch

from seqpredict.models.checkpoint import CheckpointError, load_checkpoint
from seqpredict.models.corpus import encode_corpus, read_text_files
from seqpredict.models.evaluation import evaluate
from seqpredict.models.version import version_line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seqpredict-eval", description=__doc__)
    p.add_argument("--version", action="version", version=version_line("seqpredict-eval"))
    p.add_argument("checkpoint")
    p.add_argument("--text", nargs="+", required=True, metavar="FILE", help="UTF-8 text files, read in order")
    p.add_argument(
        "--streams",
        type=int,
        default=1,
        help="split the text into N streams fed in parallel (1: one session reads it all)",
    )
    p.add_argument("--chunk", type=int, default=512, help="tokens per forward call; the state is carried across chunks")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        ids = encode_corpus(read_text_files(args.text), ckpt.vocab)
        result = evaluate(ckpt.build_model(), ids, streams=args.streams, chunk=args.chunk)
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"seqpredict-eval: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    rows = [
        ("tokens", f"{result.tokens:,}"),
        ("loss", f"{result.loss_nats:.4f} nats/char"),
        ("", f"{result.bits_per_char:.4f} bits/char"),
        ("top-1 accuracy", f"{result.top1:.2%}"),
        ("top-5 accuracy", f"{result.top5:.2%}"),
        (f"worst {result.window:,}-char window", f"{result.worst_window_loss:.4f} nats/char"),
        ("speed", f"{result.tokens_per_second:,.0f} tokens/s ({args.streams} stream(s), {args.threads} thread(s))"),
    ]
    for name, value in rows:
        print(f"{name:>24}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

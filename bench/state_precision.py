"""What storing idle session state in bfloat16 / float16 does to the outputs (`--state-dtype`).

Every step of a served session is gather (to float32) → step → scatter (back to the storage
dtype), so with a low-precision pool the state is rounded after every token. This replays
that path exactly — SessionPool + FusedStepper, as the engine does — for sessions reading
the validation plays, and compares each next-token distribution with float32 storage:
largest and mean probability difference, top-1 agreement, and the loss over the text.

    .venv/bin/python bench/state_precision.py [--sessions 16] [--tokens 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from seqpredict.models import FusedStepper, load_checkpoint
from seqpredict.server.config import default_checkpoint
from seqpredict.server.sessions import SessionPool

ROOT = Path(__file__).resolve().parent.parent
VAL = ROOT / "models" / "data" / "shakespeare" / "shakespeare-val.txt"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@torch.inference_mode()
def replay(checkpoint_path: str, dtype: torch.dtype, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Feed ids (S, T) token by token through a pool of `dtype`; next-token probabilities (S, T, V) and NLL."""
    ckpt = load_checkpoint(checkpoint_path)
    cfg = ckpt.config
    stepper = FusedStepper(ckpt.build_model())
    sessions, steps = ids.shape
    pool = SessionPool(len(cfg.state_names), cfg.num_layers, cfg.hidden_size, sessions, 3600.0, dtype=dtype)
    slots = torch.tensor([pool.acquire(f"s{i}")[0] for i in range(sessions)])
    probs = torch.empty(sessions, steps, cfg.vocab_size)
    for t in range(steps):
        logits, state = stepper.step(ids[:, t], pool.gather(slots))
        pool.scatter(slots, state)
        probs[:, t] = torch.softmax(logits, dim=-1)
    targets = ids[:, 1:]
    nll = -torch.log(probs[:, :-1].gather(2, targets.unsqueeze(-1)).squeeze(-1))
    return probs, nll


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=default_checkpoint())
    p.add_argument("--sessions", type=int, default=16)
    p.add_argument("--tokens", type=int, default=2000, help="tokens per session")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint)
    text = VAL.read_text()
    stride = len(text) // args.sessions
    ids = torch.tensor([ckpt.vocab.encode(text[i * stride : i * stride + args.tokens]) for i in range(args.sessions)])
    reference, ref_nll = replay(args.checkpoint, torch.float32, ids)
    rows = []
    for name in ("bfloat16", "float16"):
        probs, nll = replay(args.checkpoint, DTYPES[name], ids)
        diff = (probs - reference).abs()
        rows.append(
            {
                "state_dtype": name,
                "bytes_per_session": ckpt.config.state_floats_per_session * DTYPES[name].itemsize,
                "max_abs_prob_diff": diff.max().item(),
                "mean_abs_prob_diff": diff.mean().item(),
                "top1_agreement": (probs.argmax(-1) == reference.argmax(-1)).float().mean().item(),
                "loss_nats": nll.mean().item(),
                "loss_float32_nats": ref_nll.mean().item(),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{args.sessions} sessions x {args.tokens} tokens of the validation plays, state rounded after every token")
    print("| state dtype | bytes/session | max abs Δp | mean abs Δp | top-1 agreement | loss (nats) vs float32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['state_dtype']} | {r['bytes_per_session']:,} | {r['max_abs_prob_diff']:.2e} | "
            f"{r['mean_abs_prob_diff']:.2e} | {r['top1_agreement']:.2%} | "
            f"{r['loss_nats']:.4f} vs {r['loss_float32_nats']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

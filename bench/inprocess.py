"""The in-process limit: the model stepped exactly as a server batch steps it, with no RPC at all.

Single tokens: C sessions in a seqpredict SessionPool; each step builds the slot and token
tensors from Python lists (as the engine does), gathers the state, runs FusedStepper, scatters
the new state back and turns the logits into top-5 Python tuples (log_softmax + topk +
tolist). That is the work a batch of C single-token requests cannot avoid, so the server's
tokens/s at batch C is bounded by this figure and its latency floor is this step time.

Prefill: nn.LSTM over whole chunks of T tokens (CharRNN.features) with the state carried
from chunk to chunk through the pool, plus the head and top-5 on the last position: the
figure the server's prefill path is compared with.

One torch thread, like the server's default: on a shared 2-core box two threads are slower.

    .venv/bin/python bench/inprocess.py --sessions 1,16,64,256 --duration 2
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from latency import LatencyHistogram

from seqpredict.models import CharRNN, FusedStepper, load_checkpoint
from seqpredict.server.config import default_checkpoint
from seqpredict.server.sessions import SessionPool

TOP_K = 5


def make_pool(model: CharRNN, sessions: int) -> tuple[SessionPool, list[int]]:
    """A pool holding `sessions` live sessions, as the server's would after their first request."""
    cfg = model.config
    pool = SessionPool(
        num_states=len(cfg.state_names),
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        max_sessions=max(sessions, 1),
        idle_ttl=1e9,
    )
    return pool, [pool.acquire(f"bench-{i}")[0] for i in range(sessions)]


def top_k_lists(logits: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
    """What the engine hands back per row: the k best log-probabilities and ids as Python lists."""
    values, indices = torch.log_softmax(logits, dim=-1).topk(TOP_K, dim=-1)
    return values.tolist(), indices.tolist()


def timed(step: Callable[[], None], duration: float, min_steps: int = 20) -> LatencyHistogram:
    """Run `step` for `duration` seconds (and at least `min_steps` times) after a short warm-up."""
    for _ in range(5):
        step()
    hist = LatencyHistogram()
    deadline = time.perf_counter() + duration
    while hist.count < min_steps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        step()
        hist.record(time.perf_counter() - t0)
    return hist


def single_token(model: CharRNN, stepper: FusedStepper, sessions: int, duration: float, rng: random.Random) -> dict:
    pool, slot_list = make_pool(model, sessions)
    vocab = model.config.vocab_size
    token_lists = [[rng.randrange(vocab) for _ in range(sessions)] for _ in range(64)]
    turn = iter(range(1 << 62))

    def step() -> None:
        tokens_list = token_lists[next(turn) % len(token_lists)]
        slots = torch.tensor(slot_list)  # (B,)
        tokens = torch.tensor(tokens_list)  # (B,)
        state = pool.gather(slots)  # each (L, B, H)
        logits, new_state = stepper.step(tokens, state)  # (B, V)
        pool.scatter(slots, new_state)
        top_k_lists(logits)

    hist = timed(step, duration)
    return _figures("single", sessions, 1, hist)


def prefill(model: CharRNN, sessions: int, chunk: int, duration: float, rng: random.Random) -> dict:
    pool, slot_list = make_pool(model, sessions)
    vocab = model.config.vocab_size
    chunks = [
        torch.randint(0, vocab, (sessions, chunk), generator=torch.Generator().manual_seed(rng.getrandbits(32)))
        for _ in range(4)
    ]
    turn = iter(range(1 << 62))

    def step() -> None:
        slots = torch.tensor(slot_list)
        feats, new_state = model.features(chunks[next(turn) % len(chunks)], pool.gather(slots))  # (B, T, H)
        pool.scatter(slots, new_state)
        top_k_lists(model.head(feats[:, -1]))  # (B, V)

    hist = timed(step, duration, min_steps=3)
    return _figures("prefill", sessions, chunk, hist)


def _figures(kind: str, sessions: int, chunk: int, hist: LatencyHistogram) -> dict[str, Any]:
    mean = hist.total_s / hist.count
    return {
        "kind": kind,
        "sessions": sessions,
        "chunk": chunk,
        "steps": hist.count,
        "tokens_per_s": round(sessions * chunk / mean, 1),
        "step_ms": hist.summary_ms(),
        "us_per_token": round(mean / (sessions * chunk) * 1e6, 3),
    }


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the shipped one)")
    p.add_argument("--sessions", type=_ints, default=[1, 16, 64, 256], help="batch sizes C, comma-separated")
    p.add_argument("--prefill-sessions", type=_ints, default=[1], help="prefill batch sizes, comma-separated")
    p.add_argument("--chunk", type=int, default=1024, help="prefill chunk T in tokens (default: %(default)s)")
    p.add_argument("--duration", type=float, default=2.0, help="seconds per figure (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the server)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint or default_checkpoint())
    model = checkpoint.build_model()
    stepper = FusedStepper(model)
    rng = random.Random(args.seed)
    cfg = model.config
    results: dict[str, Any] = {
        "checkpoint": checkpoint.path,
        "model": {
            "cell": cfg.cell,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "vocab_size": cfg.vocab_size,
        },
        "threads": args.threads,
        "single": [],
        "prefill": [],
    }
    with torch.inference_mode():
        for c in args.sessions:
            results["single"].append(single_token(model, stepper, c, args.duration, rng))
            print(f"[inprocess] single C={c}: {results['single'][-1]['tokens_per_s']:.0f} tokens/s", file=sys.stderr)
        for c in args.prefill_sessions:
            results["prefill"].append(prefill(model, c, args.chunk, args.duration, rng))
            print(
                f"[inprocess] prefill C={c} T={args.chunk}: {results['prefill'][-1]['tokens_per_s']:.0f} tokens/s",
                file=sys.stderr,
            )
    print(json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

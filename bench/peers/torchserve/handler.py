"""TorchServe handler serving our shipped LSTM one token per request, for `make bench-peers`.

It follows TorchServe's own stateful example (examples/stateful/sequence_batching): the
frontend's sequence batching hands the worker a batch holding at most one request per
sequence, the handler keys its per-sequence values by `context.get_sequence_id(idx)` in an
LRU cache whose capacity comes from model-config.yaml (`handler.cache.capacity`), and a
sequence the cache does not know starts from zero. Here the cached value is the LSTM's
recurrent state: (h, c), each (num_layers, 1, hidden).

The weights come from our checkpoint (the archive's serialized file) through
`seqpredict.models.load_checkpoint`, and one step is our own `FusedStepper` — the exact step
our server runs — so the comparison measures the two servers, not two implementations of
the math. The answer is the next-token top-k, like a seqpredict Predict answer, as JSON:
{"position": tokens consumed, "ids": [...], "probs": [...]}.

This file runs inside TorchServe's Python worker (its own virtualenv, with seqpredict installed).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from lru import LRU
from ts.context import Context
from ts.torch_handler.base_handler import BaseHandler

from seqpredict.models import FusedStepper, load_checkpoint

logger = logging.getLogger(__name__)

TOP_K = 5  # what our load generator's Predict answers carry by default
DEFAULT_CAPACITY = 4096  # sequences whose state is kept when model-config.yaml does not say


class LSTMSequenceHandler(BaseHandler):
    """One batched LSTM step per TorchServe batch; recurrent state per sequence id in an LRU."""

    def __init__(self) -> None:
        super().__init__()
        self.cache: LRU | None = None
        self.stepper: FusedStepper | None = None
        self.vocab_size = 0

    def initialize(self, context: Context) -> None:
        # BaseHandler.initialize would torch.jit.load the serialized file; ours is a seqpredict
        # checkpoint, read the way our server reads it.
        self.context = context
        self.manifest = context.manifest
        config = (context.model_yaml_config or {}).get("handler") or {}
        threads = int(config.get("torch_threads", 1))
        torch.set_num_threads(threads)  # TorchServe leaves it to torch (one per core, per worker)
        torch.set_grad_enabled(False)  # the worker's one thread runs every batch
        model_dir = context.system_properties["model_dir"]
        checkpoint = load_checkpoint(os.path.join(model_dir, self.manifest["model"]["serializedFile"]))
        model = checkpoint.build_model()
        self.stepper = FusedStepper(model)
        self.zero = model.zero_state(1)  # ((L, 1, H), (L, 1, H))
        self.vocab_size = checkpoint.config.vocab_size
        self.cache = LRU(int((config.get("cache") or {}).get("capacity", DEFAULT_CAPACITY)))
        self.initialized = True
        logger.info("seqpredict LSTM %s loaded, torch threads %d", checkpoint.config, threads)

    def preprocess(self, data: list[dict[str, Any]]) -> tuple[list[str], torch.Tensor]:
        """Sequence ids and tokens (B,); each request's `data` is one token id in decimal."""
        sequence_ids, tokens = [], []
        for idx, row in enumerate(data):
            raw = row.get("data") or row.get("body")
            if isinstance(raw, (bytes, bytearray)):
                raw = raw.decode("utf-8")
            token = int(raw)
            if not 0 <= token < self.vocab_size:
                raise ValueError(f"token {token} outside the vocabulary (0..{self.vocab_size - 1})")
            sequence_ids.append(self.context.get_sequence_id(idx))
            tokens.append(token)
        return sequence_ids, torch.tensor(tokens, dtype=torch.int64)

    def inference(self, data: tuple[list[str], torch.Tensor], *args: Any, **kwargs: Any) -> list[str]:
        """Gather the batch's states, step once, scatter them back, answer the top-k of each row."""
        sequence_ids, tokens = data
        entries = [self.cache[s] if self.cache.has_key(s) else (self.zero, 0) for s in sequence_ids]
        h = torch.cat([state[0] for state, _ in entries], dim=1)  # (L, B, H)
        c = torch.cat([state[1] for state, _ in entries], dim=1)  # (L, B, H)
        logits, (h, c) = self.stepper.step(tokens, (h, c))  # (B, V)
        top = torch.softmax(logits, dim=-1).topk(TOP_K, dim=-1)
        ids, probs = top.indices.tolist(), top.values.tolist()
        answers = []
        for b, (sequence_id, (_, position)) in enumerate(zip(sequence_ids, entries, strict=True)):
            # clone: a slice would keep the whole batch's tensor alive for as long as this entry
            self.cache[sequence_id] = ((h[:, b : b + 1].clone(), c[:, b : b + 1].clone()), position + 1)
            answers.append(json.dumps({"position": position + 1, "ids": ids[b], "probs": probs[b]}))
        return answers

    def postprocess(self, data: list[str]) -> list[str]:
        return data

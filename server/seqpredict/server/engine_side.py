"""Everything that owns the model and the sessions, built the same way wherever it runs.

The single-process server drives it from an inference thread (`app`); the multi-process
server from the engine process's loop (`engine_loop`). Either way: the checkpoint is
loaded, the pool allocated, the snapshot restored, the engine warmed up, and housekeeping
(idle expiry, pool gauges, periodic snapshots) runs about once a second on the thread
that owns the pool. With a shared session store, the sessions go to and come from it
(`durability`) instead of a local snapshot.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from seqpredict.models import Checkpoint, load_checkpoint
from seqpredict.server.config import Settings
from seqpredict.server.durability import Durability
from seqpredict.server.engine import Engine
from seqpredict.server.metrics import Metrics
from seqpredict.server.model_card import ModelCard, model_card
from seqpredict.server.scheduler import BatchingConfig, Scheduler
from seqpredict.server.sessions import SessionPool
from seqpredict.server.snapshotter import Snapshotter
from seqpredict.server.store import RedisStore

log = logging.getLogger(__name__)

STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineSide:
    settings: Settings
    checkpoint: Checkpoint
    card: ModelCard
    metrics: Metrics
    pool: SessionPool
    engine: Engine
    scheduler: Scheduler
    snapshotter: Snapshotter | None
    durability: Durability | None = None

    @property
    def store_up(self) -> bool:
        return self.durability is None or self.durability.up

    def next_commit(self) -> float:
        """time.monotonic() of the next periodic commit to the session store (async durability)."""
        d = self.durability
        return d.next_flush if d is not None and not d.sync else float("inf")

    def between_batches(self, now: float) -> None:
        if self.durability is not None and self.durability.due(now):
            self.durability.flush()

    def housekeeping(self) -> None:
        """Runs about once a second on the thread that owns the pool."""
        pool, metrics = self.pool, self.metrics
        expired = pool.expire_idle(protected=self.engine.ops.busy)
        if expired:
            log.info("expired %d idle session(s) (idle TTL %.0fs)", expired, self.settings.idle_ttl_s)
        metrics.sessions_active.set(len(pool))
        metrics.pool_bytes.set(pool.state_bytes)
        metrics.pool_slots.set(pool.capacity)
        if self.snapshotter is not None:
            self.snapshotter.maybe_periodic()

    def finish(self) -> bool:
        """The end of a drain, once nothing runs: sessions to the store or the snapshot, or dropped.
        False when some could not be saved (logged)."""
        saved = True
        if self.durability is not None:
            held = len(self.pool)
            left = self.durability.flush(final=True)
            self.durability.close()
            if left:
                log.error("%d session(s) could not be committed to the session store: their last changes lost", left)
            else:
                log.info("%d session(s) handed over: committed to the session store", held)
            saved = not left
        elif self.snapshotter is not None:
            return self.snapshotter.final()
        dropped = self.pool.release_all("shutdown")
        if dropped and self.durability is None:
            log.info("%d session(s) dropped at shutdown (no --snapshot-path, no --state-store)", dropped)
        return saved


def build_engine_side(settings: Settings, metrics: Metrics) -> EngineSide:
    """Load the checkpoint, allocate the pool, restore the snapshot, warm the engine up."""
    torch.set_num_threads(settings.torch_threads)
    # oneDNN keeps a compiled primitive per nn.LSTM input shape and reads its cache size from the
    # environment once, at the first prefill (warm-up, below). 1024 shapes cost ~250 MB of RSS
    # in the soak run; 64 kept the same prefill speed (bench figures in README).
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(settings.onednn_cache_capacity)
    checkpoint = load_checkpoint(settings.checkpoint)
    cfg = checkpoint.config
    log.info(
        "loaded %s: %s H=%d x %d layers, vocabulary %d, sha256 %s",
        checkpoint.path,
        cfg.cell,
        cfg.hidden_size,
        cfg.num_layers,
        cfg.vocab_size,
        checkpoint.fingerprint[:12],
    )
    pool = SessionPool(
        num_states=len(cfg.state_names),
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        max_sessions=settings.max_sessions,
        idle_ttl=settings.idle_ttl_s,
        evict_lru=settings.session_policy == "evict",
        dtype=STATE_DTYPES[settings.state_dtype],
        on_end=lambda reason, n: metrics.sessions_ended.labels(reason).inc(n),
    )
    snapshotter = None
    if settings.snapshot_path:
        snapshotter = Snapshotter(
            settings.snapshot_path, settings.snapshot_interval_s, pool, checkpoint.fingerprint, metrics
        )
        snapshotter.restore_at_start([(cfg.num_layers, cfg.hidden_size)] * len(cfg.state_names))
    engine = Engine(checkpoint, pool, metrics)
    scheduler = Scheduler(
        engine,
        BatchingConfig(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            prefill_chunk=settings.prefill_chunk,
            max_delay=settings.max_delay_ms / 1000,
        ),
        metrics,
    )
    durability = None
    if settings.state_store:
        store = RedisStore(
            settings.state_store, checkpoint.fingerprint, settings.idle_ttl_s, settings.state_store_timeout_ms / 1000
        )
        durability = Durability(
            store, settings.durability_mode, settings.commit_interval_ms / 1000, engine.ops, metrics
        )
        scheduler.durability = durability
    side = EngineSide(
        settings,
        checkpoint,
        model_card(checkpoint, settings.state_dtype, pool.state_bytes_per_session),
        metrics,
        pool,
        engine,
        scheduler,
        snapshotter,
        durability,
    )
    metrics.sessions_limit.set(settings.max_sessions)
    metrics.model.info(
        {
            "name": side.card.name,
            "fingerprint": checkpoint.fingerprint,
            "cell": cfg.cell,
            "hidden_size": str(cfg.hidden_size),
            "num_layers": str(cfg.num_layers),
            "vocab_size": str(cfg.vocab_size),
        }
    )
    side.housekeeping()
    engine.warm_up()
    if durability is not None:
        durability.start()
    return side

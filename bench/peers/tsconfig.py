"""TorchServe's configuration for the peer benchmark: model-config.yaml and config.properties, as text.

The rule TorchServe documents for stateful models (examples/stateful/sequence_batching, "Step 2:
Model configuration") is that it processes maxWorkers × batchSize sequences in parallel. Its
sequence batcher (SequenceBatching.java) also gives each worker a pool of batchSize + 1 poller
threads, one blocked per sequence waiting for that sequence's next request (for up to
sequenceMaxIdleMSec), and refuses new sequences beyond maxNumSequence. So for C concurrent
sessions: batchSize = ceil(C / workers), maxNumSequence ≥ C. With a batch size smaller than
that, sequences wait behind other sequences' pollers and the run stalls (seen at C=256 before
this benchmark existed).

Pure functions of the settings: no files, no processes (tsproc.py writes and starts them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MODEL_NAME = "seqlstm"  # the name the driver puts in every PredictionsRequest

# How the defaults below were chosen: one round each, 2 s warm-up + 8 s window, TorchServe only,
# on this 2-core machine while it was shared (2026-11-30). Single measurements: they pick the
# faster setting, they are not figures of the comparison. tokens/s (p50 ms).
CHECKED_ON_THIS_MACHINE = (
    "| setting (others as chosen) | C=64 | C=256 |\n"
    "|---|---:|---:|\n"
    "| 1 worker, maxBatchDelay 5 ms | 3,778 (14.6) | 4,408 (55.5) |\n"
    "| 2 workers, maxBatchDelay 5 ms | 3,220 (18.4) | 2,244 (86.1) |\n"
    "| 1 worker, maxBatchDelay 100 ms (default) | 4,240 (14.4) | 6,042 (40.4) |\n"
    "| 1 worker, maxBatchDelay 1 ms | 3,346 (18.0) | — |\n"
    "| 1 worker, 5 ms, 2 torch threads | 1,122 (34.1) | — |\n"
)


@dataclass(frozen=True)
class TorchServeSettings:
    """What we choose; everything else is TorchServe 0.12's default."""

    # One Python worker: a second one on 2 cores shares them with the Java frontend and the
    # client, and each worker then batches half the sessions (slower in CHECKED_ON_THIS_MACHINE).
    workers: int = 1
    # TorchServe's default. With batchSize = sessions per worker a batch is full when every
    # session's next request is in, so in a closed loop the wait mostly ends by filling; shorter
    # delays sent partial batches and were slower (CHECKED_ON_THIS_MACHINE).
    max_batch_delay_ms: int = 100
    # Idle time before a sequence's poller gives up and its job group is dropped. Sessions here
    # never pause, so it only has to outlast one round trip under load by a wide margin; a
    # stopped sequence holds its poller thread this long.
    sequence_max_idle_ms: int = 10_000
    # One request in flight per sequence; the example's 10 leaves room and costs nothing.
    max_sequence_job_queue_size: int = 10
    # torch threads per worker (TorchServe leaves torch at one thread per core); ours runs 1.
    torch_threads: int = 1
    # Documented in TorchServe's configuration.md: "asynchronous logging for higher throughput".
    async_logging: bool = True

    def batch_size(self, sessions: int) -> int:
        """maxWorkers × batchSize ≥ C, the documented capacity rule."""
        return max(1, math.ceil(sessions / self.workers))

    def model_config(self, sessions: int) -> dict[str, Any]:
        batch = self.batch_size(sessions)
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": batch,
            "maxBatchDelay": self.max_batch_delay_ms,
            "sequenceBatching": True,
            "sequenceMaxIdleMSec": self.sequence_max_idle_ms,
            "maxSequenceJobQueueSize": self.max_sequence_job_queue_size,
            "maxNumSequence": max(sessions, batch * self.workers),
            "handler": {"cache": {"capacity": max(sessions, 1) * 2}, "torch_threads": self.torch_threads},
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def to_yaml(config: dict[str, Any], indent: int = 0) -> str:
    """The YAML of a nested dict of scalars (all model-config.yaml needs; no PyYAML in our venv)."""
    lines = []
    for key, value in config.items():
        pad = " " * indent
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.append(to_yaml(value, indent + 2).rstrip("\n"))
        elif isinstance(value, bool):
            lines.append(f"{pad}{key}: {str(value).lower()}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Ports:
    """Every port TorchServe opens, all on loopback."""

    inference: int
    management: int
    metrics: int
    grpc_inference: int
    grpc_management: int
    worker: int  # initial_worker_port: workers talk to the frontend over sockets numbered from here


def properties(settings: TorchServeSettings, ports: Ports, model_store: str) -> str:
    """config.properties: loopback addresses, no token auth, no config snapshots, our logging choice."""
    values = {
        "inference_address": f"http://127.0.0.1:{ports.inference}",
        "management_address": f"http://127.0.0.1:{ports.management}",
        "metrics_address": f"http://127.0.0.1:{ports.metrics}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": ports.grpc_inference,
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": ports.grpc_management,
        "initial_worker_port": ports.worker,
        "model_store": model_store,
        "disable_token_authorization": "true",
        "async_logging": str(settings.async_logging).lower(),
        "default_response_timeout": 120,
    }
    return "".join(f"{k}={v}\n" for k, v in values.items())

"""Where the next bottleneck is on a bigger machine, from the CPU per token each process costs here.

The server is one engine process (single-threaded: it can use one core at most) and N
frontend processes (each an event loop: about one core at most); clients may share the
machine. With the µs of CPU per token each of them costs — measured on this machine at a
given number of sessions (bench/cpu.py) — single-token throughput on `cores` cores is at most

    min( 1e6 / engine,                               the engine process, one core
         N × 1e6 / frontend_per_process,             N frontends, one core each
         cores × 1e6 / (engine + frontends + client) the machine's cores, all of them busy )

which is the issue's  min((cores − engine − client share) / frontend, 1e6 / engine): the
third bound is the first term solved for the throughput at which the engine and the client
shares leave exactly the rest of the cores to the frontends. The frontends' µs/token is the
sum over all of them: what one token costs the frontend side whichever process took it.

What the model leaves out, stated with every prediction: the engine's µs/token falls as its
batches grow (more sessions, fuller batches), so figures measured at C sessions hold for
loads of about C sessions; the frontends' cost per token may grow when each gets a smaller
share of the traffic (fewer requests per IPC message); and memory bandwidth, the kernel's
networking and hyper-threads are taken to scale with cores, which they do not exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Costs:
    """µs of CPU per token, by process kind, measured at one load."""

    engine: float
    frontend: float  # all frontend processes together
    client: float = 0.0  # the load generator, when the clients share the machine
    supervisor: float = 0.0


@dataclass(frozen=True)
class Prediction:
    cores: int
    frontends: int
    tokens_per_s: float
    bottleneck: str  # "engine process", "frontends" or "cores"
    engine_bound: float
    frontends_bound: float
    cores_bound: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(costs: Costs, cores: int, frontends: int) -> Prediction:
    """The most single-token throughput `frontends` frontends and one engine can give on `cores` cores."""
    if costs.engine <= 0 or costs.frontend <= 0 or cores < 1 or frontends < 1:
        raise ValueError("costs must be positive, with at least one core and one frontend")
    bounds = {
        "engine process": 1e6 / costs.engine,
        "frontends": frontends * 1e6 / costs.frontend,
        "cores": cores * 1e6 / (costs.engine + costs.frontend + costs.client + costs.supervisor),
    }
    # On a tie the process bound is named: adding cores alone would not move it.
    bottleneck = min(bounds, key=lambda k: (bounds[k], k == "cores"))
    return Prediction(
        cores,
        frontends,
        round(bounds[bottleneck], 1),
        bottleneck,
        round(bounds["engine process"], 1),
        round(bounds["frontends"], 1),
        round(bounds["cores"], 1),
    )


def recommend(costs: Costs, cores: int) -> Prediction:
    """The fewest frontends that reach the best throughput on `cores` cores: more would only add processes
    contending for the same cores (and a frontend's share of the traffic gets thinner)."""
    most = max(cores - 1, 1)  # the engine keeps a core of its own
    best = max(predict(costs, cores, n).tokens_per_s for n in range(1, most + 1))
    for n in range(1, most + 1):
        p = predict(costs, cores, n)
        if p.tokens_per_s >= best * 0.999:
            return p
    raise AssertionError("unreachable: the best is one of them")


def frontends_to_saturate_engine(costs: Costs) -> int:
    """Frontends whose capacity matches the engine's: beyond them, only a faster engine helps."""
    return math.ceil(costs.frontend / costs.engine - 1e-9)

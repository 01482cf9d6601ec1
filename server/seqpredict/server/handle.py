"""What the transport side needs of the engine, wherever it runs: submit jobs, and know it lives.

Implemented by the inference thread of a single-process server (`InferenceThread`) and by a
frontend's link to the engine process (`RemoteEngine`); the service and the watchdog only
see this.
"""

from __future__ import annotations

from typing import Protocol

from seqpredict.server.jobs import Job


class EngineHandle(Protocol):
    @property
    def heartbeat(self) -> float:
        """time.monotonic() when the engine last showed it was alive (a batch, or its idle tick)."""
        ...

    @property
    def alive(self) -> bool:
        """False once the engine has stopped for good (then every job fails with INTERNAL)."""
        ...

    @property
    def failure(self) -> object:
        """Why it stopped, once it has."""
        ...

    @property
    def store_up(self) -> bool:
        """False while the shared session store cannot be reached (True when there is none)."""
        ...

    def submit(self, job: Job) -> None:
        """Queue `job` behind its session's earlier work; RequestFailed when it cannot be queued."""
        ...

"""The engine process's loop, driven through the frontends' real IPC client (RemoteEngine) in this
process: what it keeps per job must end with the job, whatever the frontend did with it."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from seqpredict.server.config import Settings
from seqpredict.server.engine_loop import EngineLoop
from seqpredict.server.engine_side import build_engine_side
from seqpredict.server.jobs import PredictJob
from seqpredict.server.metrics import Metrics
from seqpredict.server.remote import RemoteEngine


def test_jobs_cancelled_before_they_start_leave_nothing_behind_in_the_engine(tmp_path: Path) -> None:
    """40 requests of 512 tokens queued on one session and cancelled at once (a stream whose client
    went away): the engine drops them unrun and forgets them. It kept each one (the job and its
    two bookkeeping entries) forever, a leak a soak showed as slow growth of the engine's memory."""
    endpoint = f"ipc://{tmp_path}/engine.sock"
    loop = EngineLoop(build_engine_side(Settings(port=0, metrics_port=0), Metrics()), endpoint)
    thread = threading.Thread(target=loop.run, name="engine-loop", daemon=True)
    thread.start()

    async def frontend() -> None:
        remote = RemoteEngine(endpoint, "test-frontend", None)
        await remote.start()
        jobs = [PredictJob("gone", 0.0, tokens=[1] * 512) for _ in range(40)]
        for job in jobs:
            remote.submit(job)
        await asyncio.sleep(0)  # the jobs leave in one message
        for job in jobs[1:]:
            job.cancel()
        await asyncio.sleep(0.5)
        answered = PredictJob("next", 0.0, tokens=[1, 2, 3])
        done = asyncio.get_running_loop().create_future()
        answered.waiter = lambda: done.set_result(None)
        remote.submit(answered)
        await asyncio.wait_for(done, 30)
        await remote.close()

    try:
        asyncio.run(frontend())
        assert not loop.jobs and not loop.origin, f"{len(loop.jobs)} jobs kept after they ended"
    finally:
        loop.request_stop()
        thread.join(30)

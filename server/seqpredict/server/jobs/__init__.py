"""The kinds of work the scheduler orders per session and the engine runs (see `base`)."""

from seqpredict.server.jobs.base import NO_TOP, Chunk, Job, Sampling, StepOutput, TopK, deliver
from seqpredict.server.jobs.generate import GenerateEvent, GenerateJob
from seqpredict.server.jobs.predict import PredictJob, PredictResult
from seqpredict.server.jobs.session import EndSessionJob, FutureJob, GetSessionJob

__all__ = [
    "NO_TOP",
    "Chunk",
    "EndSessionJob",
    "FutureJob",
    "GenerateEvent",
    "GenerateJob",
    "GetSessionJob",
    "Job",
    "PredictJob",
    "PredictResult",
    "Sampling",
    "StepOutput",
    "TopK",
    "deliver",
]

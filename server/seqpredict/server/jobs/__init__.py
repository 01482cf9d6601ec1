"""The kinds of work the scheduler orders per session and the engine runs (see `base`)."""

from seqpredict.server.jobs.base import NO_TOP, Chunk, Job, Sampling, StepOutput, TopK, deliver
from seqpredict.server.jobs.fork import ForkJob
from seqpredict.server.jobs.generate import GenerateEvent, GenerateJob
from seqpredict.server.jobs.listing import LIST_QUEUE, ListJob
from seqpredict.server.jobs.predict import PredictJob, PredictResult
from seqpredict.server.jobs.session import EndSessionJob, FutureJob, GetSessionJob
from seqpredict.server.jobs.transfer import ExportJob, ImportJob

__all__ = [
    "LIST_QUEUE",
    "NO_TOP",
    "Chunk",
    "EndSessionJob",
    "ExportJob",
    "ForkJob",
    "FutureJob",
    "GenerateEvent",
    "GenerateJob",
    "GetSessionJob",
    "ImportJob",
    "Job",
    "ListJob",
    "PredictJob",
    "PredictResult",
    "Sampling",
    "StepOutput",
    "TopK",
    "deliver",
]

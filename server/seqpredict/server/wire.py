"""The frontend ⇄ engine messages: msgpack via msgspec, many jobs and many answers per message.

A frontend sends `ToEngine` — the jobs its handlers submitted since its last message, as
their kind's wire fields, and the ids of jobs whose callers went away. The engine sends
`FromEngine` — the answers of a batch that belong to that frontend, and now and then its
status (heartbeat, queue). Plain values only: no pickle, nothing that runs code on decode.
"""

from __future__ import annotations

from typing import Any

import msgspec

from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.jobs import (
    EndSessionJob,
    ExportJob,
    ForkJob,
    GenerateEvent,
    GenerateJob,
    GetSessionJob,
    ImportJob,
    Job,
    ListJob,
    PredictJob,
    PredictResult,
)
from seqpredict.server.session_state import SessionRecord, SessionState

KINDS: dict[str, type[Job]] = {
    cls.__name__: cls
    for cls in (PredictJob, GenerateJob, GetSessionJob, EndSessionJob, ForkJob, ExportJob, ImportJob, ListJob)
}


class JobSpec(msgspec.Struct, array_like=True, frozen=True):
    kind: str  # the job class's name
    id: int  # the frontend's id for it: answers and cancels name it
    session_id: str
    values: list[Any]  # its kind's WIRE_FIELDS, in order


class ToEngine(msgspec.Struct, array_like=True, frozen=True):
    jobs: list[JobSpec] = []
    cancels: list[int] = []
    stop: bool = False  # the supervisor asks the engine to drain and stop


class Reply(msgspec.Struct, array_like=True, frozen=True):
    id: int
    final: bool  # the job is done: no more replies for this id
    type: str  # what `value` encodes: see `encode_payload`
    value: Any


class Status(msgspec.Struct, array_like=True, frozen=True):
    beat_age: float  # seconds since the engine's loop last showed progress
    queued: int
    stopping: bool
    store_up: bool = True  # the shared session store answers (or there is none)


class FromEngine(msgspec.Struct, array_like=True, frozen=True):
    replies: list[Reply] = []
    status: Status | None = None


def job_spec(job: Job, wire_id: int) -> JobSpec:
    return JobSpec(type(job).__name__, wire_id, job.session_id, job.wire_values())


def job_from_spec(spec: JobSpec, received: float) -> Job:
    try:
        kind = KINDS[spec.kind]
    except KeyError:
        raise ValueError(f"unknown job kind {spec.kind!r}") from None
    return kind.from_wire(spec.session_id, received, spec.values)


# -- payloads --------------------------------------------------------------------------------------------
def encode_payload(payload: object) -> tuple[str, Any]:
    """(type, value) for a job's payload: what a job kind's `start`/`absorb` returns, or an error."""
    if isinstance(payload, RequestFailed):
        return "error", [int(payload.code), payload.message, payload.position, payload.incarnation, payload.limit]
    if isinstance(payload, PredictResult):
        p = payload
        return "predict", [
            p.position,
            p.incarnation,
            p.created,
            p.next,
            p.steps,
            p.ended,
            p.token_log_probs,
            p.log_prob_sum,
        ]
    if isinstance(payload, GenerateEvent):
        e = payload
        return "token", [
            e.token,
            e.probability,
            e.log_probability,
            e.position,
            e.incarnation,
            e.created,
            e.finish,
            e.stop,
        ]
    if isinstance(payload, SessionRecord):
        return "record", _record(payload)
    if isinstance(payload, tuple) and len(payload) == 2 and isinstance(payload[1], SessionState):
        record, state = payload
        return "export", [_record(record), [state.position, state.incarnation, state.dtype, state.data]]
    if isinstance(payload, tuple) and len(payload) == 2 and isinstance(payload[0], list):
        records, more = payload
        return "page", [[_record(r) for r in records], more]
    raise TypeError(f"no wire encoding for {type(payload).__name__}")


def decode_payload(kind: str, value: Any) -> object:
    if kind == "error":
        code, message, position, incarnation, limit = value
        return RequestFailed(Code(code), message, position, limit, incarnation)
    if kind == "predict":
        position, incarnation, created, top, steps, ended, scores, total = value
        result = PredictResult(position, incarnation, created, tuple(top), None, ended)
        if steps is not None:
            result.steps = [tuple(s) for s in steps]
        if scores is not None:
            result.token_log_probs, result.log_prob_sum = scores, total
        return result
    if kind == "token":
        return GenerateEvent(*value)
    if kind == "record":
        return SessionRecord(*value)
    if kind == "export":
        record, state = value
        return SessionRecord(*record), SessionState(*state)
    if kind == "page":
        records, more = value
        return [SessionRecord(*r) for r in records], more
    raise ValueError(f"unknown payload type {kind!r}")


def _record(r: SessionRecord) -> list[Any]:
    return [r.session_id, r.position, r.incarnation, r.created_at, r.last_used_at, r.expires_at]


ENCODER = msgspec.msgpack.Encoder()
TO_ENGINE = msgspec.msgpack.Decoder(ToEngine)
FROM_ENGINE = msgspec.msgpack.Decoder(FromEngine)

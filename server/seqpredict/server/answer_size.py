"""Upper bounds of answer sizes, known before any work is done.

A request is refused when its answer could not be sent (over the client's receive limit)
rather than applied and then lost; and a stream's window counts answers by these bounds.
The bounds follow protobuf's wire format: every field at its longest encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from seqpredict.models import Vocabulary

# What gRPC clients accept unless told otherwise (grpc.max_receive_message_length): an answer
# to a client that did not declare its own limit is kept within this.
GRPC_DEFAULT_RECEIVE_BYTES = 4 * 1024 * 1024
# Request metadata in which a client declares its receive limit (our client libraries do).
RECEIVE_LIMIT_METADATA = "seqpredict-max-receive-bytes"
# An in-band error: code, message (which quotes at most the session id and a short reason).
_ERROR_BYTES = 1024
_VARINT_MAX = 10  # a uint64 at its longest


def varint_size(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field(payload: int) -> int:
    """A length-delimited field (tag, length, payload) around `payload` bytes."""
    return 1 + varint_size(payload) + payload


@dataclass(frozen=True)
class AnswerSizer:
    vocab_size: int
    longest_text: int  # UTF-8 bytes of the longest token text

    @classmethod
    def of(cls, vocab: Vocabulary) -> AnswerSizer:
        return cls(len(vocab), max(len(c.encode()) for c in vocab.chars))

    def token_probability(self) -> int:
        """One TokenProbability inside a repeated field: id, text, probability, log_probability."""
        body = (1 + varint_size(self.vocab_size)) + _field(self.longest_text) + 5 + 5
        return _field(body)

    def predict(self, session_id: str, tokens: int, top_k: int, all_steps: bool, score: bool) -> int:
        """A PredictResponse: bookkeeping, `next`, with all_steps one StepPrediction per token, with
        score one packed float per token and their sum."""
        top = top_k * self.token_probability()
        steps = tokens * _field(top) if all_steps else 0
        steps += _field(4 * tokens) + 9 if score else 0
        bookkeeping = _field(len(session_id.encode())) + 4 * (1 + _VARINT_MAX) + 3 * 2  # position, request
        # id, incarnation, error code; created, ended, one spare flag
        return bookkeeping + max(top + steps, _ERROR_BYTES + len(session_id.encode()))

    @staticmethod
    def in_message(response: int) -> int:
        """One response as an element of PredictManyResponse.responses."""
        return _field(response)


def receive_limit(metadata: object, server_max: int) -> int:
    """The largest answer this call's client can take: its declared limit (capped by ours), else gRPC's default."""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == RECEIVE_LIMIT_METADATA:
            try:
                declared = int(value)
            except (TypeError, ValueError):
                break
            if declared > 0:
                return min(declared, server_max)
    return min(GRPC_DEFAULT_RECEIVE_BYTES, server_max)

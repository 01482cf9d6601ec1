"""The exported-session blob: a serialized SessionBlob, checked field by field before import.

A session's state means something only under the weights that produced it, so the blob
carries the model's fingerprint and architecture and the state's exact layout, and a sha256
over everything; import refuses anything that does not match this server, changing nothing.
No torch here (frontends run without it): the state stays bytes; the engine turns them into
tensors and checks that every value is finite.
"""

from __future__ import annotations

import hashlib
import math
import time

from google.protobuf.message import DecodeError

from seqpredict.server.errors import Code, RequestFailed
from seqpredict.server.model_card import ModelCard
from seqpredict.server.session_state import ELEMENT_BYTES, SessionState
from seqpredict.v1 import seqpredict_pb2 as pb

FORMAT_VERSION = 1


def _digest(blob: pb.SessionBlob) -> bytes:
    unsigned = pb.SessionBlob()
    unsigned.CopyFrom(blob)
    unsigned.ClearField("sha256")
    return hashlib.sha256(unsigned.SerializeToString(deterministic=True)).digest()


class BlobCodec:
    """Encodes this server's sessions and decodes blobs meant for it."""

    def __init__(self, card: ModelCard, architecture: pb.Architecture) -> None:
        self.fingerprint = card.fingerprint
        self.architecture = architecture
        self.names = card.state_names
        self.shape = card.state_shape

    def encode(self, session_id: str, state: SessionState) -> bytes:
        blob = pb.SessionBlob(
            format_version=FORMAT_VERSION,
            model_fingerprint=self.fingerprint,
            architecture=self.architecture,
            layout=pb.StateLayout(
                dtype=state.dtype, tensors=[pb.StateTensor(name=n, shape=list(self.shape)) for n in self.names]
            ),
            session_id=session_id,
            position=state.position,
            incarnation=state.incarnation,
            state=state.data,
        )
        blob.exported_at.FromNanoseconds(time.time_ns())
        blob.sha256 = _digest(blob)
        return blob.SerializeToString(deterministic=True)

    def decode(self, data: bytes) -> tuple[pb.SessionBlob, SessionState]:
        """The blob and the state it carries; RequestFailed (nothing changed) for anything wrong."""
        blob = pb.SessionBlob()
        try:
            blob.ParseFromString(data)
        except DecodeError:
            raise invalid("the blob is not a serialized SessionBlob") from None
        if not blob.sha256:
            raise invalid("the blob has no checksum (not an exported session?)")
        if blob.sha256 != _digest(blob):
            raise invalid("the blob's sha256 does not match its contents: it is damaged")
        if blob.format_version != FORMAT_VERSION:
            raise invalid(f"blob format {blob.format_version} is not supported (this server reads {FORMAT_VERSION})")
        if blob.model_fingerprint != self.fingerprint:
            raise RequestFailed(
                Code.FAILED_PRECONDITION,
                f"the blob is a session of model {blob.model_fingerprint[:12] or '?'}, this server serves"
                f" {self.fingerprint[:12]}: its state would be meaningless here",
            )
        layout = blob.layout
        element = ELEMENT_BYTES.get(layout.dtype)
        names = tuple(t.name for t in layout.tensors)
        shapes = [tuple(t.shape) for t in layout.tensors]
        if element is None or names != self.names or any(shape != self.shape for shape in shapes):
            raise invalid(
                f"the blob's state layout ({layout.dtype}, {names}, {shapes}) is not this model's"
                f" (float32/bfloat16/float16, {self.names}, {[self.shape] * len(self.names)})"
            )
        size = math.prod(self.shape) * element * len(names)
        if len(blob.state) != size:
            raise invalid(f"the blob's state has {len(blob.state)} bytes, its layout needs {size}")
        if blob.incarnation == 0:
            raise invalid("the blob's incarnation is 0, which no session has")
        return blob, SessionState(blob.position, blob.incarnation, layout.dtype, blob.state)


def invalid(message: str) -> RequestFailed:
    return RequestFailed(Code.INVALID_ARGUMENT, message)

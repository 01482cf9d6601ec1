"""The shared state tier: every session's committed state in Redis, written only by compare-and-set.

Each session is one hash, `<prefix>:{<session id>}:<model>` — the braces are a Redis Cluster
hash tag, so a session's key lives in one slot, and the model fingerprint in the name keeps
sessions of different weights apart (their state would be meaningless to each other). It
holds the state bytes, position, incarnation, the fingerprint, the dtype, and whether it was
written at a drain ("clean"), and expires after the idle TTL. A sorted set per model indexes
the ids for ListSessions.

A commit names the version it was derived from (incarnation, position; 0, 0 for a session
new to the store) and succeeds only if the stored version is still that one, atomically (one
Lua script per key): a replica holding a stale copy — after a ring change, a partition, a
pause — can never overwrite newer state. A batch's commits go in one pipelined round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from seqpredict.server.config import redacted_url

T = TypeVar("T")


# KEYS[1]: the session's hash. ARGV: base incarnation, base position (the version the new state
# was derived from; "0" "0": none), then the new incarnation, position, state, fingerprint,
# dtype, clean flag, created and last-used times, TTL in ms. Returns {1} or {0, stored
# incarnation, stored position}.
COMMIT = """
local inc = redis.call('HGET', KEYS[1], 'i')
local pos = redis.call('HGET', KEYS[1], 'p')
if not inc then inc = '0'; pos = '0' end
if inc ~= ARGV[1] or pos ~= ARGV[2] then return {0, inc, pos} end
redis.call('HSET', KEYS[1], 'i', ARGV[3], 'p', ARGV[4], 's', ARGV[5], 'f', ARGV[6], 'd', ARGV[7], 'c', ARGV[8],
  'a', ARGV[9], 'u', ARGV[10])
redis.call('PEXPIRE', KEYS[1], ARGV[11])
return {1}
"""
# KEYS[1]: the session's hash. ARGV: the version the deleting replica holds. Deletes only that
# version (or nothing, when the session is already gone); same answers as COMMIT.
DELETE = """
local inc = redis.call('HGET', KEYS[1], 'i')
if not inc then return {1} end
local pos = redis.call('HGET', KEYS[1], 'p')
if inc ~= ARGV[1] or pos ~= ARGV[2] then return {0, inc, pos} end
redis.call('DEL', KEYS[1])
return {1}
"""


class StoreUnavailable(Exception):
    """Redis cannot be reached (or answered with an error); the message says why in one line."""


Version = tuple[int, int]  # (incarnation, position); (0, 0): not in the store


@dataclass(frozen=True)
class Stored:
    """One session as committed."""

    position: int
    incarnation: int
    dtype: str
    state: bytes
    clean: bool  # written at a drain: nothing was acknowledged after it
    created_at: float
    last_used_at: float


@dataclass(frozen=True)
class Commit:
    session_id: str
    base: Version  # the stored version the state was derived from; (0, 0): new to the store
    incarnation: int
    position: int
    dtype: str
    state: bytes
    created_at: float
    last_used_at: float
    clean: bool = False


class RedisStore:
    """Sessions of one model in Redis (or Redis Cluster: `redis+cluster://` / `rediss+cluster://`).

    Safe to use from two threads (the engine's, and the monitor's pings): redis-py hands each
    call a connection of its own from the client's pool.
    """

    def __init__(self, url: str, fingerprint: str, ttl_s: float, timeout_s: float = 1.0) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", ["seqpredict"])[0]
        self.fingerprint = fingerprint
        self.model = fingerprint[:16]
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.url = redacted_url(url)
        options = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
        scheme = parts.scheme.removesuffix("+cluster")
        plain = urlunsplit(parts._replace(scheme=scheme, query="&".join(f"{k}={v[0]}" for k, v in query.items())))
        if parts.scheme.endswith("+cluster"):
            self.client: redis.Redis | RedisCluster = RedisCluster.from_url(plain, **options)
        else:
            self.client = redis.Redis.from_url(plain, **options)
        self._commit = self.client.register_script(COMMIT)
        self._delete = self.client.register_script(DELETE)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:{{{session_id}}}:{self.model}"

    @property
    def index(self) -> str:
        return f"{self.prefix}:index:{self.model}"

    def ping(self) -> None:
        self._call(self.client.ping)

    def close(self) -> None:
        self.client.close()

    def load_many(self, session_ids: Iterable[str]) -> dict[str, Stored]:
        """The committed state of each id that has one, in one round trip."""
        ids = list(session_ids)
        if not ids:
            return {}

        def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for sid in ids:
                pipe.hmget(self.key(sid), "p", "i", "d", "s", "c", "a", "u")
            return pipe.execute()

        found: dict[str, Stored] = {}
        for sid, (p, i, d, s, c, a, u) in zip(ids, self._call(run), strict=True):
            if i is not None and s is not None:
                found[sid] = Stored(int(p), int(i), d.decode(), bytes(s), c == b"1", float(a or 0), float(u or 0))
        return found

    def settle(
        self, commits: list[Commit], checks: dict[str, Version], deletes: dict[str, Version]
    ) -> dict[str, Version]:
        """In one round trip: compare-and-set every commit, check that each of `checks` is still the
        stored version, delete each of `deletes` if still the version given → the sessions refused,
        with the version actually stored."""
        if not commits and not checks and not deletes:
            return {}

        def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            # deletes first: a session ended and created again within one batch is deleted, then created
            for sid, version in deletes.items():
                self._delete(keys=[self.key(sid)], args=list(version), client=pipe)
            if deletes:
                pipe.zrem(self.index, *deletes)
            for c in commits:
                args = [*c.base, c.incarnation, c.position, c.state, self.fingerprint, c.dtype, int(c.clean)]
                args += [repr(c.created_at), repr(c.last_used_at), self.ttl_ms]
                self._commit(keys=[self.key(c.session_id)], args=args, client=pipe)
            new = [c.session_id for c in commits if c.base == (0, 0)]
            if new:
                pipe.zadd(self.index, dict.fromkeys(new, 0))
            for sid in checks:
                pipe.hmget(self.key(sid), "i", "p")
            return pipe.execute()

        answers = iter(self._call(run))
        refused: dict[str, Version] = {}
        cas = [(sid, next(answers)) for sid in deletes]
        if deletes:
            next(answers)  # zrem
        cas += [(c.session_id, next(answers)) for c in commits]
        if any(c.base == (0, 0) for c in commits):
            next(answers)  # zadd
        for sid, answer in cas:
            if int(answer[0]) != 1:
                refused[sid] = (int(answer[1]), int(answer[2]))
        for sid, expected in checks.items():
            answer = next(answers)
            stored = (int(answer[0] or 0), int(answer[1] or 0))
            if stored != expected:
                refused[sid] = stored
        return refused

    def records(self, session_ids: list[str]) -> dict[str, Stored]:
        """Bookkeeping (no state bytes) of the ids that exist, in one round trip, for ListSessions."""

        def run() -> list:
            pipe = self.client.pipeline(transaction=False)
            for sid in session_ids:
                pipe.hmget(self.key(sid), "p", "i", "a", "u")
            return pipe.execute()

        found: dict[str, Stored] = {}
        for sid, (p, i, a, u) in zip(session_ids, self._call(run) if session_ids else [], strict=True):
            if i is not None:
                found[sid] = Stored(int(p), int(i), "", b"", False, float(a or 0), float(u or 0))
        return found

    def list_ids(self, prefix: str, after: str, limit: int) -> list[str]:
        """Up to `limit` ids starting with `prefix`, after `after`, in name order (some may have expired)."""
        low = f"({after}" if after and after >= prefix else f"[{prefix}"
        high = f"[{prefix}\xff" if prefix else "+"
        batch = self._call(lambda: self.client.zrangebylex(self.index, low, high, start=0, num=limit))
        return [b.decode() for b in batch]

    def forget(self, session_ids: list[str]) -> None:
        """Drop ids of expired sessions from the index."""
        if session_ids:
            self._call(lambda: self.client.zrem(self.index, *session_ids))

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (redis.RedisError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StoreUnavailable(f"{self.url}: {first}") from None

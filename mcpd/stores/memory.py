# -*- test-case-name: tests.test_stores -*-
"""The in-process stores: one daemon's state in its own memory, behind the interfaces of
`mcpd.interfaces` (every method returns a Deferred that has already fired, as klein's
``MemorySessionStore`` does). Records are kept as JSON data, as a shared store would keep them,
so what a caller changes after saving is not changed in the store."""

from __future__ import annotations

import bisect
import collections
import math
import re
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from mcpd.interfaces import (
    TERMINAL,
    IBucketStore,
    ICache,
    ISessionStore,
    ITaskStore,
    NotAnInteger,
    SessionRecord,
    StoreError,
    StoreFull,
    TaskRecord,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

# Buckets kept before full (idle) ones are forgotten.
_PRUNE_AT = 10_000
# Tasks kept at once (running, or finished and waiting to be fetched).
TASK_CAPACITY = 1000
# The cache's defaults (--cache-default-ttl, --cache-max-ttl, --cache-max-value, --cache-max-keys).
CACHE_DEFAULT_TTL = 3600
CACHE_MAX_TTL = 7 * 24 * 3600
CACHE_MAX_VALUE = 64 * 1024
CACHE_MAX_KEYS = 100_000
# The longest key the cache pack takes (its MAX_KEY): no scan position is longer.
CACHE_MAX_KEY = 512
# What a Redis integer holds.
INT64 = (-(2**63), 2**63 - 1)


@implementer(IBucketStore)
class MemoryBucketStore:
    """Token buckets in this process's memory (one daemon; see `IBucketStore`)."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._buckets: dict[str, list[float]] = {}
        # Prune when the table reaches this size; after a prune that freed little it doubles,
        # so a crowd of active clients does not make every new one pay a full scan.
        self._prune_at = _PRUNE_AT

    def take(self, key: str, capacity: float, rate: float) -> Deferred[float]:
        return succeed(self.take_now(key, capacity, rate))

    def take_now(self, key: str, capacity: float, rate: float) -> float:
        """`take`'s answer itself (`mcpd.security.ratelimit.RateLimiter` asks this way, without
        a Deferred, with every request)."""
        now = self.clock.seconds()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune(now, capacity, rate)
                self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))
            bucket = self._buckets[key] = [capacity, now]
        tokens = min(capacity, bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / rate

    def _prune(self, now: float, capacity: float, rate: float) -> None:
        """Forget buckets that have refilled: they would be created full again anyway."""
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * rate >= capacity:
                del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


@implementer(ITaskStore)
class MemoryTaskStore:
    """Task records of this process, at most ``capacity`` of them; a record is dropped once its
    TTL has passed, and the oldest finished records make room for new ones."""

    def __init__(self, capacity: int = TASK_CAPACITY) -> None:
        self.capacity = capacity
        self._records: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def add(self, record: TaskRecord, now: float) -> Deferred[list[TaskRecord]]:
        dropped = self._expire(now)
        if len(self._records) >= self.capacity:
            oldest = next((data for data in self._records.values() if data["status"] in TERMINAL), None)
            if oldest is None:
                return fail(
                    StoreFull(
                        f"The server is running {len(self._records)} tasks, its limit; try again when one has finished",
                        self.capacity,
                    )
                )
            del self._records[oldest["task_id"]]
            dropped.append(TaskRecord.from_json(oldest))
        self._records[record.task_id] = record.to_json()
        return succeed(dropped)

    def save(self, record: TaskRecord) -> Deferred[TaskRecord | None]:
        kept = self._records.get(record.task_id)
        # The first terminal status stays, as in the shared store (`ITaskStore.save`).
        if kept is not None and kept["status"] in TERMINAL and kept["status"] != record.status:
            return succeed(TaskRecord.from_json(kept))
        if kept is not None:
            self._records[record.task_id] = record.to_json()
        return succeed(None)

    def get(self, task_id: str) -> Deferred[TaskRecord | None]:
        data = self._records.get(task_id)
        return succeed(TaskRecord.from_json(data) if data is not None else None)

    def remove(self, task_id: str) -> Deferred[TaskRecord | None]:
        data = self._records.pop(task_id, None)
        return succeed(TaskRecord.from_json(data) if data is not None else None)

    def owned_by(self, owner: str) -> Deferred[list[TaskRecord]]:
        mine = [TaskRecord.from_json(data) for data in self._records.values() if data["owner"] == owner]
        return succeed(sorted(mine, key=lambda record: (record.created, record.task_id)))

    def expire(self, now: float) -> Deferred[list[TaskRecord]]:
        return succeed(self._expire(now))

    def _expire(self, now: float) -> list[TaskRecord]:
        gone = [
            data
            for data in self._records.values()
            if data["ttl_ms"] is not None and now >= data["created"] + data["ttl_ms"] / 1000
        ]
        for data in gone:
            del self._records[data["task_id"]]
        return [TaskRecord.from_json(data) for data in gone]

    def count(self) -> Deferred[int]:
        return succeed(len(self._records))


@implementer(ISessionStore)
class MemorySessionStore:
    """Legacy session records of this process (see `ISessionStore`)."""

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {}
        # The ids deleted lately (bounded: ids are random, one never comes back by chance).
        self._ended: collections.deque[str] = collections.deque(maxlen=_TOMBSTONES)

    def save(self, record: SessionRecord) -> Deferred[bool]:
        if record.session_id in self._ended:
            return succeed(False)
        self._records[record.session_id] = record.to_json()
        return succeed(True)

    def load(self, session_id: str) -> Deferred[SessionRecord | None]:
        data = self._records.get(session_id)
        return succeed(SessionRecord.from_json(data) if data is not None else None)

    def touch(self, session_id: str) -> Deferred[bool]:
        return succeed(session_id in self._records)

    def touch_many(self, session_ids: list[str]) -> Deferred[list[bool]]:
        return succeed([session_id in self._records for session_id in session_ids])

    def delete(self, session_id: str) -> Deferred[bool]:
        self._ended.append(session_id)
        return succeed(self._records.pop(session_id, None) is not None)

    def update(
        self,
        session_id: str,
        log_level: str | None = None,
        subscribe: str | None = None,
        unsubscribe: str | None = None,
        tenant: str | None = None,
        cap: int | None = None,
    ) -> Deferred[bool]:
        data = self._records.get(session_id)
        if data is None:
            return succeed(False)
        subscriptions = data["subscriptions"] = list(data.get("subscriptions", ()))
        if subscribe is not None and subscribe not in subscriptions and cap is not None and len(subscriptions) >= cap:
            return fail(StoreFull(f"session {session_id} follows {len(subscriptions)} resources, its most", cap))
        if log_level is not None:
            data["log_level"] = log_level
        if tenant is not None:
            data["subscriptions_tenant"] = tenant
        if subscribe is not None and subscribe not in subscriptions:
            subscriptions.append(subscribe)
        if unsubscribe is not None and unsubscribe in subscriptions:
            subscriptions.remove(unsubscribe)
        return succeed(True)

    def count(self) -> Deferred[int]:
        return succeed(len(self._records))


# Deleted session ids an in-process store remembers.
_TOMBSTONES = 1024


@implementer(ICache)
class MemoryCache:
    """The cache pack's keys in this process's memory (see `ICache`): at most ``max_keys`` of
    them over every tenant, each dropped once its TTL has passed (when next touched, or when
    room is needed). Each tenant's names are also kept sorted, so a scan page costs a bisection
    and at most `SCAN_EXAMINED` names, however many keys there are."""

    def __init__(
        self,
        clock: IReactorTime,
        default_ttl: int = CACHE_DEFAULT_TTL,
        max_ttl: int = CACHE_MAX_TTL,
        max_value: int = CACHE_MAX_VALUE,
        max_keys: int = CACHE_MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.max_value = max_value
        self.max_keys = max_keys
        # tenant -> key -> (JSON text, expiry time), and the tenant's key names in order
        self._keys: dict[str, dict[str, tuple[str, float]]] = {}
        self._names: dict[str, list[str]] = {}
        self._size = 0
        self._purged_at = -math.inf

    def _live(self, tenant: str, key: str) -> tuple[str, float] | None:
        entry = self._keys.get(tenant, {}).get(key)
        if entry is not None and entry[1] <= self.clock.seconds():
            self._drop(tenant, key)
            return None
        return entry

    def _drop(self, tenant: str, key: str) -> bool:
        keys = self._keys.get(tenant)
        if keys is None or keys.pop(key, None) is None:
            return False
        self._size -= 1
        names = self._names[tenant]
        del names[bisect.bisect_left(names, key)]
        if not keys:
            del self._keys[tenant], self._names[tenant]
        return True

    def _put(self, tenant: str, key: str, value: str, expires: float) -> None:
        keys = self._keys.get(tenant)
        if keys is None or key not in keys:
            if self._size >= self.max_keys:
                self._purge()
            if self._size >= self.max_keys:
                raise StoreFull(
                    f"the in-process cache holds {self._size} keys, its limit (--cache-max-keys): delete "
                    "keys you no longer need, or set shorter TTLs",
                    self.max_keys,
                )
            keys = self._keys.setdefault(tenant, {})
            bisect.insort(self._names.setdefault(tenant, []), key)
            self._size += 1
        keys[key] = (value, expires)

    def _purge(self) -> None:
        """Drop every expired key; at most once a second (a full cache refuses at once)."""
        now = self.clock.seconds()
        if now - self._purged_at < 1.0:
            return
        self._purged_at = now
        for tenant, keys in list(self._keys.items()):
            for key, (_value, expires) in list(keys.items()):
                if expires <= now:
                    self._drop(tenant, key)

    def get(self, tenant: str, key: str) -> Deferred[tuple[str | None, int | None]]:
        entry = self._live(tenant, key)
        if entry is None:
            return succeed((None, None))
        return succeed((entry[0], math.ceil(entry[1] - self.clock.seconds())))

    def set(self, tenant: str, key: str, value: str, ttl: int) -> Deferred[None]:
        self._live(tenant, key)
        try:
            self._put(tenant, key, value, self.clock.seconds() + ttl)
        except StoreFull as e:
            return fail(e)
        return succeed(None)

    def delete(self, tenant: str, key: str) -> Deferred[bool]:
        return succeed(self._live(tenant, key) is not None and self._drop(tenant, key))

    def incr(self, tenant: str, key: str, by: int, ttl: int | None) -> Deferred[int]:
        entry = self._live(tenant, key)
        now = self.clock.seconds()
        if entry is None:
            current, expires = 0, now + (ttl if ttl is not None else self.default_ttl)
        else:
            if not _INTEGER.match(entry[0]) or not INT64[0] <= int(entry[0]) <= INT64[1]:
                return fail(
                    NotAnInteger(f"{key!r} holds no integer: cache.incr adds to a key holding an integer (or none)")
                )
            current, expires = int(entry[0]), (now + ttl if ttl is not None else entry[1])
        value = current + by
        if not INT64[0] <= value <= INT64[1]:
            return fail(NotAnInteger(f"adding {by} to {key!r} would leave the 64-bit integer range"))
        try:
            self._put(tenant, key, str(value), expires)
        except StoreFull as e:
            return fail(e)
        return succeed(value)

    def scan(self, tenant: str, pattern: str, limit: int, position: Any) -> Deferred[tuple[list[str], Any]]:
        """The tenant's names in order, after ``position`` (the last name looked at)."""
        if position is not None and not is_cache_key(position):
            # A cursor's position is the client's to forge: refuse what no scan gave out.
            return fail(StoreError("cursor is not one this server gave out: call again without cursor"))
        matches = glob_regex(pattern).fullmatch
        names = self._names.get(tenant, [])
        keys = self._keys.get(tenant, {})
        now = self.clock.seconds()
        start = bisect.bisect_right(names, position) if isinstance(position, str) else 0
        page: list[str] = []
        end = min(len(names), start + SCAN_EXAMINED)
        index = start
        while index < end and len(page) < limit:
            name = names[index]
            if keys[name][1] > now and matches(name.encode("utf-8", "surrogatepass")):
                page.append(name)
            index += 1
        return succeed((page, names[index - 1] if index < len(names) and index > start else None))


def is_cache_key(name: Any) -> bool:
    """Whether ``name`` is a key the cache may hold: text of UTF-8 (no lone surrogate), at most
    `CACHE_MAX_KEY` characters."""
    if not isinstance(name, str) or len(name) > CACHE_MAX_KEY:
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


# Names one in-process scan call looks at, at most (a page may then hold fewer than its limit).
SCAN_EXAMINED = 10_000


# Redis' INCRBY takes the decimal text of a 64-bit integer, nothing else.
_INTEGER = re.compile(r"^-?(0|[1-9][0-9]*)$")


def glob_regex(pattern: str) -> re.Pattern[bytes]:
    """A regular expression over UTF-8 names matching what Redis' glob ``pattern`` matches
    (KEYS, SCAN MATCH; its ``stringmatchlen``): byte by byte, so ``?`` is one byte of a name,
    with ``*``, ``?``, ``[abc]``, ``[^a]``, ``[a-z]`` and ``\\`` escapes, and Redis' edges: ``[]``
    matches nothing, ``[^]`` any byte, ``!`` is no negation, a range takes the byte after its
    ``-`` even when that is ``]`` (``[a-]`` is ``]`` to ``a``, and the class runs on), an
    unclosed class runs to the pattern's end, and ranges compare bytes as C's signed chars.

    It never backtracks more than once over a name, whatever the pattern (``*a*a*a…b`` would
    take a plain translation exponential time on the reactor): between two stars, the leftmost
    match of the fixed-width segment is as good as any later one, so each is an atomic group."""
    text = pattern.encode("utf-8", "surrogatepass")
    segments: list[list[bytes]] = [[]]
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == _STAR:
            segments.append([])
        elif c == _QUESTION:
            segments[-1].append(b".")
        elif c == _OPEN:
            i, piece = _glob_class(text, i + 1)
            segments[-1].append(piece)
        else:
            if c == _BACKSLASH and i + 1 < n:
                i += 1
            segments[-1].append(re.escape(text[i : i + 1]))
        i += 1
    regex = b"".join(segments[0])
    if len(segments) > 1:
        regex += b"".join(b"(?>.*?" + b"".join(segment) + b")" for segment in segments[1:-1] if segment)
        regex += b".*" + b"".join(segments[-1])
    return re.compile(regex, re.DOTALL)


_STAR, _QUESTION, _OPEN, _CLOSE, _BACKSLASH, _CARET, _DASH = b"*?[]\\^-"


def _signed(byte: int) -> int:
    """A byte as Redis' ``stringmatchlen`` compares it in a range (a signed char)."""
    return byte - 256 if byte > 127 else byte


def _glob_class(text: bytes, i: int) -> tuple[int, bytes]:
    """The character class starting at ``text[i]`` (after its ``[``): where it ends (its
    ``]``, or the pattern's last byte) and its regular expression, read as ``stringmatchlen``
    reads it."""
    n = len(text)
    negate = i < n and text[i] == _CARET
    if negate:
        i += 1
    chosen: set[int] = set()
    while True:
        if i < n and text[i] == _BACKSLASH and n - i >= 2:
            i += 1
            chosen.add(text[i])
        elif i < n and text[i] == _CLOSE:
            break
        elif i >= n:
            i -= 1  # unclosed: the class took the rest of the pattern
            break
        elif n - i >= 3 and text[i + 1] == _DASH:
            low, high = sorted((_signed(text[i]), _signed(text[i + 2])))
            chosen.update(b for b in range(256) if low <= _signed(b) <= high)
            i += 2
        else:
            chosen.add(text[i])
        i += 1
    if negate:
        chosen = set(range(256)) - chosen
    if not chosen:
        return i, b"(?!)"
    return i, b"[" + b"".join(re.escape(bytes((b,))) for b in sorted(chosen)) + b"]"

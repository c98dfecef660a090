# -*- test-case-name: tests.test_cluster -*-
"""The events of legacy-session SSE streams, kept in Redis for the replay window.

Each stream of a session is a Redis stream (``ev:<session>:<stream key>``) of at most
``--sse-replay`` entries whose ids are the events' sequence numbers, expiring with the session.
Appending is one script: it adds the event and publishes it on the stream's channel, so a reader
anywhere that listens there and then reads what came before misses nothing and, comparing
sequence numbers, repeats nothing. An entry with no data ends the stream.

The session's standalone stream (its GET stream; key ``g``) is written by every instance serving
the session: its numbers come from the script too, and a change notification carries an id so
that when several instances hear of one change, the session gets it once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from mcpd.cluster.bus import ClusterBus

# Events numbered here, next in their stream (the GET stream, written by every instance), in
# order. KEYS: the stream, its counter, then each event's change once-key (or ""). ARGV: maximum
# length, TTL (ms), channel, then each event's data. Answers each event's number (0: its
# change was already added).
#
# A missing counter starts at Redis' clock in milliseconds, not at 0: a Redis restarted without
# persistence loses it while a reader stays open at its position, and numbers starting again
# at 1 would be dropped by that reader as already written (`_Reader._event`), and by a client
# resuming from its Last-Event-ID. They stay exact: 13 digits, well inside Lua's doubles and the
# "%.14g" its concatenation writes (until the year 2286), and inside `MAX_SEQ_DIGITS`. (Writing
# after TIME: scripts replicate by their effects, the default from Redis 5; mcpd needs 6.0.)
_APPEND = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[2], now[1] .. string.format('%03d', math.floor(tonumber(now[2]) / 1000)))
end
local numbers = {}
for i = 3, #KEYS do
  if KEYS[i] == '' or redis.call('SET', KEYS[i], '1', 'NX', 'PX', ARGV[2]) then
    local seq = redis.call('INCR', KEYS[2])
    redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], seq .. '-0', 'd', ARGV[i + 1])
    redis.call('PUBLISH', ARGV[3], seq .. ' ' .. ARGV[i + 1])
    numbers[#numbers + 1] = seq
  else
    numbers[#numbers + 1] = 0
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return numbers
"""

# A POST stream's events, numbered by the instance writing it, in order. KEYS: the stream.
# ARGV: maximum length, TTL (ms), channel, then each event's number and data.
_APPEND_NUMBERED = """
for i = 4, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], ARGV[i] .. '-0', 'd', ARGV[i + 1])
  redis.call('PUBLISH', ARGV[3], ARGV[i] .. ' ' .. ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""
# How many events of a stream one append script carries at most: a script runs alone in Redis.
APPEND_BATCH = 256

# KEYS: what to keep. ARGV: TTL (ms).
_KEEP = """
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end
return 0
"""
# How many sessions' GET streams one `_KEEP` renews (four keys each): a script runs alone in
# Redis, so a long one would hold up every other client.
KEEP_BATCH = 250

STANDALONE = "g"


@attrs.frozen
class _Event:
    """An event on its way to the journal: its number (None: Redis numbers it), its change's
    once-key (or ""), its data, and what fires with its number."""

    seq: int | None
    once: str
    data: bytes
    done: Deferred[int]


class Journal:
    """Appends to and reads the Redis streams of session events."""

    def __init__(self, bus: ClusterBus, replay_limit: int, ttl: float) -> None:
        self.bus = bus
        self.replay_limit = max(1, replay_limit)
        self.ttl_ms = int(max(ttl, 1.0) * 1000)
        # Events waiting for their stream's append in flight, by stream: see `append`.
        self._queued: dict[str, list[_Event]] = {}

    def stream(self, session_id: str, key: str) -> str:
        return self.bus.key("ev", session_id, key)

    def channel(self, session_id: str, key: str) -> str:
        return self.bus.key("ev", session_id, key, "live")

    def reader(self, session_id: str) -> str:
        """The claim on a session's GET stream: who reads it (`ClusterSessions.hold_standalone`)."""
        return self.bus.key("ev", session_id, STANDALONE, "reader")

    def append(
        self, session_id: str, key: str, data: bytes, seq: int | None = None, once: str | None = None
    ) -> Deferred[int]:
        """Add an event (``data``: one encoded message; empty ends the stream); fires with its
        number, or 0 when ``once`` (a change id) was already added to this stream.

        ``seq`` numbers a POST stream's event (written by this instance only); without it (the
        GET stream) Redis numbers the event. Either way a stream's events reach Redis in the
        order they were appended here, one script per stream at a time with what came
        meanwhile: commands take any connection of the pool, so two sent at once may run in
        either order (XADD would refuse a POST stream's smaller id, losing the event to replay;
        Redis would number the GET stream's events out of order)."""
        stream = self.stream(session_id, key)
        event = _Event(seq, self.bus.key("once", session_id, once) if once else "", data, Deferred())
        queued = self._queued.get(stream)
        if queued is not None:
            queued.append(event)
        else:
            self._queued[stream] = []
            self._send(session_id, key, [event])
        return event.done

    def _send(self, session_id: str, key: str, events: list[_Event]) -> None:
        """Append events of one stream; then those queued meanwhile."""
        stream = self.stream(session_id, key)
        args: list[Any] = [self.replay_limit, self.ttl_ms, self.channel(session_id, key)]
        if events[0].seq is not None:
            for event in events:
                args += [event.seq, event.data]
            d = self.bus.redis.eval(_APPEND_NUMBERED, [stream], args)
            d.addCallback(lambda _: [event.seq for event in events])
        else:
            args += [event.data for event in events]
            d = self.bus.redis.eval(_APPEND, [stream, stream + ":n", *(event.once for event in events)], args)

        def sent(outcome: Any) -> None:
            queued = self._queued.pop(stream, [])
            if queued:
                self._queued[stream] = queued[APPEND_BATCH:]
                self._send(session_id, key, queued[:APPEND_BATCH])
            for n, event in enumerate(events):
                if isinstance(outcome, Failure):
                    event.done.errback(outcome)
                else:
                    event.done.callback(int(outcome[n]))

        d.addBoth(sent)

    def read_after(self, session_id: str, key: str, after: int) -> Deferred[list[tuple[int, bytes]]]:
        """The kept events numbered above ``after``, in order."""

        def parsed(entries: Any) -> list[tuple[int, bytes]]:
            events = []
            for entry_id, fields in entries or ():
                seq = int(str(entry_id if isinstance(entry_id, str) else entry_id.decode()).split("-")[0])
                values = dict(zip(fields[::2], fields[1::2], strict=False))
                data: Any = values.get("d", values.get(b"d", b""))
                events.append((seq, data.encode() if isinstance(data, str) else bytes(data or b"")))
            return events

        stream = self.stream(session_id, key)
        return self.bus.redis.execute("XRANGE", stream, f"({after}-0", "+").addCallback(parsed)

    def keep(self, session_ids: list[str]) -> Deferred[Any]:
        """Renew the TTL of the sessions' GET streams, their counters, delivered marks and
        claims with the sessions': a quiet session kept alive by an open reader must not see its
        numbering restart. One script per `KEEP_BATCH` sessions."""
        names = []
        for session_id in session_ids:
            stream = self.stream(session_id, STANDALONE)
            names += [stream, stream + ":n", stream + ":delivered", self.reader(session_id)]
        step = 4 * KEEP_BATCH
        batches = [self.bus.redis.eval(_KEEP, names[i : i + step], [self.ttl_ms]) for i in range(0, len(names), step)]
        return gatherResults(batches, consumeErrors=True)

    def forget(self, session_id: str, keys: list[str]) -> Deferred[Any]:
        """Drop a session's streams (it ended)."""
        names = [self.stream(session_id, key) for key in keys]
        return self.bus.redis.execute("DEL", *names, *(name + ":n" for name in names), self.reader(session_id))

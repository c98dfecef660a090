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

from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from mcpd.cluster.bus import ClusterBus

# An event numbered here, next in its stream (the GET stream, written by every instance). KEYS:
# stream, its counter, the change's once-key (or ""); ARGV: data, maximum length, TTL (ms), channel.
_APPEND = """
if KEYS[3] ~= '' then
  if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ARGV[3]) then return 0 end
end
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], seq .. '-0', 'd', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], seq .. ' ' .. ARGV[1])
return seq
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

# KEYS: what to keep. ARGV: TTL (ms).
_KEEP = """
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[1]) end
return 0
"""
# How many sessions' GET streams one `_KEEP` renews (four keys each): a script runs alone in
# Redis, so a long one would hold up every other client.
KEEP_BATCH = 250

STANDALONE = "g"


class Journal:
    """Appends to and reads the Redis streams of session events."""

    def __init__(self, bus: ClusterBus, replay_limit: int, ttl: float) -> None:
        self.bus = bus
        self.replay_limit = max(1, replay_limit)
        self.ttl_ms = int(max(ttl, 1.0) * 1000)
        # Numbered events waiting for the stream's append in flight, by stream: see `append`.
        self._queued: dict[str, list[tuple[int, bytes, Deferred[int]]]] = {}

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

        Events numbered here (``seq``: a POST stream's, written by this instance only) go to
        Redis in order, one script per stream at a time with what came meanwhile: commands
        take any connection of the pool, and a stream's ids must grow (XADD refuses one
        that does not, and the event would be lost to replay)."""
        stream = self.stream(session_id, key)
        if seq is not None:
            done: Deferred[int] = Deferred()
            queued = self._queued.get(stream)
            if queued is not None:
                queued.append((seq, data, done))
            else:
                self._queued[stream] = []
                self._send(session_id, key, [(seq, data, done)])
            return done
        once_key = self.bus.key("once", session_id, once) if once else ""
        return self.bus.redis.eval(
            _APPEND,
            [stream, stream + ":n", once_key],
            [data, self.replay_limit, self.ttl_ms, self.channel(session_id, key)],
        ).addCallback(int)

    def _send(self, session_id: str, key: str, events: list[tuple[int, bytes, Deferred[int]]]) -> None:
        """Append numbered events of one stream; then those queued meanwhile."""
        stream = self.stream(session_id, key)
        args: list[Any] = [self.replay_limit, self.ttl_ms, self.channel(session_id, key)]
        for seq, data, _done in events:
            args += [seq, data]

        def sent(outcome: Any) -> None:
            queued = self._queued.pop(stream, [])
            if queued:
                self._queued[stream] = []
                self._send(session_id, key, queued)
            for seq, _data, done in events:
                if isinstance(outcome, Failure):
                    done.errback(outcome)
                else:
                    done.callback(seq)

        self.bus.redis.eval(_APPEND_NUMBERED, [stream], args).addBoth(sent)

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

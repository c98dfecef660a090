# -*- test-case-name: tests.test_audit -*-
"""The audit trail: one structured record per tool call, denied call, auth failure and
rate-limit hit, kept in a bounded in-memory buffer, written as a JSON line to the log and, when
the SQL store runs, persisted by `AuditWriter` (``server.audit`` searches it).

Which records reach the log is `AuditTrail.log_calls`: every one, or all but the tool calls that
went well (a log line costs more than serving a trivial tool call; ``--audit-log``). A record
names the key by its name (or short hash), never the key itself.
"""

from __future__ import annotations

import collections
import datetime
import math
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mcpd.interfaces import AUDIT_FIELDS, IAuditLog, StoreUnavailable
from mcpd.observe.logging import Fields, emit
from mcpd.protocol.codec import dumps
from mcpd.tools.api import DEFAULT_TENANT

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from mcpd.protocol.vocabulary import CallRecord

log = Logger(namespace="mcpd.audit")


def entry(
    when: float,
    *,
    key: str | None,
    peer: str,
    transport: str,
    method: str | None,
    tool: str | None,
    outcome: str,
    duration: float,
    request_id: Any,
    x_request_id: str | None,
    tenant: str = DEFAULT_TENANT,
) -> dict[str, Any]:
    """One audit record, the only place its fields are laid out."""
    return {
        "time": round(when, 6),
        "tenant": tenant,
        "key": key,
        "peer": peer,
        "transport": transport,
        "method": method,
        "tool": tool,
        "outcome": outcome,
        "duration": round(duration, 6),
        "request_id": request_id,
        "x_request_id": x_request_id,
    }


def call_record(when: float, call: CallRecord) -> tuple[Any, ...]:
    """The audit record of an engine `CallRecord` as the `AUDIT_FIELDS` tuple `IAuditLog.append`
    takes; its key is none for a key-less caller ("anonymous", no scopes).

    `AuditTrail` keeps a tool call so (and the writer's queue too), as plain values rather than
    the call and its caller: held until written, those kept the collector busy (a queue longer
    than the trail grew the young generation by three objects a call; at 7,000 calls/s a
    collection every 700/3 calls, issue 15's p99), where a tuple of atoms leaves the collector's
    lists at its first collection (bench/audit_rows.py: 100 collections in 35,000 calls, now 10)."""
    request_id, method, tool, caller, _version, outcome, duration = call
    name = caller.name
    return (
        caller.tenant,
        when,
        name if name != "anonymous" or caller.scopes else None,
        caller.peer,
        caller.transport,
        method,
        tool,
        outcome,
        duration,
        request_id,
        caller.x_request_id,
        None,
    )


def call_entry(when: float, call: CallRecord) -> dict[str, Any]:
    """The audit record of an engine `CallRecord`, as a dict."""
    return record_entry(call_record(when, call))


def record_entry(record: tuple[Any, ...]) -> dict[str, Any]:
    """A record as its `AUDIT_FIELDS` tuple (a tool call's, `call_record`), as a dict; its
    detail only when it has one."""
    tenant, when, key, peer, transport, method, tool, outcome, duration, request_id, x_request_id, detail = record
    made = entry(
        when,
        key=key,
        peer=peer,
        transport=transport,
        method=method,
        tool=tool,
        outcome=outcome,
        duration=duration,
        request_id=request_id,
        x_request_id=x_request_id,
        tenant=tenant,
    )
    if detail is not None:
        made["detail"] = detail
    return made


def call_text(when: float, call: CallRecord) -> str:
    """`call_entry`'s record as JSON text, written directly: the C encoder's walk of a new dict
    and the float repr of two rounded numbers were most of an audit line, and a keyed server
    logs one with every tool call (issue 15). The same JSON `dumps` makes (the numbers in fixed
    notation: ``0.00001``, where `dumps` writes ``1e-05``); values of types a record does not
    usually hold, and non-ASCII text (for `dumps` to check for lone surrogates), take `dumps`'s
    path. The fields from tenant to outcome repeat from call to call (one client, one tool):
    their text is kept (`_middle`)."""
    caller = call.caller
    name: str | None = caller.name
    if name == "anonymous" and not caller.scopes:
        name = None  # as `call_record` has it
    request_id = call.request_id
    duration = call.duration
    x_request_id = caller.x_request_id
    kind = type(request_id)
    # Finite numbers only (NaN fails every comparison); anything but a number raises TypeError.
    try:
        if not (-1e15 < when < 1e15 and -1e15 < duration < 1e15):
            return dumps(call_entry(when, call))
        group = (caller.tenant, name, caller.peer, caller.transport, call.method, call.tool, call.outcome)
        middle = _middles.get(group)
        if middle is None:
            middle = _middle(group)
            if middle is None:
                return dumps(call_entry(when, call))
        text = (
            f'{{"time":{_fixed6(when)},{middle},"duration":{_fixed6(duration)},"request_id":'
            f"{encode_basestring(request_id) if kind is str else request_id if kind is int else dumps(request_id)},"
            f'"x_request_id":{"null" if x_request_id is None else encode_basestring(x_request_id)}}}'
        )
    except TypeError:  # a value that is not text where text was expected
        return dumps(call_entry(when, call))
    return text if text.isascii() else dumps(call_entry(when, call))


# `call_text`'s middle fields by their values; emptied when it holds `_MIDDLES` (a middle is
# made again for a few hundred instructions).
_middles: dict[tuple[Any, ...], str] = {}
_MIDDLES = 4096


def _middle(group: tuple[Any, ...]) -> str | None:
    """The JSON text of a record's fields from tenant to outcome, kept in `_middles`; None if
    it is not ASCII (for `dumps` to write). Raises TypeError for a value that is not text."""
    tenant, name, peer, transport, method, tool, outcome = group
    middle = (
        f'"tenant":{encode_basestring(tenant)},"key":{"null" if name is None else encode_basestring(name)},'
        f'"peer":{encode_basestring(peer)},"transport":{encode_basestring(transport)},'
        f'"method":{encode_basestring(method)},"tool":{"null" if tool is None else encode_basestring(tool)},'
        f'"outcome":{encode_basestring(outcome)}'
    )
    if not middle.isascii():
        return None
    if len(_middles) >= _MIDDLES:
        _middles.clear()
    _middles[group] = middle
    return middle


def _fixed6(number: float) -> str:
    """``round(number, 6)`` as JSON: six decimals, trailing zeros dropped. One correctly rounded
    conversion, where ``repr(round(number, 6))`` makes two (a third of the line's cost)."""
    text = f"{number:.6f}".rstrip("0")
    return text + "0" if text[-1] == "." else text


class CallFields(Fields):
    """A tool call's audit record as a logged field (`Fields`): its JSON text made by
    `call_text` for a text log, its dict made only for a JSON log, which spreads its fields."""

    __slots__ = ("when", "call", "_fields")

    def __init__(self, when: float, call: CallRecord) -> None:
        self.when = when
        self.call = call
        self._fields: dict[str, Any] | None = None

    @property
    def fields(self) -> dict[str, Any]:  # type: ignore[override]  # made when first read
        if self._fields is None:
            self._fields = call_entry(self.when, self.call)
        return self._fields

    def __str__(self) -> str:
        return call_text(self.when, self.call)

    def __format__(self, spec: str) -> str:
        return call_text(self.when, self.call)


class AuditTrail:
    """The audit records of this process: the newest ``size`` in memory."""

    def __init__(
        self,
        size: int = 1000,
        clock: Callable[[], float] = time.time,
        emit: bool = True,
        log_calls: bool = True,
        persist: Callable[[Any], None] | None = None,
    ) -> None:
        # A tool call's record as the tuple `IAuditLog.append` takes (`call_record`), made
        # into a dict only when read; other records as dicts.
        self._records: collections.deque[Any] = collections.deque(maxlen=size)
        self.clock = clock
        self.emit = emit
        self.log_calls = log_calls
        # Hands every record (a dict, or a tool call's `AUDIT_FIELDS` tuple) to the writer
        # that persists them (`AuditWriter.add`), if any.
        self.persist = persist

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for record in list(self._records):
            yield record if isinstance(record, dict) else record_entry(record)

    def __len__(self) -> int:
        return len(self._records)

    def record(
        self,
        *,
        outcome: str,
        key: str | None,
        peer: str,
        transport: str,
        method: str | None = None,
        tool: str | None = None,
        duration: float = 0.0,
        request_id: Any = None,
        detail: str | None = None,
        x_request_id: str | None = None,
        tenant: str = DEFAULT_TENANT,
        logged: bool = True,
    ) -> dict[str, Any]:
        """Add one record (a refusal, say) and log it as a JSON line (unless not ``logged``:
        the gate bounds one client's refusal lines)."""
        when = self.clock()
        record = record_entry(
            (tenant, when, key, peer, transport, method, tool, outcome, duration, request_id, x_request_id, detail)
        )
        self._records.append(record)
        if self.persist is not None:
            self.persist(record)
        if self.emit and logged:
            log.info("audit {audit}", audit=Fields(record))
        return record

    def observe(self, call: CallRecord) -> None:
        """An `Engine` observer: audits every tool call, and every request denied or refused
        for its rate limit."""
        outcome = call.outcome
        if call.method != "tools/call" and outcome not in ("denied", "rate_limited"):
            return
        when = self.clock()
        record = call_record(when, call)  # plain values, not the call (see there)
        self._records.append(record)
        if self.persist is not None:
            self.persist(record)
        if self.emit and (self.log_calls or outcome != "ok"):
            emit(log, LogLevel.info, "audit {audit}", audit=CallFields(when, call))


def fields(item: Any) -> tuple[Any, ...]:
    """What `AuditTrail` holds (a dict, or a tool call's tuple) as the `AUDIT_FIELDS` tuple
    `IAuditLog.append` takes."""
    if type(item) is tuple:
        return item
    return tuple(item.get(name) for name in AUDIT_FIELDS)


class AuditWriter(Service):
    """Persists the audit trail to an `IAuditLog`, off the hot path.

    `add` only appends to a queue; every ``interval`` seconds what is queued is written in
    batches of ``batch`` (one transaction each, the rows made in the store's thread). While the database is
    unavailable the records stay queued and are written when it returns; past ``backlog`` queued
    records the oldest are dropped, counted and logged, never silently. Every ``prune_interval``
    seconds records older than ``retention_days`` are deleted (0: kept forever). On shutdown the
    queue is flushed once more.
    """

    def __init__(
        self,
        store: IAuditLog,
        clock: IReactorTime,
        *,
        retention_days: int,
        interval: float = 0.25,
        batch: int = 2000,
        backlog: int = 100_000,
        prune_interval: float = 3600.0,
        prune_batch: int = 5000,
    ) -> None:
        self.store = store
        self.clock = clock
        self.retention_days = retention_days
        self.interval = interval
        self.batch = batch
        self.backlog = backlog
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self.queue: collections.deque[Any] = collections.deque()
        self.written = 0
        self.dropped = 0
        self.pruned = 0
        self.held = False  # the last write failed: records wait for the database
        self._flushing: Deferred[None] | None = None
        self._loops: list[LoopingCall] = []

    def add(self, item: Any) -> None:
        """Queue one record (`AuditTrail.persist`); called on every audited request."""
        queue = self.queue
        queue.append(item)
        if len(queue) > self.backlog:
            self._drop(len(queue) - self.backlog)

    def _requeue(self, items: list[Any]) -> None:
        """Put ``items`` back at the front, in order; the oldest go first if that overflows."""
        self.queue.extendleft(reversed(items))
        if len(self.queue) > self.backlog:
            self._drop(len(self.queue) - self.backlog)

    def _drop(self, count: int) -> None:
        for _ in range(count):
            self.queue.popleft()
        if not self.dropped:
            log.error(
                "Audit records are being dropped: more than {backlog} wait for the database "
                "(counted in mcp_audit_dropped_total)",
                backlog=self.backlog,
            )
        self.dropped += count

    # -- life -----------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        loops: list[tuple[Callable[[], Deferred[Any]], float, bool]] = [(self.flush, self.interval, False)]
        if self.retention_days > 0:
            loops.append((self.prune, self.prune_interval, True))
        for work, interval, now in loops:
            loop = LoopingCall(work)
            loop.clock = self.clock
            loop.start(interval, now=now).addErrback(lambda f: log.failure("Audit trail loop failed", f))
            self._loops.append(loop)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        d = self.flush(drain=True)

        def report(_: Any) -> None:
            if self.queue:
                log.error(
                    "{count} audit record(s) could not be written before shutdown (the database is unavailable)",
                    count=len(self.queue),
                )

        return d.addCallback(report)

    # -- work -----------------------------------------------------------------------------------

    def flush(self, drain: bool = False) -> Deferred[None]:
        """Write what is queued, a batch at a time; fires when done (or held back by an
        outage). One flush runs at a time.

        Records queued while the flush writes wait for the next one, unless ``drain`` (at
        shutdown): chasing them made a busy daemon commit a train of ever smaller batches
        after every large one (~50 transactions a second at 7,000 calls/s), which doubled
        the writer thread's CPU per record."""
        if self._flushing is not None:
            if not drain:
                return self._flushing
            drained: Deferred[None] = Deferred()

            def then(result: Any) -> Any:  # once the running flush is done
                self.flush(drain=True).chainDeferred(drained)
                return result

            self._flushing.addBoth(then)
            return drained
        done: Deferred[None] = Deferred()
        self._flushing = done
        # Records this flush takes from the queue, at most (re-queued ones are not counted twice).
        left: float = math.inf if drain else len(self.queue)

        def finish(_: Any = None) -> None:
            self._flushing = None
            done.callback(None)

        def next_batch(_: Any = None) -> None:
            nonlocal left
            if not self.queue or left <= 0:
                finish()
                return
            count = int(min(self.batch, len(self.queue), left))
            left -= count
            items = [self.queue.popleft() for _ in range(count)]
            d = self.store.append(map(fields, items))
            d.addCallbacks(written, failed, callbackArgs=(items,), errbackArgs=(items,))

        def written(count: int, items: list[Any]) -> None:
            nonlocal left
            self.written += count
            if count < len(items):
                # The store stopped early to let another write go first: the rest goes first
                # again, in this flush.
                self._requeue(items[count:])
                left += len(items) - count
            if self.held:
                self.held = False
                log.info("The audit trail reaches the database again; queued records are being written")
            next_batch()

        def failed(failure: Failure, items: list[Any]) -> None:
            if failure.check(StoreUnavailable):
                self._requeue(items)
                if not self.held:
                    self.held = True
                    log.warn(
                        "Audit records are kept in memory until the database returns ({count} queued): {why}",
                        count=len(self.queue),
                        why=failure.value,
                    )
                finish()
                return
            if len(items) > 1:
                # One record the database refuses must not cost the batch: each on its own.
                log.warn(
                    "A batch of {count} audit records was refused ({why}); writing them one at a time",
                    count=len(items),
                    why=failure.value,
                )
                singly(items)
                return
            self.dropped += len(items)
            log.failure("{count} audit record(s) could not be written and are lost", failure, count=len(items))
            next_batch()

        def singly(items: list[Any]) -> None:
            if not items:
                next_batch()
                return
            d = self.store.append(map(fields, items[:1]))
            d.addCallbacks(wrote_one, alone, callbackArgs=(items,), errbackArgs=(items,))

        def wrote_one(count: int, items: list[Any]) -> None:
            self.written += count
            singly(items[1:])

        def alone(failure: Failure, items: list[Any]) -> None:
            if failure.check(StoreUnavailable):
                failed(failure, items)  # held back, in order, until the database returns
                return
            self.dropped += 1
            log.failure("An audit record could not be written and is lost", failure)
            singly(items[1:])

        next_batch()
        return done

    def prune(self) -> Deferred[None]:
        """Delete the records older than the retention, a batch per transaction."""
        cutoff = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(days=self.retention_days)
        done: Deferred[None] = Deferred()

        def more(count: int) -> None:
            self.pruned += count
            if count >= self.prune_batch and self.running:
                self.store.prune(cutoff, self.prune_batch).addCallbacks(more, failed)
            else:
                done.callback(None)

        def failed(failure: Failure) -> None:
            if not failure.check(StoreUnavailable):
                log.failure("Pruning the audit trail failed", failure)
            done.callback(None)  # the next round tries again

        self.store.prune(cutoff, self.prune_batch).addCallbacks(more, failed)
        return done

    # -- metrics --------------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        """The writer's series, read at scrape time (a prometheus-client collector)."""
        # Imported here: a --stdio daemon runs the writer but no /metrics.
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "mcp_audit_queued", "Audit records waiting to be written to the database.", len(self.queue)
        )
        for name, value, what in (
            ("mcp_audit_written", self.written, "Audit records written to the database."),
            ("mcp_audit_dropped", self.dropped, "Audit records lost: the queue overflowed, or a write failed."),
            ("mcp_audit_pruned", self.pruned, "Audit records deleted for being older than --audit-retention."),
        ):
            yield CounterMetricFamily(name, what, value)

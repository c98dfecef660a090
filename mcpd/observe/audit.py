# -*- test-case-name: tests.test_audit -*-
"""The audit trail: one structured record per tool call, denied call, auth failure and
rate-limit hit, kept in a bounded in-memory buffer (a later issue persists it to the database)
and written as a JSON line to the log.

Which records reach the log is `AuditTrail.log_calls`: every one, or all but the tool calls that
went well (a log line costs more than serving a trivial tool call; ``--audit-log``). A record
names the key by its name (or short hash), never the key itself.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel

from mcpd.observe.logging import Fields, emit

if TYPE_CHECKING:
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
) -> dict[str, Any]:
    """One audit record, the only place its fields are laid out."""
    return {
        "time": round(when, 6),
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


def call_entry(when: float, call: CallRecord) -> dict[str, Any]:
    """The audit record of an engine `CallRecord`."""
    caller = call.caller
    return entry(
        when,
        key=caller.name if caller.name != "anonymous" or caller.scopes else None,
        peer=caller.peer,
        transport=caller.transport,
        method=call.method,
        tool=call.tool,
        outcome=call.outcome,
        duration=call.duration,
        request_id=call.request_id,
        x_request_id=caller.x_request_id,
    )


class AuditTrail:
    """The audit records of this process: the newest ``size`` in memory."""

    def __init__(
        self,
        size: int = 1000,
        clock: Callable[[], float] = time.time,
        emit: bool = True,
        log_calls: bool = True,
    ) -> None:
        # (time, CallRecord) pairs from the engine, made into dicts only when read; dicts otherwise.
        self._records: collections.deque[Any] = collections.deque(maxlen=size)
        self.clock = clock
        self.emit = emit
        self.log_calls = log_calls

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for record in list(self._records):
            yield record if isinstance(record, dict) else call_entry(*record)

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
    ) -> dict[str, Any]:
        """Add one record (a refusal, say) and log it as a JSON line."""
        record = entry(
            self.clock(),
            key=key,
            peer=peer,
            transport=transport,
            method=method,
            tool=tool,
            outcome=outcome,
            duration=duration,
            request_id=request_id,
            x_request_id=x_request_id,
        )
        if detail is not None:
            record["detail"] = detail
        self._records.append(record)
        if self.emit:
            log.info("audit {audit}", audit=Fields(record))
        return record

    def observe(self, call: CallRecord) -> None:
        """An `Engine` observer: audits every tool call, and every request denied or refused
        for its rate limit."""
        if call.method != "tools/call" and call.outcome not in ("denied", "rate_limited"):
            return
        pair = (self.clock(), call)
        self._records.append(pair)
        if self.emit and (self.log_calls or call.outcome != "ok"):
            emit(log, LogLevel.info, "audit {audit}", audit=Fields(call_entry(*pair)))

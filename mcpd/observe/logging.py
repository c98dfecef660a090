# -*- test-case-name: tests.test_logging -*-
"""Where mcpd's twisted.logger events go, and in what form: ``--log-format text|json`` and
``--logfile``.

JSON lines carry the event's own fields at the top level (``x_request_id``, ``key``, ``peer``,
``method``, ``tool``, ``duration``, ``outcome`` …) beside ``time``, ``level``, ``namespace`` and
the formatted ``message``; an audit record (`Fields`) is spread into the line rather than nested.
In stdio mode the log never goes to stdout, which carries MCP.
"""

from __future__ import annotations

import datetime
import json
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    formatEvent,
    formatEventAsClassicLogText,
)
from zope.interface import implementer

FORMATS = ("text", "json")
# Keys of legacy (twisted.python.log) events and of the logger's own bookkeeping.
_SKIPPED = frozenset({"format", "message", "system", "isError", "time", "why", "failure"})
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


class Fields(Mapping[str, Any]):
    """A record logged as one field: JSON text in a text log, its fields spread in a JSON line.

    The JSON text is made only if a text observer asks for it."""

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __iter__(self) -> Any:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __str__(self) -> str:
        return _dumps(dict(self.fields))

    def __format__(self, spec: str) -> str:
        return str(self)


def json_line(event: Mapping[str, Any]) -> str:
    """One event as one JSON line (with its newline)."""
    when = event.get("log_time")
    line: dict[str, Any] = {
        "time": datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")
        if when is not None
        else None,
        "level": getattr(event.get("log_level"), "name", None),
        "namespace": event.get("log_namespace"),
        "message": formatEvent(dict(event)),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in _SKIPPED:
            continue
        if isinstance(value, Fields):
            line.update(value.fields)
        elif value is None or isinstance(value, (str, int, float, bool)):
            line[name] = value
        else:
            line[name] = str(value)
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return _dumps(line) + "\n"


def text_line(event: Mapping[str, Any]) -> str | None:
    """Twisted's classic text form (what ``twistd`` writes)."""
    return formatEventAsClassicLogText(dict(event))


@implementer(ILogObserver)
class FlushingObserver:
    """A file observer that flushes after every event, so nothing is lost at exit."""

    def __init__(self, stream: IO[str], log_format: str = "text") -> None:
        self.stream = stream
        self._observer = FileLogObserver(stream, json_line if log_format == "json" else text_line)

    def __call__(self, event: Mapping[str, Any]) -> None:
        self._observer(event)  # type: ignore[arg-type]
        self.stream.flush()


class LogSettings:
    """What ``--log-format`` and ``--logfile`` asked for (set once, while options are parsed)."""

    log_format = "text"
    logfile: str | None = None
    stdio = False

    def stream(self) -> IO[str]:
        if self.logfile:
            return open(self.logfile, "a", encoding="utf-8")  # noqa: SIM115 -- open for the process's life
        return sys.__stderr__ if self.stdio else sys.__stdout__  # type: ignore[return-value]


configured = LogSettings()


def configure(log_format: str, logfile: str | None, stdio: bool) -> None:
    """Remember the log settings; `observer` builds from them."""
    configured.log_format = log_format
    configured.logfile = logfile
    configured.stdio = stdio


def observer() -> FlushingObserver:
    """twistd's ``--logger``: an observer as configured."""
    return FlushingObserver(configured.stream(), configured.log_format)


def stderr_default_observer() -> FlushingObserver:
    """For the ``mcpd`` command: as configured, but stderr rather than stdout by default."""
    stream = configured.stream() if configured.logfile else sys.__stderr__
    return FlushingObserver(stream, configured.log_format)  # type: ignore[arg-type]

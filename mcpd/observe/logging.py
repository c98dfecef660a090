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
import functools
import sys
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, formatEvent, formatEventAsClassicLogText, formatTime

from mcpd.protocol.codec import dumps

FORMATS = ("text", "json")
# Keys of legacy (twisted.python.log) events and of the logger's own bookkeeping.
_SKIPPED = frozenset({"format", "message", "system", "isError", "time", "why", "failure"})
# Valid JSON whatever an event holds: no NaN, no lone surrogate, other types as text.
_dumps = dumps


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


def file_observer(stream: IO[str], log_format: str = "text") -> FileLogObserver:
    """An observer writing ``log_format`` lines to ``stream`` (flushed after every event by
    Twisted's `FileLogObserver`, so nothing is lost at exit)."""
    if log_format == "json":
        return FileLogObserver(stream, json_line)
    return FileLogObserver(stream, text_line)


def text_line(event: dict[str, Any]) -> str | None:
    """One event as twisted.logger's classic text line (`textFileLogObserver`'s), its time stamp
    formatted once a second rather than once a line: that was a third of an audit line's cost,
    and a keyed server logs one with every tool call."""
    return formatEventAsClassicLogText(event, formatTime=_time_stamp)


def _time_stamp(when: float | None) -> str:
    return "-" if when is None else _second(int(when))


@functools.lru_cache(maxsize=4)
def _second(second: int) -> str:
    # Twisted's RFC 3339 format has whole seconds (and the zone offset, which changes only on a
    # second boundary): the stamp of a second is that of every instant in it.
    return formatTime(second)


class LogSettings:
    """What ``--log-format`` and ``--logfile`` asked for (set once, while options are parsed)."""

    log_format = "text"
    logfile: str | None = None
    stdio = False

    def stream(self, default: IO[str] | None = None) -> IO[str]:
        """The log file, else ``default``, else stderr in stdio mode and stdout otherwise."""
        if self.logfile:
            return open(self.logfile, "a", encoding="utf-8")  # noqa: SIM115 -- open for the process's life
        if default is not None:
            return default
        return sys.__stderr__ if self.stdio else sys.__stdout__  # type: ignore[return-value]


configured = LogSettings()


def configure(log_format: str, logfile: str | None, stdio: bool) -> None:
    """Remember the log settings; `observer` builds from them."""
    configured.log_format = log_format
    configured.logfile = logfile
    configured.stdio = stdio


def observer(default: IO[str] | None = None) -> FileLogObserver:
    """An observer as configured: twistd's ``--logger`` (stdout by default, as twistd does), or
    the ``mcpd`` command's with ``default=sys.__stderr__``."""
    return file_observer(configured.stream(default), configured.log_format)

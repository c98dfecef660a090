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
import string
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.logger import FileLogObserver, Logger, LogLevel, formatEvent, formatEventAsClassicLogText, formatTime

from mcpd.protocol.codec import dumps

FORMATS = ("text", "json")
# Keys of legacy (twisted.python.log) events and of the logger's own bookkeeping.
_SKIPPED = frozenset({"format", "message", "system", "isError", "time", "why", "failure"})
# A JSON line's own keys, which no field of its event replaces.
_LINE = frozenset({"time", "level", "namespace", "message"})
# Valid JSON whatever an event holds: no NaN, no lone surrogate, other types as text.
_dumps = dumps


class Fields(Mapping[str, Any]):
    """A record logged as one field: JSON text in a text log, its fields spread in a JSON line.

    The JSON text is made only if a text observer asks for it."""

    __slots__ = ("fields",)

    def __init__(self, fields: Mapping[str, Any]) -> None:
        self.fields = fields

    def __getitem__(self, name: str) -> Any:
        return self.fields[name]

    def __iter__(self) -> Any:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def __str__(self) -> str:
        fields = self.fields
        return _dumps(fields if type(fields) is dict else dict(fields))

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
        "message": _message(event),
    }
    for name, value in event.items():
        if name.startswith("log_") or name in _SKIPPED:
            continue
        if isinstance(value, Fields):
            # The line's own keys stay its own: a field of the record named like one is spread
            # under the event's name for it (an audit record's float "time", "audit_time"),
            # where it had replaced the line's ISO time.
            for field, field_value in value.fields.items():
                line[field if field not in _LINE else f"{name}_{field}"] = field_value
        elif name in _LINE:
            continue
        elif value is None or isinstance(value, (str, int, float, bool)):
            line[name] = value
        else:
            line[name] = str(value)
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    return _dumps(line) + "\n"


def file_observer(stream: IO[str], log_format: str = "text") -> FileLogObserver:
    """An observer writing ``log_format`` lines to ``stream``, flushed after every event
    (Twisted's `FileLogObserver`), so that nothing waits in memory: a line is in the file before
    the event's caller goes on, whatever stops the process next."""
    return FileLogObserver(stream, json_line if log_format == "json" else text_line)


def text_line(event: dict[str, Any]) -> str | None:
    """One event as twisted.logger's classic text line (`textFileLogObserver`'s), byte for byte,
    made for less: the line's head (time stamp, namespace and level) made once a second per
    namespace and level rather than once a line (a keyed server logs an audit line with every
    tool call), and a message whose format holds only plain ``{name}`` fields filled in without
    twisted.logger's general formatter."""
    if "log_system" in event or "log_failure" in event:
        return formatEventAsClassicLogText(event, formatTime=_time_stamp)
    message = _plain_message(event)
    if message is None:
        return formatEventAsClassicLogText(event, formatTime=_time_stamp)
    if not message:
        return None
    when = event.get("log_time")
    namespace = event.get("log_namespace", "-")
    level = event.get("log_level")
    if when is not None and type(namespace) is str:
        line = _head(int(when), namespace, level) + message
    else:
        line = f"{_time_stamp(when)} [{namespace}#{'-' if level is None else level.name}] {message}"
    return (line.replace("\n", "\n\t") if "\n" in line else line) + "\n"


@functools.lru_cache(maxsize=64)
def _head(second: int, namespace: str, level: LogLevel | None) -> str:
    """A text line's head up to its message, for every instant in ``second``."""
    return f"{_second(second)} [{namespace}#{'-' if level is None else level.name}] "


def _message(event: Mapping[str, Any]) -> str:
    """`formatEvent`'s text of an event."""
    message = _plain_message(event)
    return formatEvent(dict(event)) if message is None else message


def _plain_message(event: Mapping[str, Any]) -> str | None:
    """The event's message as `formatEvent` makes it, if its format is text with only plain
    ``{name}`` fields, all present (each is ``format(value, "")``, as `str.format` does); None
    otherwise, for `formatEvent` to make (or to say why it cannot)."""
    if "log_flattened" in event:
        return None
    fmt = event.get("log_format")
    if fmt is None:
        return ""
    if type(fmt) is not str or not _plain_fields(fmt):
        return None
    try:
        return fmt.format_map(event)  # plain fields: each is ``format(event[name], "")``
    except Exception:
        return None


@functools.lru_cache(maxsize=256)
def _plain_fields(fmt: str) -> bool:
    """Whether a format's fields are all plain names: no conversion, spec, index, attribute or
    call (and the format is well formed)."""
    try:
        for _literal, name, spec, conversion in string.Formatter().parse(fmt):
            if name is not None and (spec or conversion or not name.isidentifier()):
                return False
    except ValueError:
        return False
    return True


def emit(logger: Logger, level: LogLevel, fmt: str, **fields: Any) -> None:
    """`Logger.emit`'s event, sent to the same observer, without checking that ``level`` is one
    (twisted.logger sorts the levels to check it, with every event): for lines logged per call."""
    fields["log_logger"] = logger  # item by item: an update(**) makes another dict first
    fields["log_level"] = level
    fields["log_namespace"] = logger.namespace
    fields["log_source"] = logger.source
    fields["log_format"] = fmt
    fields["log_time"] = time.time()
    logger.observer(fields)


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

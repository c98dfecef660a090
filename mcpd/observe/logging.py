# -*- test-case-name: tests.test_logging -*-
"""Where mcpd's twisted.logger events go, and in what form: ``--log-format text|json`` and
``--logfile``.

JSON lines carry the event's own fields at the top level (``x_request_id``, ``key``, ``peer``,
``method``, ``tool``, ``duration``, ``outcome`` …) beside ``time``, ``level``, ``namespace`` and
the formatted ``message``; an audit record (`Fields`) is spread into the line rather than nested.
In stdio mode the log never goes to stdout, which carries MCP.
"""

from __future__ import annotations

import atexit
import datetime
import functools
import string
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python import threadable
from twisted.python.compat import ioType
from zope.interface import implementer

from mcpd.protocol.codec import dumps

FORMATS = ("text", "json")
# Keys of legacy (twisted.python.log) events and of the logger's own bookkeeping.
_SKIPPED = frozenset({"format", "message", "system", "isError", "time", "why", "failure"})
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
    """An observer writing ``log_format`` lines to ``stream``, flushed after every event
    (Twisted's `FileLogObserver`); the daemon's own is a `LineObserver`."""
    return FileLogObserver(stream, json_line if log_format == "json" else text_line)


# The levels whose lines may wait a few milliseconds to be written (`LineObserver`).
_INFO, _DEBUG = LogLevel.info, LogLevel.debug


@implementer(ILogObserver)
class LineObserver:
    """The daemon's log observer: ``log_format`` lines written to ``stream``, several in one
    write when they come close together.

    A keyed server logs an audit line with every tool call, and a write system call per line was
    two fifths of its cost (issue 15). So while the reactor runs, an info or debug line that
    comes less than ``delay`` seconds after the last write waits in memory, for at most
    ``delay`` seconds, and goes with the others in one write; a line after a quiet spell is
    written at once, as is a warning, an error or a critical event (with the lines before it),
    so a crash loses at most ``delay`` seconds of info lines. Before the reactor runs and once it
    has stopped every line is written at once; what waits is written when the reactor shuts down
    and at exit. Lines may come from any thread.

    The reactor is looked up when a line waits, never imported here: ``mcpd --stdio`` installs
    its own (`mcpd.cli.install_stdio_reactor`) after this module is imported."""

    def __init__(self, stream: IO[Any], format_event: Callable[[Any], str | None], delay: float = 0.005) -> None:
        self.stream = stream
        self.format_event = format_event
        self.delay = delay
        self._text = ioType(stream) is str
        self._lines: list[str] = []
        self._due = False  # a flush is scheduled
        self._written = 0.0  # when the last write was
        self._lock = threading.Lock()  # one flush writes at a time, in order
        self._triggered = False  # the shutdown trigger is added
        atexit.register(self.flush)

    def __call__(self, event: Any) -> None:
        text = self.format_event(event)
        if not text:
            return
        self._lines.append(text)
        level = event.get("log_level")
        if level is not _INFO and level is not _DEBUG:
            self.flush()
        elif not self._due:
            when = event.get("log_time")
            if type(when) is not float:
                self.flush()
            elif when - self._written >= self.delay:
                self.flush(when)
            else:
                self._schedule()

    def _schedule(self) -> None:
        """A flush in ``delay`` seconds, or now when the reactor does not run."""
        reactor: Any = sys.modules.get("twisted.internet.reactor")
        if reactor is None or not reactor.running:
            self.flush()
            return
        self._due = True
        if threadable.isInIOThread():
            if not self._triggered:
                self._triggered = True
                reactor.addSystemEventTrigger("after", "shutdown", self.flush)
            reactor.callLater(self.delay, self._flush_due)
        else:
            reactor.callFromThread(reactor.callLater, self.delay, self._flush_due)

    def _flush_due(self) -> None:
        # Cleared before the lines are taken: a line added after this is either taken by this
        # flush or sees none due and schedules one.
        self._due = False
        self.flush()

    def flush(self, now: float | None = None) -> None:
        """Write every line that waits, in one write (``now``: the time, if known)."""
        with self._lock:
            lines = self._lines
            count = len(lines)
            if not count:
                return
            text = lines[0] if count == 1 else "".join(lines[:count])
            del lines[:count]  # other threads only append
            self.stream.write(text if self._text else text.encode("utf-8"))
            self.stream.flush()
            self._written = time.time() if now is None else now


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


def observer(default: IO[str] | None = None) -> LineObserver:
    """An observer as configured: twistd's ``--logger`` (stdout by default, as twistd does), or
    the ``mcpd`` command's with ``default=sys.__stderr__``."""
    return LineObserver(configured.stream(default), json_line if configured.log_format == "json" else text_line)

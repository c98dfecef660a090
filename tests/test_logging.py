"""Tests for `mcpd.observe.logging`."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mcpd.observe import logging as mcpd_logging
from mcpd.observe.logging import Fields, file_observer, json_line


class JSONLineTests(SynchronousTestCase):
    def event(self, **fields: object) -> dict[str, object]:
        return {
            "log_time": 0.0,
            "log_level": LogLevel.info,
            "log_namespace": "mcpd.gate",
            "log_format": "Refused {method} from {client}",
            **fields,
        }

    def test_fields_at_the_top_level(self) -> None:
        line = json_line(
            self.event(method="POST", client="10.0.0.1", x_request_id="ab-1", duration=0.5, thing=object())
        )
        self.assertTrue(line.endswith("\n"))
        data = json.loads(line)
        self.assertEqual(data["message"], "Refused POST from 10.0.0.1")
        self.assertEqual(data["level"], "info")
        self.assertEqual(data["namespace"], "mcpd.gate")
        self.assertEqual(data["time"], "1970-01-01T00:00:00.000+00:00")
        self.assertEqual((data["x_request_id"], data["duration"]), ("ab-1", 0.5))
        self.assertIsInstance(data["thing"], str)

    def test_the_lines_own_keys_stay_its_own(self) -> None:
        """A record's "time" (an audit record's float) or an event field named like one of the
        line's keys does not replace the line's ISO time, level, namespace or message; the
        record's is spread under the event's name for it."""
        record = {"time": 1234.5, "tenant": "acme", "outcome": "ok"}
        event = self.event(log_format="audit {audit}", audit=Fields(record), level="debug", namespace="x")
        data = json.loads(json_line(event))
        self.assertEqual(data["time"], "1970-01-01T00:00:00.000+00:00")
        self.assertEqual((data["level"], data["namespace"]), ("info", "mcpd.gate"))
        self.assertEqual((data["tenant"], data["outcome"]), ("acme", "ok"))
        self.assertEqual(data["audit_time"], 1234.5)

    def test_audit_record_spread(self) -> None:
        record = {"key": "alice", "peer": "::1", "method": "tools/call", "tool": "echo", "outcome": "ok"}
        event = self.event(log_format="audit {audit}", audit=Fields(record))
        data = json.loads(json_line(event))
        self.assertEqual({k: data[k] for k in record}, record)
        self.assertNotIn("audit", data)
        # In a text log the record reads as JSON.
        self.assertEqual(json.loads(formatEvent(event)[len("audit ") :]), record)

    def test_lines_are_json_whatever_the_fields_hold(self) -> None:
        """NaN would make the line not JSON, a lone surrogate not UTF-8 (a file name a handler
        decoded with surrogateescape): log shippers would drop or choke on either."""
        line = json_line(self.event(ratio=float("nan"), name="report-\udcff.txt", audit=Fields({"t": float("inf")})))

        def refuse(name: str) -> object:
            raise AssertionError(name)

        data = json.loads(line.encode("utf-8"), parse_constant=refuse)
        self.assertEqual((data["ratio"], data["name"], data["t"]), (None, "report-\ufffd.txt", None))

    def test_failure_traceback(self) -> None:
        try:
            1 / 0  # noqa: B018
        except ZeroDivisionError:
            failure = Failure()
        data = json.loads(json_line(self.event(log_failure=failure)))
        self.assertIn("ZeroDivisionError", data["traceback"])


class ObserverTests(SynchronousTestCase):
    def test_json_observer_writes_lines(self) -> None:
        stream = io.StringIO()
        observer = file_observer(stream, "json")
        log = Logger(namespace="mcpd.test", observer=observer)
        log.info("served {tool}", tool="echo")
        data = json.loads(stream.getvalue())
        self.assertEqual((data["message"], data["tool"]), ("served echo", "echo"))

    def test_text_observer(self) -> None:
        stream = io.StringIO()
        log = Logger(namespace="mcpd.test", observer=file_observer(stream, "text"))
        log.info("served {tool}", tool="echo")
        self.assertIn("[mcpd.test#info] served echo", stream.getvalue())

    def test_logfile_and_stdio(self) -> None:
        path = self.mktemp()
        self.addCleanup(mcpd_logging.configure, "text", None, False)
        mcpd_logging.configure("json", path, True)
        observer = mcpd_logging.observer()
        self.addCleanup(observer._outFile.close)
        Logger(namespace="mcpd.test", observer=observer).info("hello")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(json.loads(f.read())["message"], "hello")
        mcpd_logging.configure("text", None, True)
        import sys

        self.assertIs(mcpd_logging.configured.stream(), sys.__stderr__)


class TextLineTests(SynchronousTestCase):
    def test_lines_are_twisted_classic_text(self) -> None:
        """The text log's lines are exactly twisted.logger's classic ones, though their time
        stamps are formatted once a second."""
        from twisted.logger import formatEventAsClassicLogText

        events = [
            {"log_format": "audit {audit}", "audit": Fields({"tool": "echo"}), "log_time": when}
            for when in (1_700_000_000.25, 1_700_000_000.75, 1_700_000_001.5)
        ]
        events.append({"log_format": "Hello {name!r}", "name": "x", "log_system": "sys", "log_time": 1_700_000_002.0})
        events.append({"log_format": "no time", "log_namespace": "mcpd", "log_level": LogLevel.warn})
        # Formats the plain path fills in, and those it leaves to twisted.logger.
        base = {"log_time": 1_700_000_003.0, "log_namespace": "mcpd.x", "log_level": LogLevel.info}
        for fmt, fields in [
            ("{a} and {b}", {"a": 1, "b": None}),
            ("two\nlines {a}", {"a": "x\ny"}),
            ("{a}", {"a": ""}),
            ("", {}),
            ("{{braces}} {a}", {"a": 2.5}),
            ("{a!r} {b:>4}", {"a": "q", "b": 7}),
            ("{a.real} {b[0]} {c()}", {"a": 1, "b": [2], "c": lambda: 3}),
            ("{missing}", {}),
            ("{}", {}),
            ("unclosed {", {}),
        ]:
            events.append({**base, "log_format": fmt, **fields})
        events.append({**base, "log_format": None})
        events.append({**base, "log_format": "{a}", "a": 1, "log_failure": Failure(ValueError("x"))})
        events.append({k: v for k, v in base.items() if k != "log_level"} | {"log_format": "no level"})
        for event in events:
            self.assertEqual(mcpd_logging.text_line(dict(event)), formatEventAsClassicLogText(dict(event)))
            if "log_failure" not in event:
                self.assertEqual(
                    json.loads(mcpd_logging.json_line(dict(event)))["message"], formatEvent(dict(event)), event
                )

    def test_emit_sends_loggers_event(self) -> None:
        """`emit` sends the observer the event `Logger.emit` would."""
        events: list[dict[str, object]] = []
        logger = Logger(namespace="mcpd.test", observer=events.append)
        logger.info("hello {who}", who="you")
        mcpd_logging.emit(logger, LogLevel.info, "hello {who}", who="you")
        first, second = events
        self.assertLessEqual(first["log_time"], second["log_time"])  # type: ignore[operator]
        first.pop("log_time"), second.pop("log_time")
        self.assertEqual(first, second)

"""Tests for mcpd.tap: option checks and the listener service, in memory."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mcpd import tap
from mcpd.runtime import Runtime
from mcpd.settings import Settings
from mcpd.tools import ToolRegistry


class UnwritableFileTests(SynchronousTestCase):
    def test_trace_and_log_files_are_checked_when_options_are_parsed(self) -> None:
        missing = self.mktemp() + "/no/such/dir/file"
        for flag in ("--trace-file", "--logfile"):
            options = tap.Options()
            error = self.assertRaises(usage.UsageError, options.parseOptions, ["--stdio", flag, missing])
            self.assertEqual(str(error), f"{flag} {missing}: cannot write it (No such file or directory)")


class LateEndpoint:
    """An endpoint whose listen() answers later, counting how often it is asked."""

    def __init__(self) -> None:
        self.listens: list[Deferred[Any]] = []

    def listen(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.listens.append(d)
        return d


class Port:
    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 9999)

    def stopListening(self) -> None:
        pass


class ListenerServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.endpoint = LateEndpoint()
        self.patch(tap.endpoints, "serverFromString", lambda reactor, description: self.endpoint)
        self.service = tap.ListenerService("late:9999", object(), Runtime(Settings(), ToolRegistry()))

    def test_an_endpoint_that_binds_later_is_asked_once(self) -> None:
        self.service.privilegedStartService()
        self.service.startService()
        self.assertEqual(len(self.endpoint.listens), 1)
        self.endpoint.listens[0].callback(Port())
        self.assertEqual(self.service.runtime.listeners, ["http://127.0.0.1:9999/mcp"])
        self.assertIsNone(self.service.failure)

    def test_stopping_before_it_binds_cancels_the_listen(self) -> None:
        self.service.privilegedStartService()
        self.service.startService()
        self.service.stopService()
        self.assertIsNone(self.service.failure)
        self.assertTrue(self.endpoint.listens[0].called)

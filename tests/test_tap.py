"""Tests for mcpd.tap: the options, checked before anything starts."""

from __future__ import annotations

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from mcpd import tap


class UnwritableFileTests(SynchronousTestCase):
    def test_trace_and_log_files_are_checked_when_options_are_parsed(self) -> None:
        missing = self.mktemp() + "/no/such/dir/file"
        for flag in ("--trace-file", "--logfile"):
            options = tap.Options()
            error = self.assertRaises(usage.UsageError, options.parseOptions, ["--stdio", flag, missing])
            self.assertEqual(str(error), f"{flag} {missing}: cannot write it (No such file or directory)")

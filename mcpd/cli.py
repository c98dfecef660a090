# -*- test-case-name: tests.test_tap -*-
"""The ``mcpd`` command: the twistd service without twistd's flags (``mcpd --port 8765``)."""

from __future__ import annotations

import sys

from twisted.logger import globalLogBeginner
from twisted.python import usage

from mcpd.daemon import build_service
from mcpd.observe.logging import observer
from mcpd.services import ListenerService
from mcpd.tap import Options


def main(argv: list[str] | None = None) -> int:
    """Parse the options, run the daemon in the foreground until stopped, return the exit code."""
    options = Options()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        print(f"mcpd: {e}", file=sys.stderr)
        print("mcpd: run 'mcpd --help' for the options", file=sys.stderr)
        return 2
    assert options.settings is not None
    from twisted.internet import reactor

    # Logs go to stderr (or --logfile), never stdout: it belongs to MCP in --stdio mode.
    globalLogBeginner.beginLoggingTo([observer(sys.__stderr__)], redirectStandardIO=False)
    service = build_service(options.settings, reactor, options.packs)
    try:
        # As twistd does: the whole tree starts before the reactor runs, so a service that
        # cannot start stops mcpd here (inside the reactor, the failure would only be logged).
        service.privilegedStartService()
        service.startService()
    except SystemExit as e:
        print(e, file=sys.stderr)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    # A listener that failed after start-up (one binding later) stopped the reactor.
    failed = [child for child in service if isinstance(child, ListenerService) and child.failure is not None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

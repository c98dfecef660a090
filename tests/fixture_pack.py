# -*- test-case-name: tests.test_integration -*-
"""A test-only tool pack: slow, progress-reporting and cancellable tools.

Loaded by the integration tests with ``--tool-pack tests.fixture_pack``; never shipped. Handlers
write what happened to them (``started``, ``cancelled``) as lines ``<event> <tool> <label>`` to
the file named by the environment variable ``MCPD_TEST_EVENTS``, so a test in another process can
see that a cancellation really reached the handler.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from mcpd.tools.api import ToolContext, ToolResult
from mcpd.tools.pack import ToolPack

EVENTS_ENV = "MCPD_TEST_EVENTS"

log = Logger(namespace="tests.fixture_pack")

pack = ToolPack("tests", "Test-only tools for the integration tests.")

_LABEL = {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$", "description": "Names this call in the events file."}


def record(event: str, tool: str, label: str) -> None:
    """Append ``<event> <tool> <label>`` to the events file, if the environment names one."""
    path = os.environ.get(EVENTS_ENV)
    log.info("{event} {tool} {label}", event=event, tool=tool, label=label)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{event} {tool} {label}\n")


@pack.tool(
    "tests.progress",
    description="Report `steps` progress notifications, `delay` seconds apart, then return.",
    input_schema={
        "type": "object",
        "properties": {
            "steps": {"type": "integer", "minimum": 1, "maximum": 100},
            "delay": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["steps"],
        "additionalProperties": False,
    },
)
def progress(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[str]:
    from twisted.internet import reactor

    steps: int = arguments["steps"]
    delay: float = arguments.get("delay", 0.05)

    async def run() -> str:
        for step in range(1, steps + 1):
            await deferLater(reactor, delay)
            ctx.progress(step, steps, f"step {step} of {steps}")
        await deferLater(reactor, delay)
        return f"done after {steps} steps"

    return ensureDeferred(run())


@pack.tool(
    "tests.wait_for_cancel",
    description="Never finish on its own; record the cancellation when the call is cancelled.",
    input_schema={
        "type": "object",
        "properties": {"label": _LABEL},
        "required": ["label"],
        "additionalProperties": False,
    },
)
def wait_for_cancel(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[None]:
    label = arguments["label"]

    def cancelled(_d: Deferred[None]) -> None:
        # The canceller runs when the engine cancels the call; the Deferred then fails
        # with CancelledError on its own.
        record("cancelled", ctx.tool.name, label)

    record("started", ctx.tool.name, label)
    return Deferred(cancelled)


@pack.tool(
    "tests.blocking_wait",
    description=("Block a thread-pool thread until the call is cancelled (recording it) or `timeout` seconds pass."),
    input_schema={
        "type": "object",
        "properties": {"label": _LABEL, "timeout": {"type": "number", "minimum": 0, "maximum": 60}},
        "required": ["label"],
        "additionalProperties": False,
    },
    blocking=True,
)
def blocking_wait(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    label = arguments["label"]
    deadline = time.monotonic() + arguments.get("timeout", 20)
    record("started", ctx.tool.name, label)
    # Poll like a real long loop would, so both ctx.cancelled and ctx.wait_cancelled are used.
    while not ctx.cancelled:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            record("timeout", ctx.tool.name, label)
            return f"not cancelled within {arguments.get('timeout', 20)} seconds"
        ctx.wait_cancelled(min(remaining, 0.1))
    record("cancelled", ctx.tool.name, label)
    raise CancelledError(f"{ctx.tool.name} {label} cancelled")


@pack.tool(
    "tests.ping_client",
    description="Ping the client from the server and say whether it answered.",
)
def ping_client(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[Any]:
    def failed(failure: Any) -> ToolResult:
        return ToolResult.text(f"no ping: {failure.getErrorMessage()}", is_error=True)

    return ctx.ping_client().addCallbacks(lambda result: f"pong {result!r}", failed)


@pack.tool(
    "tests.blob",
    description="Return `size` bytes of text: a large answer to a small request.",
    input_schema={
        "type": "object",
        "properties": {"size": {"type": "integer", "minimum": 0, "maximum": 4 * 1024 * 1024}},
        "required": ["size"],
        "additionalProperties": False,
    },
)
def blob(ctx: ToolContext, arguments: dict[str, Any]) -> str:
    return "x" * arguments["size"]


@pack.tool(
    "tests.progress_then_wait",
    description="Report one progress notification, then never finish; record the cancellation.",
    input_schema={
        "type": "object",
        "properties": {"label": _LABEL},
        "required": ["label"],
        "additionalProperties": False,
    },
)
def progress_then_wait(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[None]:
    label = arguments["label"]
    record("started", ctx.tool.name, label)
    ctx.progress(1, None, "waiting")
    return Deferred(lambda _d: record("cancelled", ctx.tool.name, label))

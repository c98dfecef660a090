# -*- test-case-name: tests.test_cluster -*-
"""A test-only tool pack for the cluster test: each tool says which process served it, so a test
sees its requests spread over the instances.

Loaded with ``--tool-pack tests.cluster_pack``; never shipped.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from mcpd.tools.api import ToolContext
from mcpd.tools.pack import ToolPack
from tests.fixture_pack import record

pack = ToolPack("cluster", "Test-only tools that name the instance serving them.")

_NONE = {"type": "object", "properties": {}, "additionalProperties": False}
_SERVED = {"type": "object", "properties": {"pid": {"type": "integer"}}, "required": ["pid"]}


def _served(**more: Any) -> dict[str, Any]:
    """The structured result: the pid of this process, and ``more``."""
    return {"pid": os.getpid(), **more}


@pack.tool(
    "cluster.where", description="The pid of the process serving this call.", input_schema=_NONE, output_schema=_SERVED
)
def where(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    return _served()


@pack.tool(
    "cluster.announce",
    description="Tell every client that the tool list changed; the pid of the process that did.",
    input_schema=_NONE,
    output_schema=_SERVED,
)
def announce(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    ctx.list_changed("tools")
    return _served()


@pack.tool(
    "cluster.touch",
    description="Tell the clients subscribed to a resource that it changed; the pid of the process that did.",
    input_schema={"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"]},
    output_schema=_SERVED,
)
def touch(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    ctx.resource_updated(arguments["uri"])
    return _served()


@pack.tool(
    "cluster.say",
    description="Log one message at info ('quiet') and one at error ('loud') to the client; the pid.",
    input_schema=_NONE,
    output_schema=_SERVED,
)
def say(ctx: ToolContext, arguments: dict[str, Any]) -> dict[str, Any]:
    ctx.client_log("info", "quiet")
    ctx.client_log("error", "loud")
    return _served()


@pack.tool(
    "cluster.ask",
    description="Ask the user a question (elicitation); the answer and the pid that asked.",
    input_schema={"type": "object", "properties": {"question": {"type": "string"}}, "required": ["question"]},
    output_schema=_SERVED,
)
@inlineCallbacks
def ask(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    answer = yield ctx.elicit(arguments["question"], schema, key="answer")
    return _served(action=answer.get("action"), content=answer.get("content"))


@pack.tool(
    "cluster.confirm",
    description="Ask the user to confirm (as a task when the client can poll: tasks/update answers).",
    input_schema=_NONE,
    output_schema=_SERVED,
    task_support="optional",
)
@inlineCallbacks
def confirm(ctx: ToolContext, arguments: dict[str, Any]) -> Any:
    schema = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}
    answer = yield ctx.elicit("Go on?", schema, key="confirm")
    return _served(action=answer.get("action"), content=answer.get("content"))


@pack.tool(
    "cluster.sleep",
    description="Sleep `seconds`, then answer with the pid (as a task when the client asks).",
    input_schema={
        "type": "object",
        "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 10}},
        "required": ["seconds"],
    },
    output_schema=_SERVED,
    task_support="optional",
)
def sleep(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[dict[str, Any]]:
    from twisted.internet import reactor

    return deferLater(reactor, arguments["seconds"], _served)


@pack.tool(
    "cluster.wait",
    description="Run until cancelled (as a task when the client can poll); records who ran and cancelled it.",
    input_schema={
        "type": "object",
        "properties": {"label": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}},
        "required": ["label"],
    },
    task_support="optional",
)
def wait(ctx: ToolContext, arguments: dict[str, Any]) -> Deferred[None]:
    label = arguments["label"]
    record("started", f"cluster.wait@{os.getpid()}", label)

    def cancelled(_d: Deferred[None]) -> None:
        record("cancelled", f"cluster.wait@{os.getpid()}", label)

    d: Deferred[None] = Deferred(cancelled)
    return d

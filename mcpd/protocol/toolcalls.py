# -*- test-case-name: tests.test_engine,tests.test_tools -*-
"""``tools/list`` and ``tools/call``: which tools a caller sees, and one call from its
arguments to its result (validated arguments, progress, a timeout, tasks, errors a model can
act on)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.interfaces import StoreError
from mcpd.protocol.channel import input_required
from mcpd.protocol.envelope import check_parameter_headers
from mcpd.protocol.errors import InvalidParams, MCPError
from mcpd.protocol.outbound import ClientError, ClientTimeout
from mcpd.protocol.vocabulary import PLAIN_TYPES, is_deferred, valid_id
from mcpd.tools.api import (
    Caller,
    CallLink,
    Tool,
    ToolContext,
    ToolError,
    UnsendableResult,
    as_deferred,
    call_result,
    cancellable,
    error_result,
    hand_off,
    invoke,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.protocol.channel import RequestChannel
    from mcpd.protocol.tasks import TaskManager
    from mcpd.protocol.vocabulary import Exchange, Request
    from mcpd.tools.api import ToolPool
    from mcpd.tools.pack import ToolRegistry

log = Logger(namespace="mcpd.engine")

ProgressSink = Callable[[float, "float | None", "str | None"], None]
Trace = Callable[[str, "Exchange", Any], None]


class ToolCalls:
    """The engine's tools: lists filtered by the caller's scopes, and calls run on the reactor
    or in the thread pool, as tasks when the tool and the client agree."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        tasks: TaskManager,
        clock: IReactorTime,
        open_channel: Callable[[Request], RequestChannel],
        trace: Trace,
        stores: Mapping[Any, Any],
        thread_pool: ToolPool | None = None,
        page_size: int = 100,
        list_ttl_ms: int = 60_000,
        tool_filter: Callable[[Caller, Tool], bool] | None = None,
        tool_timeout: float | None = None,
    ) -> None:
        self.registry = registry
        self.tasks = tasks
        self.clock = clock
        self.open_channel = open_channel
        self.trace = trace
        # What handlers reach through ``ctx.store(IThing)``.
        self.stores = stores
        # How blocking handlers reach the thread pool, decided here once.
        self.hand_off = hand_off(thread_pool)
        self.page_size = page_size
        self.list_ttl_ms = list_ttl_ms
        # Which tools a caller may see and call (the security layer's scopes); None: all.
        self.tool_filter = tool_filter
        # Seconds after which a call is cancelled and answered isError (--tool-timeout).
        self.tool_timeout = tool_timeout

    def list(self, request: Request) -> dict[str, Any]:
        """``tools/list``: one page of the tools the caller may see."""
        cursor = request.params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidParams("Invalid params: cursor must be a string")
        allowed = self.tool_filter
        caller = request.exchange.caller
        try:
            tools, next_cursor = self.registry.page(
                cursor, self.page_size, None if allowed is None else lambda tool: allowed(caller, tool)
            )
        except ValueError:
            raise InvalidParams("Invalid params: unknown cursor; start again without one") from None
        result: dict[str, Any] = {"tools": [tool.descriptor for tool in tools]}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        if request.modern:
            # 2026-07-28 server/tools §Caching: lists carry ttlMs and cacheScope.
            result["ttlMs"] = self.list_ttl_ms
            # A caller-filtered list (API key scopes) must not be shared between callers.
            result["cacheScope"] = "public" if allowed is None else "private"
        return result

    def call(self, request: Request) -> Any:
        """``tools/call``: the result, a Deferred of it, or (a task) its CreateTaskResult."""
        params = request.params
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidParams("Invalid params: tools/call needs a string name")
        tool = self.registry.get(name)
        if tool is not None and self.tool_filter is not None and not self.tool_filter(request.exchange.caller, tool):
            # A tool the caller may not call is answered exactly as an unknown one, and audited.
            request.exchange.denied = True
            tool = None
        if tool is None:
            # 2025-11-25 server/tools §Error Handling: unknown tool is a protocol error.
            raise InvalidParams(f"Unknown tool: {name}. Call tools/list to see the available tools.")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict):
            return error_result(f"Invalid arguments for tool {name}: arguments must be a JSON object")
        headers = request.exchange.headers
        if tool.header_parameters and headers is not None:
            check_parameter_headers(tool.header_parameters, arguments, headers)
        problems = tool.argument_problems(arguments)
        if problems:
            return error_result(f"Invalid arguments for tool {name}: " + "; ".join(problems))
        # Task bookkeeping only for calls that may become tasks (mcpd.protocol.tasks).
        plan = self.tasks.plan(request, tool) if tool.task_support != "forbidden" or "task" in params else None
        token = request.meta.get("progressToken")
        if token is not None and not valid_id(token):
            # basic/utilities/progress (both eras' schema): ProgressToken is a string or an
            # integer; anything else echoed back would make invalid notifications.
            raise InvalidParams("Invalid params: _meta.progressToken must be a string or an integer")
        link = CallLink(
            progress_sink=None if token is None else self._progress_sink(request, token),
            open_channel=functools.partial(self.open_channel, request),
        )
        ctx = ToolContext(
            tool=tool, request_id=request.id, caller=request.exchange.caller, stores=self.stores, link=link
        )
        if "requestState" in params or "inputResponses" in params:
            ctx.channel  # noqa: B018 -- a tampered requestState is refused before the tool runs
        if plan is not None:
            # No --tool-timeout for tasks: they are meant to run long, and end with their TTL.
            return self.tasks.start(request, plan, ctx, ctx.channel, functools.partial(self._run, arguments))
        if tool.blocking:
            d = self._run(arguments, ctx)
        else:
            outcome = self._run_now(arguments, ctx)
            if not is_deferred(outcome):
                return outcome
            d = outcome
        if self.tool_timeout is not None:
            d.addTimeout(self.tool_timeout, self.clock, onTimeoutCancel=functools.partial(self._timed_out, name))
        return d

    def _run(self, arguments: dict[str, Any], ctx: ToolContext) -> Deferred[Any]:
        return self._shaped(invoke(ctx.tool, ctx, arguments, self.hand_off), ctx)

    def _shaped(self, d: Deferred[Any], ctx: ToolContext) -> Deferred[Any]:
        # Errback after callback: output that breaks the tool's outputSchema is a tool failure too.
        return d.addCallback(self._value, ctx).addErrback(self._failure, ctx)

    def _run_now(self, arguments: dict[str, Any], ctx: ToolContext) -> Any:
        """Run a reactor handler. Most answer at once: their result is shaped on the spot, with
        no Deferreds to build and run (they showed in the hot path's profile); a handler that
        answers with a Deferred (or a coroutine) gets a Deferred, as `_run` gives."""
        try:
            value = ctx.tool.handler(ctx, arguments)
        except BaseException:  # as maybeDeferred: whatever a handler raises is its failure
            return self._settled(Failure(), ctx)
        if type(value) not in PLAIN_TYPES and (isinstance(value, (Deferred, Failure)) or inspect.iscoroutine(value)):
            return self._shaped(cancellable(as_deferred(value), ctx), ctx)
        try:
            return self._value(value, ctx)
        except Exception:
            return self._settled(Failure(), ctx)

    def _settled(self, failure: Failure, ctx: ToolContext) -> Any:
        """`_failure` for a handler that failed at once: a result, or a Deferred failing with
        what the engine answers as a protocol error (or not at all: a cancellation)."""
        outcome = self._failure(failure, ctx)
        return fail(outcome) if isinstance(outcome, Failure) else outcome

    @staticmethod
    def _timed_out(name: str, result: Any, timeout: float) -> Any:
        """--tool-timeout: the call was cancelled (its handler told); the client is told why."""
        if isinstance(result, Failure) and result.check(CancelledError):
            log.info("Tool {tool} cancelled after {timeout}s (--tool-timeout)", tool=name, timeout=timeout)
            return error_result(f"Tool {name} timed out after {timeout:g} seconds and was cancelled.")
        return result

    @staticmethod
    def _value(value: Any, ctx: ToolContext) -> dict[str, Any]:
        ctx.link.progress_sink = None  # nothing may follow the result (basic/utilities/progress)
        return call_result(ctx.tool, value)

    @staticmethod
    def _failure(failure: Failure, ctx: ToolContext) -> Any:
        ctx.link.progress_sink = None
        if failure.check(CancelledError) and ctx.cancelled:
            # Only the client's cancellation goes unanswered; a handler's own CancelledError
            # (a timeout inside it, say) is a failure the client must still hear about.
            return failure
        asked = input_required(failure, ctx)
        if asked is not failure:
            return asked  # 2026-07-28 basic §Multi Round-Trip Requests: ask, let the client retry
        if failure.check(MCPError):
            return failure  # a protocol error (say -32021), answered as such
        if failure.check(ToolError, StoreError, ClientError, ClientTimeout):
            # A store's refusal (unknown id, conflict) or outage is the model's to read and act on.
            return error_result(str(failure.value))
        if failure.check(UnsendableResult):
            log.warn("{why} (request {id!r})", why=str(failure.value), id=ctx.request_id)
            return error_result(f"{failure.value}; this is a fault of the tool, not of the call.")
        log.failure("Tool {tool} failed (request {id!r})", failure, tool=ctx.tool.name, id=ctx.request_id)
        return error_result(
            f"Tool {ctx.tool.name} failed unexpectedly; the server log has the details (request id {ctx.request_id!r})."
        )

    def _progress_sink(self, request: Request, token: Any) -> ProgressSink | None:
        """Where the handler's progress goes: notifications for the client's ``progressToken``
        (None where nothing can carry them)."""
        notify = request.exchange.notify
        if notify is None:
            return None
        last: list[float] = []
        exchange = request.exchange
        trace = self.trace

        def sink(progress: float, total: float | None, message: str | None) -> None:
            # 2025-11-25 basic/utilities/progress: the value MUST increase with each notification.
            if last and progress <= last[0]:
                return
            last[:] = [progress]
            params: dict[str, Any] = {"progressToken": token, "progress": progress}
            if total is not None:
                params["total"] = total
            if message is not None:
                params["message"] = message
            note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": params}
            trace("out", exchange, note)
            notify(note)

        return sink

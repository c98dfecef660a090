# -*- test-case-name: tests.test_tools -*-
"""The tool API: how a tool is declared once and how the engine runs it.

A tool is a name, human-facing text, JSON Schemas, annotations and a handler. Handlers receive a
`ToolContext` (who is calling, progress, logging, cancellation) and the validated arguments, and
return a value or a Deferred. A handler declared ``blocking=True`` runs in the daemon's thread pool,
never on the reactor thread.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python import threadable
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread

from mcpd.tools.jsontext import JSONText, write_json
from mcpd.tools.validation import (
    ArgumentValidator,
    HeaderParameter,
    header_parameters,
    json_problem,
    well_formed,
)

if TYPE_CHECKING:
    from typing import Protocol, TypeAlias

    from twisted.python.threadpool import ThreadPool

    class HandOff(Protocol):
        """A pool that takes a call and gives its Deferred (`mcpd.stores.threads.ToolThreads`)."""

        def submit(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]: ...

    # What runs blocking handlers: the daemon's ToolThreads; a pool with Twisted's `ThreadPool`
    # interface does too (`mcpd.testing.SynchronousThreadPool`).
    ToolPool: TypeAlias = HandOff | ThreadPool

# How a blocking handler reaches the thread pool: ``submit(handler, *args)`` gives its Deferred.
Submit = Callable[..., Deferred[Any]]

# 2025-11-25 server/tools §Tool names: 1-128 characters of A-Z a-z 0-9 _ - .
TOOL_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
EMPTY_OBJECT_SCHEMA: Mapping[str, Any] = {"type": "object", "properties": {}}
# Tool options for tasks (mcpd.protocol.tasks): whether calls may be tasks, and when one starts.
TASK_SUPPORT = ("forbidden", "optional", "required")
TASK_START = ("call", "handler")

Handler = Callable[["ToolContext", dict[str, Any]], Any]
DEFAULT_TENANT = "default"
ProgressSink = Callable[[float, "float | None", "str | None"], None]


class ToolError(Exception):
    """Raised by a handler for a failure the model should see and can act on.

    It becomes a result with ``isError: true`` carrying this message (2025-11-25 server/tools
    §Error Handling: tool execution errors are reported in the result, not as protocol errors).
    """


class UnsendableResult(ValueError):
    """A handler returned a value JSON cannot carry (NaN, Infinity, a set, bytes…): the call
    is answered as a tool error saying so, rather than with JSON that is not JSON."""


@attrs.frozen
class Caller:
    """Who is calling: the identity a transport established, never transport objects."""

    name: str = "anonymous"
    scopes: frozenset[str] = frozenset()
    peer: str = ""
    transport: str = ""
    # Whom limits and shares are counted against (`mcpd.protocol.ledger`): ``key:NAME`` for an
    # API key, ``ip:ADDRESS`` without keys, ``local`` for stdio; by default the name.
    account: str = attrs.field(default=attrs.Factory(lambda caller: caller.name, takes_self=True))
    # The X-Request-Id of the HTTP request that carried the call (logs and audit); not identity.
    x_request_id: str | None = attrs.field(default=None, eq=False)
    # Whose records the caller sees (the key file's fourth field); `default` without one.
    tenant: str = DEFAULT_TENANT

    @property
    def author(self) -> str:
        """Who records are created by: the API key's name, or ``local`` without keys (a key
        always has scopes; the stdio user and a keyless HTTP client have none)."""
        return self.name if self.scopes else "local"


@attrs.frozen
class ToolAnnotations:
    """Hints about a tool's behaviour (2025-11-25 server/tools §Tool annotations)."""

    title: str | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    idempotent: bool | None = None
    open_world: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The wire form, with only the hints that were given."""
        pairs = (
            ("title", self.title),
            ("readOnlyHint", self.read_only),
            ("destructiveHint", self.destructive),
            ("idempotentHint", self.idempotent),
            ("openWorldHint", self.open_world),
        )
        return {key: value for key, value in pairs if value is not None}


@attrs.frozen
class ToolResult:
    """A handler's explicit result: content blocks, optional structured content, error flag."""

    content: list[dict[str, Any]] = attrs.field(factory=list)
    structured: Any = None
    is_error: bool = False

    @classmethod
    def text(cls, text: str, *, is_error: bool = False) -> ToolResult:
        """A result holding one text block."""
        return cls(content=[{"type": "text", "text": text}], is_error=is_error)


def _check_name(_instance: object, _attribute: object, name: str) -> None:
    if not TOOL_NAME.match(name):
        raise ValueError(f"tool name {name!r} must be 1-128 characters of A-Z a-z 0-9 . _ -")


def _check_schema(_instance: object, attribute: attrs.Attribute[Any], schema: Any) -> None:
    if schema is None:
        return
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        raise ValueError(f"{attribute.name} must be a JSON Schema object with type 'object'")
    problem = json_problem(schema)
    if problem is not None:
        raise ValueError(f"{attribute.name} is not plain JSON: {problem}")
    if well_formed(schema):
        return  # what jsonschema's check would say, without its cost at every start-up
    from jsonschema import Draft202012Validator, SchemaError  # imported only for other schemas

    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"{attribute.name} is not a valid JSON Schema: {e.message}") from None


@attrs.frozen
class Tool:
    """One tool, declared once."""

    name: str = attrs.field(validator=_check_name)
    description: str
    handler: Handler
    input_schema: Mapping[str, Any] = attrs.field(default=EMPTY_OBJECT_SCHEMA, validator=_check_schema)
    title: str | None = None
    output_schema: Mapping[str, Any] | None = attrs.field(default=None, validator=_check_schema)
    annotations: ToolAnnotations | None = None
    blocking: bool = False
    # Whether calls may run as tasks the client polls (mcpd.protocol.tasks): forbidden,
    # optional or required (2025-11-25 server/tools §execution.taskSupport).
    task_support: str = attrs.field(default="forbidden", validator=attrs.validators.in_(TASK_SUPPORT))
    # When a task call becomes a task: as it arrives ("call"), or when the handler calls
    # ``ctx.start_task()`` after gathering input by multi-round trip ("handler").
    task_start: str = attrs.field(default="call", validator=attrs.validators.in_(TASK_START))
    _input_validator: ArgumentValidator = attrs.field(init=False, repr=False, eq=False)
    header_parameters: tuple[HeaderParameter, ...] = attrs.field(init=False, repr=False, eq=False)
    _output_validator: ArgumentValidator | None = attrs.field(init=False, repr=False, eq=False)
    _descriptor: dict[str, Any] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "_input_validator", ArgumentValidator(self.input_schema))
        set_(self, "header_parameters", header_parameters(self.input_schema))
        set_(
            self,
            "_output_validator",
            ArgumentValidator(self.output_schema) if self.output_schema is not None else None,
        )
        descriptor: dict[str, Any] = {"name": self.name}
        if self.title is not None:
            descriptor["title"] = self.title
        descriptor["description"] = self.description
        descriptor["inputSchema"] = dict(self.input_schema)
        if self.output_schema is not None:
            descriptor["outputSchema"] = dict(self.output_schema)
        if self.annotations is not None:
            descriptor["annotations"] = self.annotations.to_json()
        if self.task_support != "forbidden":
            descriptor["execution"] = {"taskSupport": self.task_support}
        set_(self, "_descriptor", descriptor)

    @property
    def descriptor(self) -> dict[str, Any]:
        """The `Tool` object as tools/list shows it (shared: do not mutate)."""
        return self._descriptor

    def argument_problems(self, arguments: Mapping[str, Any]) -> list[str]:
        """What is wrong with ``arguments`` against the input schema, worded for a model."""
        return self._input_validator.problems(arguments)  # type: ignore[arg-type]

    def output_problems(self, structured: Any) -> list[str]:
        """What is wrong with a handler's structured output against the output schema."""
        if self._output_validator is None:
            return []
        return self._output_validator.problems(structured)


class StoreNotConfigured(ToolError, LookupError):
    """A handler asked its context for a store the daemon does not provide (its pack did not
    declare it in ``needs``, which start-up checks): the call ends as a tool error."""


class CallLink:
    """The engine's side of one call, which the handler's context reads: how to reach the
    client, where progress goes, how the call becomes a task. The engine owns it and changes
    it as the call goes on (a call that became a task talks through the task); pack authors
    never touch it."""

    __slots__ = ("channel", "open_channel", "progress_sink", "start_task", "task_id")

    def __init__(
        self,
        *,
        channel: Any = None,
        open_channel: Callable[[], Any] | None = None,
        progress_sink: ProgressSink | None = None,
    ) -> None:
        # The request's `mcpd.protocol.channel.RequestChannel`, built on first use.
        self.channel = channel
        self.open_channel = open_channel
        self.progress_sink = progress_sink
        # Set while the call may become a task (mcpd.protocol.tasks), and once it has.
        self.start_task: Callable[[], Deferred[bool]] | None = None
        self.task_id: str | None = None


class RequestContext:
    """What a handler (tool, prompt or resource reader) knows about the request it serves, and
    how it talks back to the client: log messages and requests for input, in both eras."""

    log = Logger()

    def __init__(
        self,
        *,
        request_id: Any,
        caller: Caller,
        stores: Mapping[Any, Any] | None = None,
        link: CallLink | None = None,
    ) -> None:
        # ToolContext.__init__ repeats these four lines (one made per tool call): keep both.
        self.request_id = request_id
        self.caller = caller
        self._stores = stores if stores is not None else {}
        self.link = link if link is not None else CallLink()

    def store(self, interface: Any) -> Any:
        """The daemon's provider of ``interface`` (a zope interface of `mcpd.interfaces` the
        handler's pack declared in ``needs``); `StoreNotConfigured` when it has none."""
        provider = self._stores.get(interface)
        if provider is None:
            raise StoreNotConfigured(f"this server provides no {interface.__name__}")
        return provider

    @property
    def channel(self) -> Any:
        """The request's `mcpd.protocol.channel.RequestChannel` (built on first use: most
        handlers never talk back), or None when nothing can reach the client."""
        link = self.link
        channel = link.channel
        if channel is None and link.open_channel is not None:
            channel = link.channel = link.open_channel()
        return channel

    @property
    def tenant(self) -> str:
        """The caller's tenant: the only records a handler may read or write."""
        return self.caller.tenant

    def client_log(self, level: str, data: Any, logger: str | None = None) -> None:
        """Send the client a log message (``notifications/message``) on this request's stream,
        if it asked for messages of this level (2025-11-25 server/utilities/logging)."""
        if self.channel is not None:
            _on_reactor(self.channel.log, level, data, logger)

    def elicit(
        self, message: str, requested_schema: Mapping[str, Any], *, key: str | None = None
    ) -> Deferred[dict[str, Any]]:
        """Ask the user for input; fires with the `ElicitResult` (``action``, ``content``).

        In the modern era the first run of the handler ends here with an InputRequiredResult and
        the client's retry brings the answer under ``key``; give each question its own key. In a
        task the question waits in ``tasks/get`` until ``tasks/update`` answers it. From a
        blocking (thread-pool) handler the call blocks its thread and returns the answer itself.
        """
        params = {"message": message, "requestedSchema": dict(requested_schema)}
        return self._ask("elicitation/create", params, key)

    def sample(
        self, messages: list[dict[str, Any]], max_tokens: int, *, key: str | None = None, **extra: Any
    ) -> Deferred[dict[str, Any]]:
        """Ask the client's model for a completion; fires with the `CreateMessageResult`."""
        params: dict[str, Any] = {"messages": messages, "maxTokens": max_tokens}
        params.update(extra)
        return self._ask("sampling/createMessage", params, key)

    def list_roots(self, *, key: str | None = None) -> Deferred[dict[str, Any]]:
        """Ask the client for its roots; fires with the `ListRootsResult`."""
        return self._ask("roots/list", {}, key)

    def ping_client(self) -> Deferred[dict[str, Any]]:
        """Ping the client (legacy protocol versions): fires with ``{}`` once it answers, fails
        with `mcpd.protocol.outbound.ClientTimeout` when it does not within the client timeout."""
        return self._ask("ping", {}, None)

    def _ask(self, method: str, params: dict[str, Any], key: str | None) -> Any:
        if not isInIOThread() and threadable.ioThread is not None:
            # A blocking (thread-pool) handler: ask on the reactor thread and wait here for the
            # answer, which is returned (or raised) rather than a Deferred.
            from twisted.internet import reactor
            from twisted.internet.threads import blockingCallFromThread

            return blockingCallFromThread(reactor, self._ask, method, params, key)
        if self.channel is None:
            raise ToolError(f"{method} needs a client connection, and this call has none")
        if method == "ping":
            return self.channel.ping()
        return self.channel.ask(method, params, key)

    @property
    def request_state(self) -> Any:
        """Modern era: the state this handler set in the previous round (verified), else None."""
        return self.channel.request_state if self.channel is not None else None

    @request_state.setter
    def request_state(self, state: Any) -> None:
        """Modern era: state to get back, signed and opaque to the client, in the next round."""
        if self.channel is not None:
            self.channel.next_state = state

    @property
    def modern(self) -> bool:
        """Whether the request is stateless (2026-07-28): answers come back in a retry."""
        return bool(self.channel is not None and self.channel.modern)

    def list_changed(self, kind: str) -> None:
        """Tell listening clients that the list of ``kind`` (tools, prompts, resources) changed."""
        if self.channel is not None:
            _on_reactor(self.channel.changes.list_changed, kind)

    def resource_updated(self, uri: str) -> None:
        """Tell the clients subscribed to ``uri`` that it changed: those of the caller's tenant
        only (a record belongs to its tenant)."""
        if self.channel is not None:
            _on_reactor(self.channel.changes.resource_updated, uri, self.tenant)


def _on_reactor(f: Callable[..., Any], *args: Any) -> None:
    """Run ``f`` now on the reactor thread (or where no reactor thread is known yet: tests),
    else hand it to the reactor thread."""
    if isInIOThread() or threadable.ioThread is None:
        f(*args)
    else:
        from twisted.internet import reactor

        reactor.callFromThread(f, *args)  # type: ignore[attr-defined]


# Guards making a call's cancellation Event against its cancellation (one lock for all calls:
# both happen at most once a call).
_CANCEL_EVENTS = threading.Lock()


class ToolContext(RequestContext):
    """What a tool handler knows about the call it serves.

    Safe to use from a thread-pool thread: progress reports hop back to the reactor thread, and
    `cancelled` is a flag a long loop can poll.
    """

    def __init__(
        self,
        *,
        tool: Tool,
        request_id: Any,
        caller: Caller,
        stores: Mapping[Any, Any] | None = None,
        link: CallLink | None = None,
    ) -> None:
        # RequestContext.__init__'s work, inline: one made per call, and the call showed.
        self.request_id = request_id
        self.caller = caller
        self._stores = stores if stores is not None else {}
        self.link = link if link is not None else CallLink()
        self.tool = tool
        self._cancelled = False
        # Made by the first `wait_cancelled` (few handlers wait; every call would pay for one).
        self._cancel_event: threading.Event | None = None

    def start_task(self) -> Any:
        """Turn this call into a task now (tools declared ``task_start="handler"``): the client
        gets its CreateTaskResult and the handler carries on in the background. Fires with
        True, or False when the call cannot be a task (the client did not declare tasks) and
        simply goes on as a plain call. From a thread-pool handler, returns the bool itself."""
        if not isInIOThread() and threadable.ioThread is not None:
            from twisted.internet import reactor
            from twisted.internet.threads import blockingCallFromThread

            return blockingCallFromThread(reactor, self.start_task)
        start = self.link.start_task
        if start is None:
            return succeed(False)
        return start()

    @property
    def task_id(self) -> str | None:
        """The id of the task this call became (mcpd.protocol.tasks), or None."""
        return self.link.task_id

    @property
    def cancelled(self) -> bool:
        """Whether the client cancelled this call (or the server gave up on it)."""
        return self._cancelled

    def raise_if_cancelled(self) -> None:
        """Stop a handler's work: raises `CancelledError` once the call was cancelled."""
        if self._cancelled:
            raise CancelledError(f"call to {self.tool.name} was cancelled")

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block a thread-pool handler until the call is cancelled or ``timeout`` passes.

        Only for tools declared ``blocking=True``: blocking the reactor thread would stall the
        whole daemon.
        """
        if not self.tool.blocking:
            raise RuntimeError(f"wait_cancelled() blocks: only blocking tools may call it, not {self.tool.name}")
        with _CANCEL_EVENTS:
            event = self._cancel_event
            if event is None:
                event = self._cancel_event = threading.Event()
                if self._cancelled:
                    event.set()
        return event.wait(timeout)

    def mark_cancelled(self) -> None:
        """Called by the engine when the call is cancelled."""
        with _CANCEL_EVENTS:
            self._cancelled = True
            event = self._cancel_event
        if event is not None:
            event.set()

    @property
    def reports_progress(self) -> bool:
        """Whether the client asked for progress notifications on this call."""
        return self.link.progress_sink is not None

    def progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        """Tell the client how far the call has got; a no-op when it did not ask."""
        if not math.isfinite(progress) or (total is not None and not math.isfinite(total)):
            raise ValueError(f"progress and total must be finite numbers, not {progress!r} and {total!r}")
        sink = self.link.progress_sink
        if sink is None or self.cancelled:
            return
        _on_reactor(sink, progress, total, message)


def _text_block(tool: Tool, value: Any) -> dict[str, Any]:
    # call_result builds an exact str's block itself (every text answer): keep both alike.
    return {"type": "text", "text": value if isinstance(value, str) else _json_text(tool, value)}


def _json_text(tool: Tool, value: Any) -> JSONText:
    """``value`` as JSON text; `UnsendableResult` when it is not JSON (RFC 8259 §6: no NaN)."""
    try:
        text = JSONText(write_json(value))
    except (ValueError, TypeError, RecursionError) as e:
        why = "NaN or Infinity" if isinstance(e, ValueError) and "float" in str(e) else str(e)
        raise UnsendableResult(f"Tool {tool.name} returned a value JSON cannot carry ({why})") from None
    text.value = value
    return text


def call_result(tool: Tool, value: Any) -> dict[str, Any]:
    """Shape what a handler returned as a CallToolResult (without era-specific members)."""
    if isinstance(value, ToolResult):
        result: dict[str, Any] = {"content": value.content}
        structured = value.structured
        if structured is not None:
            _json_text(tool, structured)
        if value.is_error:
            result["isError"] = True
    elif tool.output_schema is not None:
        structured = value
        # 2025-11-25 server/tools §Structured Content: also return the JSON as text.
        result = {"content": [_text_block(tool, value)]}
    else:
        structured = None
        if value is None:
            result = {"content": []}
        elif isinstance(value, dict) and "type" in value and isinstance(value.get("type"), str):
            result = {"content": [value]}
        elif type(value) is str:
            result = {"content": [{"type": "text", "text": value}]}
        else:
            result = {"content": [_text_block(tool, value)]}
    if structured is not None:
        problems = tool.output_problems(structured)
        if problems and not result.get("isError"):
            raise ValueError(f"tool {tool.name} returned output that breaks its schema: {problems}")
        result["structuredContent"] = structured
    return result


def error_result(message: str) -> dict[str, Any]:
    """A CallToolResult telling the model what went wrong."""
    return {"content": [{"type": "text", "text": message}], "isError": True}


def hand_off(pool: ToolPool | None) -> Submit | None:
    """How blocking handlers reach ``pool``, decided once (by the engine's parts as they are
    built) rather than per call: its own ``submit`` (the daemon's ToolThreads), or `defer_to_pool`
    for a pool with Twisted's `ThreadPool` interface; None without a pool."""
    if pool is None:
        return None
    submit: Submit | None = getattr(pool, "submit", None)
    if submit is not None:
        return submit
    return functools.partial(defer_to_pool, pool)  # type: ignore[arg-type]  # Twisted-shaped


def run_handler(blocking: bool, submit: Submit | None, handler: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run a pack's handler (tool, resource reader, prompt): on the reactor, or through
    ``submit`` (`hand_off`) in the thread pool when it is declared blocking."""
    if not blocking:
        return maybeDeferred(handler, *args)
    if submit is None:
        raise RuntimeError(f"{getattr(handler, '__name__', 'a handler')} is blocking but no thread pool is running")
    return submit(handler, *args)


def defer_to_pool(pool: ThreadPool, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run ``f`` in ``pool``; its Deferred fires on the thread that asked: through the reactor
    from a worker thread (as `deferToThreadPool`), at once from a pool that runs work in the
    caller's thread (`mcpd.testing.SynchronousThreadPool`)."""
    d: Deferred[Any] = Deferred()
    asking = threading.get_ident()

    def deliver(success: bool, result: Any) -> None:
        fire = d.callback if success else d.errback
        if threading.get_ident() == asking:
            fire(result)
        else:
            from twisted.internet import reactor

            reactor.callFromThread(fire, result)  # type: ignore[attr-defined]

    pool.callInThreadWithCallback(deliver, f, *args)
    return d


def invoke(tool: Tool, ctx: ToolContext, arguments: dict[str, Any], submit: Submit | None) -> Deferred[Any]:
    """Run ``tool``'s handler: on the reactor, or through ``submit`` (`hand_off`) in the thread
    pool when the tool is blocking.

    The Deferred fires with the handler's raw value; cancelling it marks ``ctx`` cancelled so a
    thread-pool handler that polls `ToolContext.cancelled` stops its work.
    """
    return cancellable(run_handler(tool.blocking, submit, tool.handler, ctx, arguments), ctx)


def as_deferred(value: Any) -> Deferred[Any]:
    """What a handler returned, as a Deferred (as `maybeDeferred` makes of it)."""
    if isinstance(value, Deferred):
        return value
    if isinstance(value, Failure):
        return fail(value)
    if inspect.iscoroutine(value):
        return Deferred.fromCoroutine(value)
    return succeed(value)


def cancellable(inner: Deferred[Any], ctx: ToolContext) -> Deferred[Any]:
    """``inner``, the Deferred of a handler's value, made so that cancelling it marks ``ctx``
    cancelled too."""
    if inner.called and not isinstance(inner.result, Deferred):
        return inner  # done already (most reactor handlers): nothing left to cancel

    def cancel(_outer: Deferred[Any]) -> None:
        ctx.mark_cancelled()
        inner.cancel()

    outer: Deferred[Any] = Deferred(cancel)
    inner.chainDeferred(outer)
    return outer

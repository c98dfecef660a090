# -*- test-case-name: tests.test_engine -*-
"""The MCP engine: parses JSON-RPC, picks the protocol era, dispatches, shapes results.

It knows no transport. A transport hands it the bytes of one message (a stdio line, an HTTP body)
together with an `Exchange` describing where they came from, and gets back a Deferred firing with
the response to send (a dict, a list for a batch, or None when nothing is owed). Notifications
that belong to a request (progress) go out through the exchange's ``notify`` callable.

The engine frames messages (batches, notifications, responses to the server's own requests),
counts and tracks requests, and dispatches each to the component that serves it: `ToolCalls`
(``mcpd.protocol.toolcalls``), the `Catalog` (resources, prompts, completion, logging,
subscriptions), the `TaskManager`. The words they share are in ``mcpd.protocol.vocabulary``, the
era and header rules in ``mcpd.protocol.envelope``.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd._version import __version__
from mcpd.interfaces import StoreError, StoreUnavailable
from mcpd.protocol.catalog import Catalog
from mcpd.protocol.changes import LIST_KINDS, ChangeFeed
from mcpd.protocol.channel import RequestChannel, StateSigner
from mcpd.protocol.codec import decode, encode
from mcpd.protocol.envelope import route
from mcpd.protocol.errors import (
    LIMIT_EXCEEDED,
    InternalError,
    InvalidParams,
    InvalidRequest,
    MCPError,
    MethodNotFound,
    ParseError,
    ResponseTooLarge,
    ServerShuttingDown,
    error_response,
)
from mcpd.protocol.ledger import CALL, Ledger
from mcpd.protocol.tasks import LEGACY_TASK_VERSION, TASKS_EXTENSION, TaskManager
from mcpd.protocol.toolcalls import ToolCalls
from mcpd.protocol.versions import (
    ALL_VERSIONS,
    BATCH_VERSIONS,
    LATEST_LEGACY,
    LEGACY_VERSIONS,
    META_SERVER_INFO,
)
from mcpd.protocol.vocabulary import (
    LONG_RUNNING,
    CallRecord,
    Exchange,
    MessageLimit,
    Request,
    is_deferred,
    readable_id,
    valid_id,
)
from mcpd.stores.memory import MemoryTaskStore
from mcpd.tools.api import Caller, Tool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from mcpd.interfaces import ITaskStore
    from mcpd.protocol.session import Session
    from mcpd.protocol.trace import Tracer
    from mcpd.tools.api import ToolPool
    from mcpd.tools.pack import ToolRegistry

log = Logger(namespace="mcpd.engine")

# Messages of a batch served in one reactor turn before the others get theirs.
BATCH_SLICE = 10

INSTRUCTIONS = (
    "mcpd is a team's shared MCP server. Call server.tools to see the tools this server offers "
    "with their annotations, and server.info for its version and transports."
)


class Engine:
    """Serves MCP requests for every transport from one tool registry."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        stores: Mapping[Any, Any] | None = None,
        thread_pool: ToolPool | None = None,
        page_size: int = 100,
        tracer: Tracer | None = None,
        list_ttl_ms: int = 60_000,
        tool_filter: Callable[[Caller, Tool], bool] | None = None,
        entry_filter: Callable[[Caller, Any], bool] | None = None,
        tool_timeout: float | None = None,
        observers: Iterable[Callable[[CallRecord], None]] = (),
        message_limit: MessageLimit | None = None,
        clock: IReactorTime | None = None,
        client_timeout: float | None = 60.0,
        state_key: bytes | None = None,
        task_store: ITaskStore | None = None,
        ledger: Ledger | None = None,
        max_batch: int = 100,
        max_batch_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self.registry = registry
        # What handlers reach through ``ctx.store(IThing)``: the stores and the daemon's own
        # description (`mcpd.interfaces.IRuntime`), by interface.
        self.stores: Mapping[Any, Any] = stores if stores is not None else {}
        self.thread_pool = thread_pool
        self.page_size = page_size
        self.tracer = tracer
        self.list_ttl_ms = list_ttl_ms
        # Messages one batch may hold, and bytes its answers together may take (--max-batch,
        # --max-message-size): a small request must not buy an unbounded answer.
        self.max_batch = max_batch
        self.max_batch_bytes = max_batch_bytes
        # Sessions with a batch still being served a slice at a time, and the messages each sent
        # since, served once the batch is (`_Batch`): a session's messages are served in the order
        # they came, so a later message's answer does not overtake the answers a batch has at once
        # (on /sse, a WebSocket or stdio one stream carries both).
        self._behind_batch: dict[Session, list[tuple[Any, Exchange, Deferred[Any]]]] = {}
        self.server_info = {"name": "mcpd", "title": "mcpd", "version": __version__}
        self.capabilities: dict[str, Any] = {
            "tools": {"listChanged": True},
            "resources": {"subscribe": True, "listChanged": True},
            "prompts": {"listChanged": True},
            "completions": {},
            "logging": {},
        }
        # Who hears about list changes and resource updates (both eras).
        self.changes = ChangeFeed(trace=self._trace_push)
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        # How long a server-to-client request (elicitation, sampling, roots) may go unanswered.
        self.client_timeout = client_timeout
        # Signs modern-era requestState; instances behind one balancer need the same key.
        self.signer = StateSigner(state_key or secrets.token_bytes(32))
        # What every caller holds (streams, sessions, tasks …) against its shares; a revoked
        # key's calls in flight and tasks end through it too (`end_matching`).
        self.ledger = ledger if ledger is not None else Ledger()
        # The requests being served, with who made them.
        self._pending: dict[Deferred[Any], Caller] = {}
        # Set once shutdown cancels what is still running: those requests are answered.
        self._shutting_down = False
        # Tool calls running as tasks the client polls (both eras).
        self.tasks = TaskManager(
            task_store if task_store is not None else MemoryTaskStore(),
            self.clock,
            changes=self.changes,
            ledger=self.ledger,
        )
        self.ledger.participants.append(self)
        # tools/list and tools/call.
        self.tools = ToolCalls(
            registry,
            tasks=self.tasks,
            clock=self.clock,
            open_channel=self._channel,
            trace=self._trace,
            stores=self.stores,
            thread_pool=thread_pool,
            page_size=page_size,
            list_ttl_ms=list_ttl_ms,
            tool_filter=tool_filter,
            tool_timeout=tool_timeout,
        )
        # Resources, prompts, completion, logging, subscriptions.
        self.catalog = Catalog(
            registry,
            changes=self.changes,
            ledger=self.ledger,
            tasks=self.tasks,
            open_channel=self._channel,
            trace=self._trace,
            stores=self.stores,
            thread_pool=thread_pool,
            page_size=page_size,
            list_ttl_ms=list_ttl_ms,
            entry_filter=entry_filter,
        )
        # Decides, for every message a caller sends, whether it is over its rate limit (the
        # security layer's); None: no limit (stdio).
        self.message_limit = message_limit
        # Called with a `CallRecord` after every request (audit trail, metrics).
        self.observers: list[Callable[[CallRecord], None]] = list(observers)
        self._clock = time.monotonic
        tools, catalog, tasks = self.tools, self.catalog, self.tasks
        self._legacy: dict[str, Callable[[Request], Any]] = {
            "initialize": self._initialize,
            "ping": self._ping,
            "tools/list": tools.list,
            "tools/call": tools.call,
            "resources/list": catalog.resources_list,
            "resources/templates/list": catalog.resource_templates_list,
            "resources/read": catalog.resources_read,
            "resources/subscribe": catalog.resources_subscribe,
            "resources/unsubscribe": catalog.resources_unsubscribe,
            "prompts/list": catalog.prompts_list,
            "prompts/get": catalog.prompts_get,
            "completion/complete": catalog.complete,
            "logging/setLevel": catalog.set_level,
            # 2025-11-25 basic/utilities/tasks (experimental; that version only).
            "tasks/get": tasks.get,
            "tasks/result": tasks.result,
            "tasks/list": self._tasks_list,
            "tasks/cancel": tasks.cancel,
        }
        self._modern: dict[str, Callable[[Request], Any]] = {
            "server/discover": self._discover,
            "tools/list": tools.list,
            "tools/call": tools.call,
            "resources/list": catalog.resources_list,
            "resources/templates/list": catalog.resource_templates_list,
            "resources/read": catalog.resources_read,
            "prompts/list": catalog.prompts_list,
            "prompts/get": catalog.prompts_get,
            "completion/complete": catalog.complete,
            "subscriptions/listen": catalog.listen,
            # SEP-2663, the io.modelcontextprotocol/tasks extension.
            "tasks/get": tasks.get,
            "tasks/update": tasks.update,
            "tasks/cancel": tasks.cancel,
        }

    # -- what the security layer, the services and the tests read ---------------------------------

    @property
    def tool_filter(self) -> Callable[[Caller, Tool], bool] | None:
        """Which tools a caller may see and call (the keys' scopes); None: all."""
        return self.tools.tool_filter

    @property
    def entry_filter(self) -> Callable[[Caller, Any], bool] | None:
        """Which resources, templates and prompts a caller may see; None: all."""
        return self.catalog.entry_filter

    @property
    def tool_timeout(self) -> float | None:
        """Seconds after which a tool call is cancelled and answered isError; None: never."""
        return self.tools.tool_timeout

    def end_subscriptions(self, reason: str = "the server is shutting down") -> None:
        """End every modern subscription stream (`Catalog.end_subscriptions`)."""
        self.catalog.end_subscriptions(reason)

    # -- entry points ---------------------------------------------------------------------------

    def handle_bytes(self, data: bytes | str, exchange: Exchange) -> Deferred[Any]:
        """Decode one message (or a batch) and serve it."""
        try:
            message = decode(data)
        except ParseError as e:
            # JSON-RPC 2.0 §5.1: -32700, id null; the connection survives.
            if self.tracer is not None:
                self._trace("in", exchange, data.decode("utf-8", "replace") if isinstance(data, bytes) else data)
            response = error_response(None, e.to_error())
            self._trace("out", exchange, response)
            return succeed(response)
        return self.handle(message, exchange)

    def handle(self, message: Any, exchange: Exchange) -> Deferred[Any]:
        """Serve one decoded message or batch; fires with the response or None."""
        if self._behind_batch and exchange.session in self._behind_batch:
            waiting: Deferred[Any] = Deferred()
            self._behind_batch[exchange.session].append((message, exchange, waiting))
            return waiting
        if self.tracer is not None:
            self._trace("in", exchange, message)
        d = self._batch(message, exchange) if isinstance(message, list) else self._message(message, exchange)
        if self.tracer is not None:
            d.addCallback(self._trace_response, exchange)
        return d

    def reject(self, exchange: Exchange, request_id: Any, error: MCPError, message: Any = None) -> dict[str, Any]:
        """A transport-level rejection as a JSON-RPC error (traced like any other reply, after
        the ``message`` it answers when the transport read one)."""
        if message is not None:
            self._trace("in", exchange, message)
        response = error_response(request_id, error.to_error())
        self._trace("out", exchange, response)
        return response

    # -- framing --------------------------------------------------------------------------------

    def _batch(self, messages: list[Any], exchange: Exchange) -> Deferred[Any]:
        session = exchange.session
        version = session.version if session is not None else None
        if version not in BATCH_VERSIONS or not messages:
            # Only 2025-03-26 has batches (2025-06-18 changelog: batching removed).
            why = (
                "an empty batch"
                if messages == []
                else f"batches are not supported in protocol version {version or 'negotiation'}"
            )
            return succeed(error_response(None, InvalidRequest(f"Invalid request: {why}").to_error()))
        if len(messages) > self.max_batch:
            why = f"a batch may hold at most {self.max_batch} messages, this one has {len(messages)}; send fewer"
            return succeed(error_response(None, InvalidRequest(f"Invalid request: {why}").to_error()))
        exchange.version = version
        if session is not None and len(messages) > BATCH_SLICE:
            self._behind_batch[session] = []  # served over several reactor turns: see _Batch._served
        return _Batch(self, messages, exchange).run()

    def _message(self, message: Any, exchange: Exchange) -> Deferred[Any]:
        answer = self._answer(message, exchange)
        return answer if is_deferred(answer) else succeed(answer)

    # From here on a message's answer is the response (a dict, or None when nothing is owed) or
    # a Deferred of it, made into one Deferred only by `_message`: most answer at once, and
    # running each step's answer through a Deferred of its own showed in the hot path.

    def _answer(self, message: Any, exchange: Exchange) -> Any:
        if not self.observers:
            return self._serve_message(message, exchange)
        started = self._clock()
        answer = self._serve_message(message, exchange)
        if is_deferred(answer):
            return answer.addCallback(self._observe, message, exchange, started)
        return self._observe(answer, message, exchange, started)

    def _observe(self, response: Any, message: Any, exchange: Exchange, started: float) -> Any:
        """Tell the observers (audit, metrics) how a request went."""
        if not isinstance(message, dict) or "id" not in message or "method" not in message:
            return response  # notifications, and the client's answers to our own requests
        method = message["method"]
        tool = None
        if method == "tools/call":
            params = message.get("params")
            if isinstance(params, dict):
                tool = params.get("name")
        if response is None:
            outcome = "cancelled"
        elif "error" in response:
            outcome = "denied" if exchange.denied else "rate_limited" if _rate_refusal(response) else "error"
        elif isinstance(response.get("result"), dict) and response["result"].get("isError"):
            outcome = "tool_error"
        else:
            outcome = "ok"
        # Records are kept (audit buffer, recent requests), so what the client chose is cut short:
        # a 4 MB method name must not become 4 MB held per record.
        request_id = message["id"]
        if isinstance(request_id, str) and len(request_id) > _CLIP:
            request_id = _clipped(request_id)
        if type(method) is not str or len(method) > _CLIP:
            method = _clipped(str(method))
        if type(tool) is not str:
            tool = _clipped(tool) if isinstance(tool, str) else None
        elif len(tool) > _CLIP:
            tool = _clipped(tool)
        record = _new_record(
            (request_id, method, tool, exchange.caller, exchange.version, outcome, self._clock() - started)
        )
        for observer in self.observers:
            try:
                observer(record)
            except Exception:
                log.failure("A request observer failed")
        return response

    def _serve_message(self, message: Any, exchange: Exchange) -> Any:
        limit = self.message_limit
        if limit is not None:
            # Every message counts against the caller's rate limit, whatever carries it: each
            # message of a batch, each frame of a WebSocket, each POST of an /sse session.
            if exchange.prepaid:
                exchange.prepaid -= 1
            else:
                refusal = limit(exchange.caller)
                if isinstance(refusal, Deferred):
                    return refusal.addCallback(self._after_limit, message, exchange)
                if refusal is not None:
                    return _refused(message, refusal)
        return self._dispatch(message, exchange)

    def _after_limit(self, refusal: MCPError | None, message: Any, exchange: Exchange) -> Any:
        return _refused(message, refusal) if refusal is not None else self._dispatch(message, exchange)

    def _dispatch(self, message: Any, exchange: Exchange) -> Any:
        if not isinstance(message, dict):
            return error_response(None, InvalidRequest("Invalid request: expected a JSON-RPC object").to_error())
        method = message.get("method")
        request_id = message.get("id")
        if method is None:
            if "id" in message and ("result" in message or "error" in message):
                # A response to a server-to-client request (elicitation, sampling, roots).
                session = exchange.session
                if session is None or not valid_id(request_id) or not session.outbound.resolve(message):
                    # JSON-RPC 2.0 §5: a response is never answered; logged once.
                    log.info("Ignoring a response to request {id!r} that was never sent", id=request_id)
                return None
            return error_response(readable_id(request_id), InvalidRequest("Invalid request: no method").to_error())
        if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
            return error_response(
                readable_id(request_id),
                InvalidRequest('Invalid request: needs "jsonrpc": "2.0" and a string "method"').to_error(),
            )
        params = message.get("params", {})
        if params is None:
            params = {}
        if "id" not in message:
            self._notification(method, params, exchange)
            return None
        if not valid_id(request_id):
            return error_response(None, InvalidRequest("Invalid request: id must be a string or an integer").to_error())
        exchange.method = method
        session = exchange.session
        if session is not None and request_id in session.in_flight:
            # basic §Requests: the id MUST NOT have been used by the requestor in this session
            # (at least while that request is still being served).
            log.info("Duplicate request id {id!r} in one session", id=request_id)
            return error_response(
                request_id, InvalidRequest(f"Invalid request: request id {request_id!r} is already in use").to_error()
            )
        if not isinstance(params, dict):
            return error_response(request_id, InvalidParams("Invalid params: params must be an object").to_error())
        try:
            request = route(request_id, method, params, exchange)
            modern = request.modern
            handler = (self._modern if modern else self._legacy).get(method)
            if handler is None:
                raise MethodNotFound(f"Method not found: {method}")
            if method in LONG_RUNNING:
                # The caller's share of calls in flight, whatever carries them (LimitExceeded).
                self.ledger.check(exchange.caller.account, CALL)
            result = handler(request)
        except MCPError as e:
            return error_response(request_id, e.to_error())
        except Exception:
            return self._internal_error(request_id, method, Failure())
        if not is_deferred(result):
            # Answered at once (most requests): no Deferred to run the answer through.
            try:
                return self._respond(result, request_id, modern)
            except Exception:
                return self._internal_error(request_id, method, Failure())
        if not result.called or result.paused:  # still being served (paused: waiting on another Deferred)
            self._track(result, exchange, request_id)
        return result.addCallbacks(
            self._respond, self._respond_failure, callbackArgs=(request_id, modern), errbackArgs=(request_id, method)
        )

    def _track(self, d: Deferred[Any], exchange: Exchange, request_id: Any) -> None:
        """Remember a request still being served, for cancellation, revocation and shutdown."""
        caller = exchange.caller
        self._pending[d] = caller
        # Checked before the handler ran: counted now that the call outlives this turn.
        claim = self.ledger.claim(caller.account, CALL, peer=caller.peer, force=True)
        session = exchange.session
        if session is not None:
            session.in_flight[request_id] = d

        def forget(result: Any) -> Any:
            self._pending.pop(d, None)
            claim.release()
            if session is not None and session.in_flight.get(request_id) is d:
                del session.in_flight[request_id]
            return result

        d.addBoth(forget)

    @property
    def methods(self) -> frozenset[str]:
        """Every request method served, in either era (bounds the metrics' labels)."""
        return frozenset(self._legacy) | frozenset(self._modern)

    @property
    def in_flight(self) -> int:
        """How many requests are being served right now."""
        return len(self._pending)

    def cancel_all(self) -> None:
        """Cancel every request still being served, whatever its transport, and every task
        still running (shutdown)."""
        self.abort_in_flight()
        self.tasks.shutdown()

    def abort_in_flight(self) -> None:
        """Shutdown: cancel every request still being served. Unlike a client's own
        cancellation, each is answered, with a -32010 error saying the server is shutting down,
        so that its client is not left waiting on a connection that just closes."""
        self._shutting_down = True
        for d in list(self._pending):
            d.cancel()

    def end_matching(self, match: Callable[[str, str], bool], reason: str) -> int:
        """Cancel the calls in flight of the accounts (or from the addresses) ``match`` picks:
        a revoked key's (`mcpd.protocol.ledger.Ledger.end`)."""
        doomed = [d for d, caller in self._pending.items() if match(caller.account, caller.peer)]
        if doomed:
            log.info("Cancelling {count} call(s) in flight: {reason}", count=len(doomed), reason=reason)
        for d in doomed:
            d.cancel()
        return len(doomed)

    def rescoped(self, account: str, scopes: frozenset[str], narrowed: bool) -> None:
        """A key's scopes changed: what it may list did too, so its sessions and streams are told
        (of each list the server said changes), and stop following resources it may no longer
        see. A key that lost a scope has its calls in flight cancelled: they were admitted under
        a grant that no longer holds (later messages are served under the new scopes)."""
        if narrowed:
            self.end_matching(lambda held_by, _peer: held_by == account, "the API key lost a scope")
        self.catalog.rescoped(account, scopes)
        # 2025-11-25 server/tools, server/prompts, server/resources §List Changed Notification.
        kinds = [kind for kind in LIST_KINDS if self.capabilities[kind].get("listChanged")]
        self.changes.account_lists_changed(account, kinds)

    def _respond(self, result: Any, request_id: Any, modern: bool) -> dict[str, Any]:
        if modern and "resultType" not in result:
            # 2026-07-28 basic §Result types: servers MUST include resultType.
            result["resultType"] = "complete"
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _respond_failure(self, failure: Failure, request_id: Any, method: str) -> dict[str, Any] | None:
        if failure.check(CancelledError):
            if self._shutting_down:
                error = ServerShuttingDown(
                    f"Server shutting down: {method} was cancelled before it finished; send it again "
                    "once the server is back (or to another instance)"
                )
                return error_response(request_id, error.to_error())
            # 2025-11-25 basic/utilities/cancellation: no response to a cancelled request.
            return None
        if failure.check(MCPError):
            return error_response(request_id, failure.value.to_error())
        if failure.check(StoreUnavailable):
            # A resource or prompt read while a store is down: say so, no traceback in the log.
            return error_response(request_id, InternalError(str(failure.value)).to_error())
        if failure.check(StoreError):
            # A prompt argument or resource naming a record the caller's tenant does not have.
            return error_response(request_id, InvalidParams(str(failure.value)).to_error())
        return self._internal_error(request_id, method, failure)

    def _internal_error(self, request_id: Any, method: str, failure: Failure) -> dict[str, Any]:
        log.failure("Internal error serving {method} (request {id!r})", failure, method=method, id=request_id)
        error = InternalError(f"Internal error while serving {method}; the server log has the details")
        return error_response(request_id, error.to_error())

    def _notification(self, method: str, params: Any, exchange: Exchange) -> None:
        session = exchange.session
        if method == "notifications/initialized":
            if session is not None:
                session.initialized = True
        elif method == "notifications/cancelled":
            request_id = params.get("requestId") if isinstance(params, dict) else None
            valid = session is not None and valid_id(request_id)
            pending = session.in_flight.pop(request_id, None) if valid else None  # type: ignore[union-attr]
            if pending is not None:
                log.info("Request {id!r} cancelled by the client", id=request_id)
                pending.cancel()
        elif method.startswith("notifications/"):
            # Unknown notifications are ignored (JSON-RPC 2.0 §4.1: never answered).
            log.debug("Ignoring notification {method}", method=method)
        else:
            log.info("Ignoring notification-shaped message for method {method}", method=method)

    # -- methods --------------------------------------------------------------------------------

    def _initialize(self, request: Request) -> dict[str, Any]:
        session = request.exchange.session
        if session is None:
            raise InvalidRequest("Invalid request: initialize needs a session-capable transport")
        if session.version is not None:
            raise InvalidRequest("Invalid request: this session is already initialized")
        params = request.params
        requested = params.get("protocolVersion")
        if not isinstance(requested, str):
            raise InvalidParams("Invalid params: initialize needs a string protocolVersion")
        capabilities = params.get("capabilities", {})
        if not isinstance(capabilities, dict):
            raise InvalidParams("Invalid params: capabilities must be an object")
        # 2025-11-25 basic/lifecycle §Version Negotiation: echo a supported version, else offer
        # the latest we support.
        version = requested if requested in LEGACY_VERSIONS else LATEST_LEGACY
        session.version = version
        session.client_capabilities = capabilities
        info = params.get("clientInfo")
        session.client_info = info if isinstance(info, dict) else None
        request.exchange.version = version
        self.changes.join(session)
        capabilities = self.capabilities
        if version == LEGACY_TASK_VERSION:
            capabilities = {**capabilities, "tasks": self.tasks.legacy_capabilities()}
        return {
            "protocolVersion": version,
            "capabilities": capabilities,
            "serverInfo": self.server_info,
            "instructions": INSTRUCTIONS,
        }

    def _ping(self, request: Request) -> dict[str, Any]:
        return {}

    def _discover(self, request: Request) -> dict[str, Any]:
        # 2026-07-28 server/discover: supportedVersions, capabilities, serverInfo in _meta.
        return {
            "supportedVersions": list(ALL_VERSIONS),
            # SEP-2663 §Capability Negotiation: tasks are an extension, not capabilities.tasks.
            "capabilities": {**self.capabilities, "extensions": {TASKS_EXTENSION: {}}},
            "instructions": INSTRUCTIONS,
            "_meta": {META_SERVER_INFO: self.server_info},
            "ttlMs": self.list_ttl_ms,
            "cacheScope": "public",
        }

    def _tasks_list(self, request: Request) -> Deferred[dict[str, Any]]:
        return self.tasks.list(request, self.page_size)

    def _channel(self, request: Request) -> RequestChannel:
        """How the handler of ``request`` talks back to its client (built on first use)."""
        exchange = request.exchange
        return RequestChannel(
            version=request.version,
            modern=request.modern,
            params=request.params,
            send=exchange.notify,
            session=exchange.session,
            changes=self.changes,
            clock=self.clock,
            timeout=self.client_timeout,
            signer=self.signer,
            trace=functools.partial(self._trace, "out", exchange),
        )

    # -- tracing --------------------------------------------------------------------------------

    def _trace_push(self, peer: str, version: str | None, message: dict[str, Any]) -> None:
        if self.tracer is not None:
            self.tracer.record("out", peer, version, message)

    def _trace(self, direction: str, exchange: Exchange, message: Any) -> None:
        if self.tracer is not None:
            version = exchange.version
            if version is None and exchange.session is not None:
                version = exchange.session.version
            self.tracer.record(direction, exchange.peer, version, message)

    def _trace_response(self, response: Any, exchange: Exchange) -> Any:
        if response is not None:
            self._trace("out", exchange, response)
        return response


# Characters of a client's string kept in a `CallRecord` (`_clipped`).
_CLIP = 128
# CallRecord((fields…)): the tuple made in C, without the NamedTuple's Python-level __new__ (one
# record a request; the same tuple, of the same class).
_new_record: Callable[[tuple[Any, ...]], CallRecord] = functools.partial(tuple.__new__, CallRecord)


def _clipped(value: Any, limit: int = _CLIP) -> Any:
    """A client's string, cut to ``limit`` characters for keeping (anything else as it is)."""
    return value[:limit] + "…" if isinstance(value, str) and len(value) > limit else value


def _refused(message: Any, error: MCPError) -> dict[str, Any] | None:
    """The answer to a message over its caller's rate limit: the error for a request (JSON-RPC
    carries no HTTP 429 inside a batch or on a WebSocket), nothing for a notification or a
    response, which are never answered (JSON-RPC 2.0 §4.1)."""
    if isinstance(message, dict):
        if "method" in message and "id" not in message:
            return None  # a notification
        if "method" not in message and ("result" in message or "error" in message):
            return None  # a response to a request of ours
    request_id = message.get("id") if isinstance(message, dict) else None
    return error_response(readable_id(request_id), error.to_error())


def _rate_refusal(response: dict[str, Any]) -> bool:
    error = response["error"]
    data = error.get("data")
    return error.get("code") == LIMIT_EXCEEDED and isinstance(data, dict) and data.get("limit") == "rate"


class _Batch:
    """Serves the messages of one batch a slice at a time, giving the reactor back between
    slices (other clients and /ready are not held up by a long batch), and keeps the answers
    within ``engine.max_batch_bytes``: an answer that would pass it is replaced by an error."""

    def __init__(self, engine: Engine, messages: list[Any], exchange: Exchange) -> None:
        self.engine = engine
        self.messages = messages
        self.exchange = exchange
        self.budget = engine.max_batch_bytes
        self.answers: list[Deferred[Any]] = []
        self.done: Deferred[Any] = Deferred()

    def run(self) -> Deferred[Any]:
        self._slice(0)
        return self.done

    def _slice(self, start: int) -> None:
        session = self.exchange.session
        # A client gone meanwhile: the rest would be answered to no one.
        gone = session is not None and session.closed
        end = start if gone else start + BATCH_SLICE
        for message in self.messages[start:end]:
            self.answers.append(self.engine._message(message, self.exchange).addCallback(self._bounded))
        if end < len(self.messages) and not gone:
            self.engine.clock.callLater(0, self._slice, end)
        else:
            gatherResults(self.answers).addCallback(self._collect).chainDeferred(self.done)
            if session is not None:
                self._served(session)

    def _served(self, session: Session) -> None:
        """Serve, in order, the messages the session sent while the batch was being served
        (after the batch's answer, when all its requests answered at once)."""
        for message, exchange, waiting in self.engine._behind_batch.pop(session, ()):
            if waiting.called:
                continue  # cancelled while it waited (its client went): not served
            # A batch among them holds the rest back again (`Engine.handle`).
            self.engine.handle(message, exchange).chainDeferred(waiting)

    def _bounded(self, response: Any) -> Any:
        if response is None or "error" in response:
            return response  # errors are small, and always sent
        size = len(encode(response))
        if size <= self.budget:
            self.budget -= size
            return response
        limit = self.engine.max_batch_bytes
        error = ResponseTooLarge(
            f"Response too large: the answers to this batch may take {limit} bytes in all, and this one "
            "would pass that; send this request on its own"
        )
        return error_response(response.get("id"), error.to_error())

    @staticmethod
    def _collect(responses: list[Any]) -> list[Any] | None:
        replies = [r for r in responses if r is not None]
        return replies or None


__all__ = ["Engine"]

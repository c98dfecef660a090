# -*- test-case-name: tests.test_catalog -*-
"""The catalog beyond tools: resources, prompts, completion, logging, subscriptions.

A component the engine holds (its ``catalog``), handed the registry, the
change feed, the ledger and a way to reach the client when it is made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, FirstError, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcpd.interfaces import StoreFull
from mcpd.protocol.changes import FILTER_FOR_KIND, Listener
from mcpd.protocol.channel import LOG_LEVELS, RequestChannel, input_required
from mcpd.protocol.errors import InvalidParams, InvalidRequest, LimitExceeded, MCPError, MissingClientCapability
from mcpd.protocol.ledger import STREAM, SUBSCRIPTION, Claim, Ledger
from mcpd.protocol.tasks import NEEDS_TASKS, TASKS_EXTENSION, TaskManager
from mcpd.tools.api import Caller, CallLink, RequestContext, hand_off, run_handler
from mcpd.tools.pack import paginate
from mcpd.tools.prompts import prompt_result
from mcpd.tools.resources import ResourceTemplate, completion_values, resource_contents

if TYPE_CHECKING:
    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.session import Session
    from mcpd.protocol.vocabulary import Exchange, Request
    from mcpd.tools.api import ToolPool
    from mcpd.tools.pack import ToolRegistry


log = Logger(namespace="mcpd.catalog")

# The longest resource URI a client may subscribe to (bounds what a subscription holds).
MAX_URI_LENGTH = 8192


class Catalog:
    """resources/*, prompts/*, completion/complete, logging/setLevel, subscriptions/listen."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        changes: ChangeFeed,
        ledger: Ledger,
        tasks: TaskManager,
        open_channel: Callable[[Request], RequestChannel],
        trace: Callable[[str, Exchange, Any], None],
        stores: Mapping[Any, Any],
        thread_pool: ToolPool | None = None,
        page_size: int = 100,
        list_ttl_ms: int = 60_000,
        entry_filter: Callable[[Caller, Any], bool] | None = None,
    ) -> None:
        self.registry = registry
        self.changes = changes
        self.ledger = ledger
        self.tasks = tasks
        self.open_channel = open_channel
        self.trace = trace
        # What handlers reach through ``ctx.store(IThing)``.
        self.stores = stores
        # How blocking handlers reach the thread pool, decided here once.
        self.hand_off = hand_off(thread_pool)
        self.page_size = page_size
        self.list_ttl_ms = list_ttl_ms
        # Which resources, templates and prompts a caller may see (the keys' scopes); None: all.
        self.entry_filter = entry_filter

    # -- helpers --------------------------------------------------------------------------------

    def _list_result(
        self, request: Request, key: str, items: list[Any], sort_key: Callable[[Any], str]
    ) -> dict[str, Any]:
        cursor = request.params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidParams("Invalid params: cursor must be a string")
        try:
            page, next_cursor = paginate(items, sort_key, cursor, self.page_size)
        except ValueError:
            raise InvalidParams("Invalid params: unknown cursor; start again without one") from None
        result: dict[str, Any] = {key: [item.descriptor for item in page]}
        if next_cursor is not None:
            result["nextCursor"] = next_cursor
        if request.modern:
            # 2026-07-28 server/resources, server/prompts §Caching: lists carry ttlMs and cacheScope.
            result["ttlMs"] = self.list_ttl_ms
            result["cacheScope"] = "public" if self.entry_filter is None else "private"
        return result

    def _visible(self, request: Request, entries: Any) -> list[Any]:
        """The resources, templates or prompts the caller's scopes let it see."""
        allowed = self.entry_filter
        if allowed is None:
            return list(entries)
        caller = request.exchange.caller
        return [entry for entry in entries if allowed(caller, entry)]

    def _hidden(self, request: Request, entry: Any) -> bool:
        """A resource, template or prompt this caller may not see: answered as unknown."""
        return self.entry_filter is not None and not self.entry_filter(request.exchange.caller, entry)

    def _context(self, request: Request) -> RequestContext:
        link = CallLink(open_channel=lambda: self.open_channel(request))
        ctx = RequestContext(request_id=request.id, caller=request.exchange.caller, stores=self.stores, link=link)
        if "requestState" in request.params or "inputResponses" in request.params:
            ctx.channel  # noqa: B018 -- verify the requestState before anything runs
        return ctx

    def _run(self, blocking: bool, handler: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return run_handler(blocking, self.hand_off, handler, *args)

    # -- resources ------------------------------------------------------------------------------

    def resources_list(self, request: Request) -> dict[str, Any]:
        resources = self._visible(request, self.registry.resources.values())
        return self._list_result(request, "resources", resources, lambda r: r.uri)

    def resource_templates_list(self, request: Request) -> dict[str, Any]:
        templates = self._visible(request, self.registry.templates)
        return self._list_result(request, "resourceTemplates", templates, lambda t: t.uri_template)

    def resources_read(self, request: Request) -> Deferred[Any]:
        uri = request.params.get("uri")
        if not isinstance(uri, str):
            raise InvalidParams("Invalid params: resources/read needs a string uri")
        found = self.registry.find_resource(uri)
        if found is not None and self._hidden(request, found[0]):
            found = None
        if found is None:
            # SEP-2164 (2026-07-28 server/resources §Error Handling): an unknown resource is
            # -32602 with the uri in data; mcpd answers so in every version.
            raise InvalidParams(f"Resource not found: {uri}", data={"uri": uri})
        resource, variables = found
        ctx = self._context(request)
        templated = isinstance(resource, ResourceTemplate)
        if templated:
            d = self._run(resource.blocking, resource.reader, ctx, uri, variables)
        else:
            d = self._run(resource.blocking, resource.reader, ctx, uri)
        modern = request.modern
        # 2026-07-28 schema CacheableResult.cacheScope: "public" only for a result with no
        # user-specific data, which any gateway MAY serve across authorization contexts. A
        # template's records are a tenant's (task://, note://, kb and memory records): private.
        # A fixed resource is the same for every caller, unless the keys' scopes decide who
        # may read it at all (as for the lists).
        scope = "private" if templated or self.entry_filter is not None else "public"

        def shape(value: Any) -> dict[str, Any]:
            if isinstance(value, dict) and value.get("resultType") == "input_required":
                return value
            result: dict[str, Any] = {"contents": resource_contents(uri, resource.mime_type, value)}
            if not result["contents"]:
                raise InvalidParams(f"Resource not found: {uri}", data={"uri": uri})
            if modern:
                result["ttlMs"] = self.list_ttl_ms
                result["cacheScope"] = scope
            return result

        return d.addErrback(input_required, ctx).addCallback(shape)

    def resources_subscribe(self, request: Request) -> dict[str, Any] | Deferred[dict[str, Any]]:
        uri = self._subscription_uri(request)
        checking = self._check_readable(request, [uri])
        if checking is not None:
            return checking.addCallback(lambda _: self._subscribe(request, uri))
        return self._subscribe(request, uri)

    def _subscribe(self, request: Request, uri: str) -> dict[str, Any] | Deferred[dict[str, Any]]:
        session = request.exchange.session
        assert session is not None  # checked by _subscription_uri
        if uri not in session.subscriptions:
            caller = request.exchange.caller
            # Counted against the caller's share of subscriptions (LimitExceeded over it).
            claim = session.subscriptions[uri] = self.ledger.claim(caller.account, SUBSCRIPTION, peer=caller.peer)
            session.subscriptions_tenant = caller.tenant
            shared = session.changed(subscribe=uri, tenant=caller.tenant)
            if shared is not None:
                # Several instances: the session's record bounds its URIs, wherever they
                # were subscribed through.
                return shared.addCallbacks(lambda _: {}, self._record_full, errbackArgs=(session, uri, claim))
        return {}

    def _record_full(self, failure: Failure, session: Session, uri: str, claim: Claim) -> dict[str, Any]:
        """The session's record follows as many URIs as its account's share: the refusal
        of one instance's share (`Ledger.check`)."""
        failure.trap(StoreFull)
        if session.subscriptions.get(uri) is claim:
            del session.subscriptions[uri]
        claim.release()
        most = failure.value.capacity
        raise self.ledger.over_share(claim.account, SUBSCRIPTION, most, f"{most} in this session, at most {most}")

    def resources_unsubscribe(self, request: Request) -> dict[str, Any] | Deferred[dict[str, Any]]:
        uri = self._subscription_uri(request)
        session = request.exchange.session
        assert session is not None  # checked by _subscription_uri
        claim = session.subscriptions.pop(uri, None)
        if claim is not None:
            claim.release()
        return _once_shared(session.changed(unsubscribe=uri))

    def _subscription_uri(self, request: Request) -> str:
        # 2025-11-25 server/resources §Subscriptions.
        uri = request.params.get("uri")
        if not isinstance(uri, str):
            raise InvalidParams("Invalid params: needs a string uri")
        if request.exchange.session is None:
            raise InvalidRequest("Invalid request: subscriptions need a session")
        self._check_subscribable(request, [uri])
        return uri

    def _check_subscribable(self, request: Request, uris: list[str]) -> None:
        """URIs a caller may follow: of bounded length, and not a resource its scopes hide
        (whose updates would tell it what it may not see)."""
        for uri in uris:
            if len(uri) > MAX_URI_LENGTH:
                raise InvalidParams(f"Invalid params: resource URIs are limited to {MAX_URI_LENGTH} characters")
            found = self.registry.find_resource(uri) if self.entry_filter is not None else None
            if found is not None and self._hidden(request, found[0]):
                raise InvalidParams(f"Resource not found: {uri}", data={"uri": uri})

    def rescoped(self, account: str, scopes: frozenset[str]) -> None:
        """A key's scopes changed on reload: its legacy sessions stop following the resources the
        new ones hide (their updates would tell it what it may not see). Its subscriptions/listen
        streams need nothing here: they are calls in flight, which a key that lost a scope has
        cancelled (`Engine.rescoped`), and a key that lost none sees all it saw."""
        allowed = self.entry_filter
        if allowed is None:
            return
        caller = Caller(scopes=scopes)

        def hidden(uri: str) -> bool:
            found = self.registry.find_resource(uri)
            return found is not None and not allowed(caller, found[0])

        for session in list(self.changes.sessions):
            if session.account != account:
                continue
            for uri in [uri for uri in session.subscriptions if hidden(uri)]:
                claim = session.subscriptions.pop(uri)
                if claim is not None:
                    claim.release()
                shared = session.changed(unsubscribe=uri)
                if shared is not None:
                    shared.addErrback(_unfollow_failed, uri)

    def _check_readable(self, request: Request, uris: list[str]) -> Deferred[None] | None:
        """Read the URIs of ``readers_only`` templates as resources/read would, failing with its
        "Resource not found" for one the caller may not read (another key's personal memory):
        its updates would tell the caller what it may not see. None when no URI needs it."""
        reads = []
        for uri in uris:
            found = self.registry.find_resource(uri)
            if found is None or not isinstance(found[0], ResourceTemplate) or not found[0].readers_only:
                continue
            template, variables = found
            d = self._run(template.blocking, template.reader, self._context(request), uri, variables)
            reads.append(d.addCallback(_readable, uri, template.mime_type))
        if not reads:
            return None
        return gatherResults(reads, consumeErrors=True).addCallbacks(lambda _: None, _first_error)

    # -- prompts --------------------------------------------------------------------------------

    def prompts_list(self, request: Request) -> dict[str, Any]:
        prompts = self._visible(request, self.registry.prompts.values())
        return self._list_result(request, "prompts", prompts, lambda p: p.name)

    def prompts_get(self, request: Request) -> Deferred[Any]:
        params = request.params
        name = params.get("name")
        if not isinstance(name, str):
            raise InvalidParams("Invalid params: prompts/get needs a string name")
        prompt = self.registry.prompts.get(name)
        if prompt is not None and self._hidden(request, prompt):
            prompt = None
        if prompt is None:
            # 2025-11-25 server/prompts §Error Handling: invalid prompt name → -32602.
            raise InvalidParams(f"Unknown prompt: {name}. Call prompts/list to see the available prompts.")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        if not isinstance(arguments, dict) or not all(isinstance(v, str) for v in arguments.values()):
            raise InvalidParams("Invalid params: prompt arguments must be an object of strings")
        missing = prompt.missing(arguments)
        if missing:
            raise InvalidParams(f"Invalid params: prompt {name} needs the argument(s) {', '.join(missing)}")
        ctx = self._context(request)
        d = self._run(prompt.blocking, prompt.handler, ctx, arguments)

        def shape(value: Any) -> dict[str, Any]:
            if isinstance(value, dict) and value.get("resultType") == "input_required":
                return value
            return prompt_result(prompt, value)

        return d.addErrback(input_required, ctx).addCallback(shape)

    # -- completion -----------------------------------------------------------------------------

    def complete(self, request: Request) -> Deferred[Any]:
        # 2025-11-25 server/utilities/completion.
        params = request.params
        ref = params.get("ref")
        argument = params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise InvalidParams("Invalid params: completion/complete needs ref and argument objects")
        name, value = argument.get("name"), argument.get("value")
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidParams("Invalid params: argument needs a string name and value")
        context = params.get("context")
        resolved = context.get("arguments") if isinstance(context, dict) else None
        resolved = resolved if isinstance(resolved, dict) else {}
        completer: Callable[..., Any] | None
        if ref.get("type") == "ref/prompt":
            prompt_name = ref.get("name")
            if not isinstance(prompt_name, str):
                raise InvalidParams("Invalid params: ref.name must be a string")
            prompt = self.registry.prompts.get(prompt_name)
            if prompt is None or self._hidden(request, prompt):
                raise InvalidParams(f"Unknown prompt: {ref.get('name')}")
            declared = prompt.argument(name)
            if declared is None:
                raise InvalidParams(f"Invalid params: prompt {prompt.name} has no argument {name}")
            completer = declared.complete
        elif ref.get("type") == "ref/resource":
            uri = ref.get("uri")
            template = self.registry.template(uri) if isinstance(uri, str) else None
            if template is not None and self._hidden(request, template):
                template = None
            if template is None:
                fixed = self.registry.resources.get(uri) if isinstance(uri, str) else None
                if fixed is not None and not self._hidden(request, fixed):
                    return _completed([])  # a fixed URI has no variables to complete
                raise InvalidParams(f"Unknown resource template: {uri}")
            if name not in template.variables:
                raise InvalidParams(f"Invalid params: template {template.uri_template} has no variable {name}")
            completer = template.completions.get(name)
        else:
            raise InvalidParams("Invalid params: ref.type must be ref/prompt or ref/resource")
        if completer is None:
            return _completed([])
        return maybeDeferred(completer, self._context(request), value, resolved).addCallback(
            lambda values: {"completion": completion_values(values)}
        )

    # -- logging (legacy) -----------------------------------------------------------------------

    def set_level(self, request: Request) -> dict[str, Any] | Deferred[dict[str, Any]]:
        # 2025-11-25 server/utilities/logging §Setting Log Level.
        level = request.params.get("level")
        if level not in LOG_LEVELS:
            raise InvalidParams(f"Invalid params: level must be one of {', '.join(LOG_LEVELS)}")
        session = request.exchange.session
        if session is None:
            raise InvalidRequest("Invalid request: logging/setLevel needs a session")
        session.log_level = level
        return _once_shared(session.changed(log_level=level))

    # -- subscriptions (modern) -----------------------------------------------------------------

    def listen(self, request: Request) -> Deferred[Any]:
        """2026-07-28 basic/utilities/subscriptions: acknowledge first, then every notification
        the client asked for, tagged with the subscription id, until the client goes away."""
        wanted = request.params.get("notifications")
        if not isinstance(wanted, dict):
            raise InvalidParams("Invalid params: subscriptions/listen needs a notifications object")
        send = request.exchange.notify
        if send is None:
            raise InvalidRequest("Invalid request: this transport cannot carry a subscription stream")
        uris = wanted.get("resourceSubscriptions", [])
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise InvalidParams("Invalid params: resourceSubscriptions must be a list of URIs")
        uris = list(dict.fromkeys(uris))
        self._check_subscribable(request, uris)
        checking = self._check_readable(request, uris)
        if checking is not None:
            return checking.addCallback(lambda _: self._listen(request, wanted, uris))
        return self._listen(request, wanted, uris)

    def _listen(self, request: Request, wanted: dict[str, Any], uris: list[str]) -> Deferred[Any]:
        kinds = frozenset(kind for kind, flag in FILTER_FOR_KIND.items() if wanted.get(flag) is True)
        honoured: dict[str, Any] = {FILTER_FOR_KIND[kind]: True for kind in sorted(kinds)}
        if uris:
            honoured["resourceSubscriptions"] = list(uris)
        return self._listened_tasks(request, wanted.get("taskIds")).addCallback(
            self._listening, request, kinds, uris, honoured
        )

    def _listening(
        self, task_ids: list[str], request: Request, kinds: frozenset[str], uris: list[str], honoured: dict[str, Any]
    ) -> Deferred[Any]:
        if task_ids:
            honoured["taskIds"] = task_ids
        send = request.exchange.notify
        assert send is not None  # checked by listen
        listener = Listener(
            str(request.id),
            kinds,
            frozenset(uris),
            send,
            request.version,
            frozenset(task_ids),
            tenant=request.exchange.caller.tenant,
            account=request.exchange.caller.account,
        )
        exchange = request.exchange
        # Never fires: the stream lasts until the client goes (the transport cancels it) or
        # the server ends it (`end_subscriptions`, a revoked key); either way the listener leaves.
        d: Deferred[Any] = Deferred()
        claims = self._claim_listen(exchange, len(uris) + len(task_ids), d)
        ack = listener.tagged("notifications/subscriptions/acknowledged", {"notifications": honoured})
        self.trace("out", exchange, ack)  # type: ignore[attr-defined]
        send(ack)
        self.changes.listen(listener)
        listener.request = d

        def end(failure: Failure) -> Any:
            self.changes.leave(listener)
            for claim in claims:
                claim.release()
            return failure

        return d.addErrback(end)

    def _claim_listen(self, exchange: Any, followed: int, d: Deferred[Any]) -> list[Claim]:
        """A listen is a stream of its caller's, whatever carries it (an HTTP response, a
        WebSocket, stdio), and each URI or task it follows a subscription; `LimitExceeded` over
        a share."""
        caller: Caller = exchange.caller
        claims: list[Claim] = []
        if exchange.stream is None:
            exchange.stream = self.ledger.claim(
                caller.account, STREAM, peer=caller.peer, end=lambda _reason: d.cancel()
            )
            claims.append(exchange.stream)
        if followed:
            try:
                claims.append(self.ledger.claim(caller.account, SUBSCRIPTION, amount=followed, peer=caller.peer))
            except LimitExceeded:
                for claim in claims:
                    claim.release()
                exchange.stream = None
                raise
        return claims

    def _listened_tasks(self, request: Request, task_ids: Any) -> Deferred[list[str]]:
        """SEP-2663 §Task Status Notifications: task ids need the tasks extension declared."""
        if task_ids is None:
            return succeed([])
        if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
            raise InvalidParams("Invalid params: taskIds must be a list of task ids")
        if not TaskManager.declared(request):
            raise MissingClientCapability(
                f"Task status notifications need the {TASKS_EXTENSION} extension in clientCapabilities",
                data=NEEDS_TASKS,
            )
        # Only the caller's own tasks: another's status (and result) is not the caller's to hear.
        wanted = list(dict.fromkeys(task_ids))
        here = self.tasks.own_tasks(request, wanted)
        elsewhere = [task_id for task_id in wanted if task_id not in here]
        if not elsewhere or self.tasks.remote is None:
            return succeed(here)
        # Several instances: a task running on another one is the caller's if its record says
        # so; its status changes reach this instance's listeners (`mcpd.cluster.relay`).
        owner = TaskManager._owner(request)

        def owned(records: list[Any]) -> list[str]:
            theirs = {r.task_id for r in records if r is not None and r.modern and r.owner == owner}
            return [task_id for task_id in wanted if task_id in here or task_id in theirs]

        return gatherResults([self.tasks.store.get(task_id) for task_id in elsewhere], consumeErrors=True).addCallback(
            owned
        )

    def end_subscriptions(self, reason: str = "the server is shutting down") -> None:
        """Tell every modern listener its subscription is over (``notifications/cancelled``)."""
        for listener in list(self.changes.listeners):
            self.changes.leave(listener)
            listener.send(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": _request_id(listener.subscription_id), "reason": reason},
                }
            )
            if listener.request is not None:
                listener.request.cancel()  # no result follows: the request is over (in_flight drops)


def _completed(values: list[str]) -> Deferred[Any]:
    return maybeDeferred(lambda: {"completion": completion_values(values)})


def _request_id(subscription_id: str) -> Any:
    return int(subscription_id) if subscription_id.lstrip("-").isdigit() else subscription_id


__all__ = ["CancelledError", "Catalog", "MCPError"]


def _unfollow_failed(failure: Failure, uri: str) -> None:
    """Telling the other instances serving a session that it no longer follows ``uri`` failed."""
    log.failure("Unfollowing {uri} in the session's record failed", failure, uri=uri)


def _first_error(failure: Failure) -> Failure:
    """The failure of the first of several reads that failed (not gatherResults' wrapper)."""
    failure.trap(FirstError)
    return failure.value.subFailure  # type: ignore[no-any-return]


def _readable(value: Any, uri: str, mime_type: str | None) -> None:
    """Nothing, if what a resource reader returned is a resource; else resources/read's refusal."""
    if isinstance(value, dict) and value.get("resultType") == "input_required":
        raise InvalidParams(f"Invalid params: {uri} cannot be read without input, so not followed")
    if not resource_contents(uri, mime_type, value):
        raise InvalidParams(f"Resource not found: {uri}", data={"uri": uri})


def _once_shared(shared: Deferred[Any] | None) -> dict[str, Any] | Deferred[dict[str, Any]]:
    """A session change's empty answer, given once the instances serving the session have it
    (`Session.changed`): a client told it was done must find it done on every instance, even if
    the one it went through stops right after answering."""
    return {} if shared is None else shared.addCallback(lambda _: {})

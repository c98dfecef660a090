# -*- test-case-name: tests.test_catalog -*-
"""Change notifications: list changes and resource updates, fanned out to whoever listens.

- Legacy era: every initialized session hears ``notifications/{tools,prompts,resources}/
  list_changed``, and ``notifications/resources/updated`` for the URIs it subscribed to with
  ``resources/subscribe``; they go out on the session's standalone channel (stdio, or the HTTP
  session's GET stream) (2025-11-25 server/resources §Subscriptions, §List Changed Notification).
- Modern era: a ``subscriptions/listen`` request registers a `Listener` that hears only the kinds
  it asked for, each notification tagged with its subscription id (2026-07-28
  basic/utilities/subscriptions).
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.defer import Deferred

if TYPE_CHECKING:
    from mcpd.protocol.session import Session

META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
LIST_KINDS = ("tools", "prompts", "resources")
# SubscriptionFilter members that name a list kind.
FILTER_FOR_KIND = {"tools": "toolsListChanged", "prompts": "promptsListChanged", "resources": "resourcesListChanged"}


@attrs.define(eq=False)
class Listener:
    """One modern ``subscriptions/listen`` stream: what it wants and how to reach it."""

    subscription_id: str
    kinds: frozenset[str]
    uris: frozenset[str]
    send: Callable[[dict[str, Any]], None]
    version: str | None = None
    # SEP-2663 §Task Status Notifications: the tasks this stream hears about.
    task_ids: frozenset[str] = frozenset()
    # The pending subscriptions/listen request; cancelling it ends the stream.
    request: Deferred[Any] | None = None
    # The caller's tenant: it hears only of its tenant's records.
    tenant: str | None = None
    # Whom the stream is counted against (its key's, for `account_lists_changed`).
    account: str | None = None

    def tagged(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        body = dict(params or {})
        body["_meta"] = {META_SUBSCRIPTION_ID: self.subscription_id}
        return {"jsonrpc": "2.0", "method": method, "params": body}


class ChangeFeed:
    """Who hears about changes; `list_changed` and `resource_updated` tell them."""

    def __init__(self, trace: Callable[[str, str | None, dict[str, Any]], None] | None = None) -> None:
        self.sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self.listeners: set[Listener] = set()
        # Called with (peer, version, message) for every notification sent: the protocol trace.
        self.trace = trace
        # Several instances: tells the others of each change made here (what, and its
        # arguments with a ``change`` id); they deliver it with that id (`mcpd.cluster.relay`).
        self.relay: Callable[[str, dict[str, Any]], None] | None = None

    def _relayed(self, what: str, args: dict[str, Any], change: str | None) -> str | None:
        """The id of this change: new (and relayed to the other instances) when it was made
        here, ``change`` when another instance relayed it; None for one process."""
        if self.relay is None or change is not None:
            return change
        change = secrets.token_hex(8)
        self.relay(what, {**args, "change": change})
        return change

    def join(self, session: Session) -> None:
        """A legacy session completed its handshake: it hears list changes from now on."""
        self.sessions.add(session)

    def listen(self, listener: Listener) -> None:
        self.listeners.add(listener)

    def leave(self, listener: Listener) -> None:
        self.listeners.discard(listener)

    def list_changed(self, kind: str, change: str | None = None) -> None:
        """The list of ``kind`` (tools, prompts, resources) changed."""
        if kind not in LIST_KINDS:
            raise ValueError(f"list kind must be one of {', '.join(LIST_KINDS)}")
        change = self._relayed("list_changed", {"kind": kind}, change)
        method = f"notifications/{kind}/list_changed"
        self._to_sessions(self._live_sessions(), {"jsonrpc": "2.0", "method": method}, change)
        for listener in list(self.listeners):
            if kind in listener.kinds:
                self._send(listener, listener.tagged(method))

    def account_lists_changed(self, account: str, kinds: Iterable[str]) -> None:
        """What ``account`` may see changed (its key's scopes did, on reload): the list changes
        of ``kinds`` to its sessions and streams only. Not relayed: every instance reloads its
        own keys and tells what it serves."""
        sessions = [session for session in self._live_sessions() if session.account == account]
        listeners = [listener for listener in self.listeners if listener.account == account]
        for kind in kinds:
            method = f"notifications/{kind}/list_changed"
            self._to_sessions(sessions, {"jsonrpc": "2.0", "method": method}, None)
            for listener in listeners:
                if kind in listener.kinds:
                    self._send(listener, listener.tagged(method))

    def resource_updated(self, uri: str, tenant: str | None = None, change: str | None = None) -> None:
        """The resource at ``uri`` changed: tell its subscribers (those of ``tenant`` only, when
        the resource is a tenant's record: no update reaches another tenant's client)."""
        change = self._relayed("resource_updated", {"uri": uri, "tenant": tenant}, change)
        note = {"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": uri}}
        self._to_sessions(
            (
                s
                for s in self._live_sessions()
                if uri in s.subscriptions and (tenant is None or s.subscriptions_tenant == tenant)
            ),
            note,
            change,
        )
        for listener in list(self.listeners):
            if uri in listener.uris and (tenant is None or listener.tenant == tenant):
                self._send(listener, listener.tagged("notifications/resources/updated", {"uri": uri}))

    def task_status(self, task_id: str, task: dict[str, Any], change: str | None = None) -> None:
        """A modern task changed: ``notifications/tasks`` with its detailed state, to the
        streams that named it (SEP-2663 §Task Status Notifications)."""
        self._relayed("task_status", {"task_id": task_id, "task": task}, change)
        for listener in list(self.listeners):
            if task_id in listener.task_ids:
                self._send(listener, listener.tagged("notifications/tasks", task))

    def _live_sessions(self) -> list[Session]:
        return [session for session in list(self.sessions) if not session.closed and session.initialized]

    def _to_sessions(self, sessions: Iterable[Session], message: dict[str, Any], change: str | None) -> None:
        for session in sessions:
            if self.trace is not None:
                self.trace(f"session:{session.id}", session.version, message)
            if change is None:
                session.push(message)
            else:
                session.push_change(message, change)

    def _send(self, listener: Listener, message: dict[str, Any]) -> None:
        if self.trace is not None:
            self.trace(f"listen:{listener.subscription_id}", listener.version, message)
        listener.send(message)

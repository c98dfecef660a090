# -*- test-case-name: tests.test_sqlstore -*-
"""Implementations of the store interfaces of `mcpd.interfaces`: `mcpd.stores.memory` (in this
process, the default), `mcpd.stores.sql` (the SQL store of the tasks and notes packs),
`mcpd.stores.milvus` (the search index), `mcpd.stores.embedders`; and `StoreSet`, which one
provides each interface. A store imports only the interfaces and its own libraries; each blocking
store runs its work in a thread pool of its own."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mcpd.interfaces import IStore


class StoreSet:
    """The stores a daemon runs, by the interfaces they provide (``ctx.store(ITaskBoard)``)."""

    def __init__(self) -> None:
        self._by_interface: dict[Any, Any] = {}
        self._stores: list[Any] = []
        self._optional: list[Any] = []
        self._watched: list[Any] = []

    def add(self, store: Any, interfaces: Iterable[Any], required: bool = True) -> None:
        """Register ``store`` (an `IStore`) as the provider of ``interfaces``; one not
        ``required`` being down leaves the daemon degraded, not unhealthy (the search index)."""
        if store not in self._stores:
            self._stores.append(store)
        if not required and store not in self._optional:
            self._optional.append(store)
        for interface in interfaces:
            self._by_interface[interface] = store

    def get(self, interface: Any) -> Any:
        """The provider of ``interface``, or None."""
        return self._by_interface.get(interface)

    def watch(self, reporter: Any) -> None:
        """Report ``reporter`` (an `IHealthReporting` that is no store of records: the
        embedding service) in /health, as a check that is not required."""
        self._watched.append(reporter)

    def watched(self) -> list[Any]:
        return list(self._watched)

    def required(self, store: Any) -> bool:
        """Whether the daemon is unhealthy while ``store`` is down."""
        return store not in self._optional

    def providers(self) -> dict[Any, Any]:
        """Interface -> provider, for the engine's ``ctx.store(IThing)``."""
        return dict(self._by_interface)

    def provides(self, interface: Any) -> bool:
        return interface in self._by_interface

    def __iter__(self) -> Any:
        """Every store, each once (`IStore` providers first registered first)."""
        return iter([store for store in self._stores if IStore.providedBy(store)])

    def describe(self) -> list[dict[str, Any]]:
        """Each store's state, for server.info."""
        return [store.describe() for store in self]

# -*- test-case-name: tests.test_sqlstore -*-
"""Store implementations behind the seams of `mcpd.interfaces` (each blocking store runs its work
in a thread pool of its own), and `StoreSet`: which one provides each interface."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mcpd.interfaces import IStore


class StoreSet:
    """The stores a daemon runs, by the interfaces they provide (``ctx.store(ITaskBoard)``)."""

    def __init__(self) -> None:
        self._by_interface: dict[Any, Any] = {}
        self._stores: list[Any] = []

    def add(self, store: Any, interfaces: Iterable[Any]) -> None:
        """Register ``store`` (an `IStore`) as the provider of ``interfaces``."""
        if store not in self._stores:
            self._stores.append(store)
        for interface in interfaces:
            self._by_interface[interface] = store

    def get(self, interface: Any) -> Any:
        """The provider of ``interface``, or None."""
        return self._by_interface.get(interface)

    def provides(self, interface: Any) -> bool:
        return interface in self._by_interface

    def __iter__(self) -> Any:
        """Every store, each once (`IStore` providers first registered first)."""
        return iter([store for store in self._stores if IStore.providedBy(store)])

    def describe(self) -> list[dict[str, Any]]:
        """Each store's state, for server.info."""
        return [store.describe() for store in self]

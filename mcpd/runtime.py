# -*- test-case-name: tests.test_server_pack -*-
"""What a running mcpd knows about itself: settings, tools, listeners, uptime."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import attrs
from zope.interface import implementer

from mcpd._version import __version__
from mcpd.interfaces import IRuntime
from mcpd.protocol.versions import LEGACY_VERSIONS, MODERN_VERSIONS
from mcpd.stores import StoreSet

if TYPE_CHECKING:
    from mcpd.config import Settings
    from mcpd.tools.pack import ToolRegistry


@implementer(IRuntime)
@attrs.define
class Runtime:
    """The daemon's view of itself, shared by the engine and the tools that introspect it."""

    settings: Settings
    registry: ToolRegistry
    # The stores the packs reach through ``ctx.store(I)``.
    stores: StoreSet = attrs.field(factory=StoreSet)
    started: float = attrs.field(factory=time.time)
    listeners: list[str] = attrs.field(factory=list)
    transports: list[str] = attrs.field(factory=list)
    version: str = __version__

    def uptime(self) -> float:
        """Seconds since the daemon started."""
        return max(0.0, time.time() - self.started)

    def protocol_versions(self) -> dict[str, list[str]]:
        """The protocol versions served, by era."""
        return {"legacy": list(LEGACY_VERSIONS), "modern": list(MODERN_VERSIONS)}

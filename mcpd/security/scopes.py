# -*- test-case-name: tests.test_scopes -*-
"""Which tools a key's scopes allow: the engine's tool filter when keys are configured.

- ``read``: tools annotated read-only (``readOnlyHint: true``);
- ``write``: those, and tools that change things but say they are not destructive
  (``destructiveHint: false``);
- ``admin``: everything, including server introspection (the ``server`` pack) and tools that are
  destructive (MCP's default for a tool that does not say otherwise);
- any other word names a tool or a toolset (pack) the key may call.

A key's scopes bound everything it can read, not only what it can call: a pack's resources,
resource templates, prompts and completions are open to a key that may call at least one of the
pack's read-only tools (so ``read``, ``write``, ``admin``, the pack's name or that one tool); those
of the admin packs need ``admin`` or the pack's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpd.tools.api import Caller, Tool

if TYPE_CHECKING:
    from mcpd.tools.pack import ToolRegistry

READ, WRITE, ADMIN = "read", "write", "admin"
# Packs that introspect or steer the server itself: admin only.
ADMIN_PACKS = frozenset({"server"})
_GRANTS = {READ: frozenset({READ, WRITE}), WRITE: frozenset({WRITE}), ADMIN: frozenset()}


def tool_level(tool: Tool, pack: str | None) -> str:
    """The scope a tool needs: read, write or admin."""
    if pack in ADMIN_PACKS:
        return ADMIN
    hints = tool.annotations
    if hints is not None and hints.read_only:
        return READ
    if hints is not None and hints.destructive is False:
        return WRITE
    return ADMIN


def narrowed(old: frozenset[str], new: frozenset[str]) -> bool:
    """Whether a key whose scopes went from ``old`` to ``new`` may now be refused something it
    was allowed (``admin`` allows everything, ``write`` everything ``read`` does)."""
    if ADMIN in new:
        return False
    lost = old - new
    if WRITE in new:
        lost -= {READ}
    return bool(lost)


class ScopePolicy:
    """``policy(caller, tool)``: whether a caller's scopes let it see and call ``tool``;
    ``policy.allows_entry(caller, entry)``: whether they let it see a pack's resource, template
    or prompt."""

    def __init__(self, registry: ToolRegistry) -> None:
        self.registry = registry
        # allows_entry's answer by (scopes, pack): scope sets come from the key file only, so
        # this holds a few entries per configured key, and the registry does not change.
        self._opens: dict[tuple[frozenset[str], str | None], bool] = {}

    def allows_entry(self, caller: Caller, entry: object) -> bool:
        """Whether a caller may see (list, read, subscribe to, complete, get) a resource,
        template or prompt: if it may call one of its pack's read-only tools, or, for the admin
        packs (server introspection), has ``admin`` or the pack's name."""
        scopes = caller.scopes
        pack = self.registry.entry_pack(entry)
        try:
            return self._opens[scopes, pack]
        except KeyError:
            opens = self._opens[scopes, pack] = self._pack_opens(scopes, pack)
            return opens

    def _pack_opens(self, scopes: frozenset[str], pack: str | None) -> bool:
        if ADMIN in scopes or (pack is not None and pack in scopes):
            return True
        if pack is None or pack in ADMIN_PACKS:
            return False
        caller = Caller(scopes=scopes)
        return any(
            self.registry.pack_of(tool.name) == pack and tool_level(tool, pack) == READ and self(caller, tool)
            for tool in self.registry.tools
        )

    def __call__(self, caller: Caller, tool: Tool) -> bool:
        scopes = caller.scopes
        if ADMIN in scopes or tool.name in scopes:
            return True
        try:
            pack: str | None = self.registry.pack_of(tool.name)
        except KeyError:
            pack = None
        if pack is not None and pack in scopes:
            return True
        granted_by = _GRANTS[tool_level(tool, pack)]
        return not granted_by.isdisjoint(scopes)

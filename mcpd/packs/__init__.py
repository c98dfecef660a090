"""The built-in tool packs, one module (or package) each, chosen with ``--toolsets``, and the
helpers only they use (``chunking``); the packs that keep records (``tasks``, ``notes``) hold no
SQL.

A pack imports only the pack-author API (`mcpd.tools`) and the interfaces of the stores it
declares in ``ToolPack(needs=...)`` (`mcpd.interfaces`); it reaches them with
``ctx.store(IThing)``.
"""

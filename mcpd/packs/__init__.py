"""The built-in tool packs and the helpers only they use; the packs that keep records
(``tasks``, ``notes``) one module each.

A pack here is schemas and thin handlers: it names the stores it needs
(``ToolPack(..., stores=(ITaskBoard,))``), gets them with ``ctx.store(ITaskBoard)``, and holds no
SQL. Packs import only `mcpd.tools` and `mcpd.interfaces`.
"""

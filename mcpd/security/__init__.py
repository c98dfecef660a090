"""The HTTP policy layer: one layer around every network transport that decides, for each
connection and each request, who is calling, whether they may, and whether a limit is reached
(see docs/security.rst). `mcpd.security.layer.Security` assembles it from the settings."""

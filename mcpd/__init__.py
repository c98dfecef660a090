"""mcpd: a Model Context Protocol server daemon on Twisted."""

from mcpd._version import __version__

__all__ = ["__version__"]

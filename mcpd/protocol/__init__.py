"""MCP without a transport: JSON-RPC framing, errors, versions and the dispatching engine."""

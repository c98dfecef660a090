"""Observing the daemon: the audit trail (and, later, metrics and structured logs)."""

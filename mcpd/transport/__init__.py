"""Transports: each adapts bytes to the engine and back, nothing more."""

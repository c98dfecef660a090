"""Store implementations behind the seams of `mcpd.interfaces`; each blocking store runs its
work in a thread pool of its own."""

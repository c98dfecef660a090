# -*- test-case-name: tests.test_cluster -*-
"""Several mcpd instances acting as one server, through Redis (``--redis-url``).

- `bus`: the instances' messages to each other (Redis pub/sub: a channel per instance, one
  for everyone, one per stream being read) and request/reply over it.
- `instances`: who is running (a key per instance, refreshed while it lives) and the start-up
  check that refuses embedded stores several instances cannot share.
- `journal`: the events of legacy-session SSE streams, kept in Redis streams for the replay
  window, so ``Last-Event-ID`` resumes on any instance.
- `sessions`: legacy sessions usable from any instance (records, pushes to whoever reads the
  session's stream, answers to server-to-client requests, HTTP+SSE messages forwarded to the
  stream's instance).
- `relay`: change notifications and task commands between instances.

Without ``--redis-url`` nothing here is built and one process behaves as it always did.
"""

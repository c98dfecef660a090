# -*- test-case-name: tests.test_redis -*-
"""The Redis store (``--redis-url``): the state several mcpd instances share, and the cache pack.

`RedisConnection` (`mcpd.stores.redis.connection`) is the service owning the connection to one
Redis server; the stores built on it provide the interfaces of `mcpd.interfaces` that the
in-process stores (`mcpd.stores.memory`) provide by default. Everything goes through txredisapi:
nothing here blocks the reactor.
"""

from __future__ import annotations

from mcpd.stores.redis.config import RedisConfig, RedisConfigError, redis_config
from mcpd.stores.redis.connection import RedisConnection

__all__ = ["RedisConfig", "RedisConfigError", "RedisConnection", "redis_config"]

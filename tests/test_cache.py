# -*- test-case-name: tests.test_cache -*-
"""The cache: the Redis `ICache` runs the suite the in-process one runs (tests/test_stores.py),
on a real redis-server; the ``cache`` pack in memory (`mcpd.testing.PackHarness`); and the pack
through the official SDK over HTTP on both backends, with two tenants."""

from __future__ import annotations

import time
from typing import Any

import anyio
from mcp import Client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from mcpd.config import ConfigError, resolve
from mcpd.daemon import cache_store
from mcpd.interfaces import ICache, StoreError
from mcpd.packs.cache import pack
from mcpd.stores.memory import MemoryCache, glob_regex
from mcpd.stores.redis.cache import RedisCache
from mcpd.testing import CacheTests, PackHarness
from mcpd.tools import Caller
from tests.daemon import LEGACY, MODERN, DaemonTestCase, run_anyio
from tests.redis_service import shared_redis, unique_prefix
from tests.test_packs import error_text, structured
from tests.test_redis_stores import RedisSuite

CACHE_TOOLS = {"cache.get", "cache.set", "cache.delete", "cache.scan", "cache.incr"}


class RedisCacheTests(RedisSuite, CacheTests, SynchronousTestCase):
    def make_cache(self, clock: Clock) -> Any:
        return RedisCache(self.connection())

    def pass_time(self, seconds: float) -> None:
        time.sleep(seconds)  # Redis keeps its own time

    def test_every_key_has_a_ttl_and_its_tenant_in_its_name(self) -> None:
        connection = self.cache.connection
        self.settled(self.cache.set("team a", "k", "1", 60))
        self.settled(self.cache.incr("team a", "n", 1, None))
        names = self.settled(connection.execute("KEYS", connection.key("*")))
        self.assertEqual(
            sorted(names), [connection.key("cache", "team%20a", "k"), connection.key("cache", "team%20a", "n")]
        )
        for name in names:
            self.assertGreater(int(self.settled(connection.execute("TTL", name))), 0)

    def test_a_forged_scan_position_is_an_invalid_cursor(self) -> None:
        """The position inside a cursor comes back from the client: a Redis cursor beyond 64
        bits, or digits that are not ASCII, is refused as a cursor the server did not give out
        (not sent to Redis, whose refusal would read as a bug in mcpd)."""
        self.settled(self.cache.set("t", "k", "1", 60))
        for forged in ("18446744073709551616", "9" * 5000, "\u00b2", "-1", "", "1.5"):
            failure = self.refused(self.cache.scan("t", "*", 10, {"c": forged, "k": []}), StoreError)
            self.assertIn("not one this server gave out", failure.getErrorMessage())
        # Nor a position of another shape, or pending keys no scan gave out (they would be listed).
        for position in ("0", 7, True, [1, 2], {"c": "0", "k": "k"}, {"c": "0", "k": [1]}, {"c": "0", "k": ["\ud800"]}):
            failure = self.refused(self.cache.scan("t", "*", 10, position), StoreError)
            self.assertIn("not one this server gave out", failure.getErrorMessage(), position)
        self.refused(self.cache.scan("t", "*", 10, {"c": "0", "k": ["x" * 513]}), StoreError)
        self.assertEqual(self.settled(self.cache.scan("t", "*", 10, {"c": "0", "k": ["x" * 512]})), (["x" * 512], None))
        self.assertEqual(self.settled(self.cache.scan("t", "*", 10, {"c": "18446744073709551615", "k": []}))[1], None)

    def test_a_page_holds_no_more_than_its_limit_when_redis_gives_more(self) -> None:
        for i in range(300):
            self.settled(self.cache.set("t", f"k{i}", "1", 60))
        seen: list[str] = []
        position = None
        while True:
            keys, position = self.settled(self.cache.scan("t", "*", 7, position))
            self.assertLessEqual(len(keys), 7)
            seen.extend(keys)
            if position is None:
                break
        self.assertEqual(set(seen), {f"k{i}" for i in range(300)})


ALICE = Caller(name="alice", scopes=frozenset({"read", "write"}), tenant="acme")
BOB = Caller(name="bob", scopes=frozenset({"read", "write"}), tenant="globex")


class CachePackTests(SynchronousTestCase):
    """The five tools over the in-process cache: results, their schemas, errors a model can act on."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = MemoryCache(self.clock, default_ttl=3600, max_ttl=7200, max_value=100)
        self.harness = PackHarness(pack, stores={ICache: self.cache}, caller=ALICE, clock=self.clock)

    def call(self, name: str, arguments: dict[str, Any], caller: Caller = ALICE) -> dict[str, Any]:
        result: dict[str, Any] = self.successResultOf(self.harness.call(name, arguments, caller=caller))
        self.assertEqual(self.harness.output_problems(name, result), [])
        return result

    def structured(self, name: str, arguments: dict[str, Any], caller: Caller = ALICE) -> dict[str, Any]:
        result = self.call(name, arguments, caller)
        self.assertFalse(result.get("isError"), result)
        structured: dict[str, Any] = result["structuredContent"]
        return structured

    def error(self, name: str, arguments: dict[str, Any], caller: Caller = ALICE) -> str:
        result = self.call(name, arguments, caller)
        self.assertTrue(result.get("isError"), result)
        text: str = result["content"][0]["text"]
        return text

    def test_five_tools_with_annotations(self) -> None:
        tools = {tool.name: tool for tool in pack.tools}
        self.assertEqual(sorted(tools), ["cache.delete", "cache.get", "cache.incr", "cache.scan", "cache.set"])
        self.assertTrue(tools["cache.get"].annotations.read_only)
        self.assertTrue(tools["cache.delete"].annotations.destructive)
        self.assertFalse(tools["cache.incr"].annotations.idempotent)
        for tool in tools.values():
            self.assertIn("Example:", tool.description)
            self.assertFalse(tool.input_schema["additionalProperties"])

    def test_json_values_round_trip(self) -> None:
        for value in ({"a": [1, 2.5, None, True, "é"]}, [1, "two"], "text", 42, 0.5, False, None):
            self.assertEqual(self.structured("cache.set", {"key": "k", "value": value}), {"stored": True, "ttl": 3600})
            self.assertEqual(self.structured("cache.get", {"key": "k"}), {"found": True, "value": value, "ttl": 3600})
        self.assertEqual(self.structured("cache.get", {"key": "nope"}), {"found": False, "value": None, "ttl": None})

    def test_ttl_is_capped_and_counts_down(self) -> None:
        self.assertEqual(self.structured("cache.set", {"key": "k", "value": 1, "ttl": 999_999})["ttl"], 7200)
        self.clock.advance(200)
        self.assertEqual(self.structured("cache.get", {"key": "k"})["ttl"], 7000)
        self.clock.advance(7000)
        self.assertFalse(self.structured("cache.get", {"key": "k"})["found"])
        self.assertIn("minimum", self.error("cache.set", {"key": "k", "value": 1, "ttl": 0}))

    def test_value_size_limit(self) -> None:
        self.structured("cache.set", {"key": "k", "value": "x" * 98})  # 100 bytes with its quotes
        text = self.error("cache.set", {"key": "k", "value": "x" * 99})
        self.assertIn("101 bytes", text)
        self.assertIn("limit of 100", text)
        self.assertIn("NaN", self.error("cache.set", {"key": "k", "value": float("nan")}))
        self.assertIn("lone surrogate", self.error("cache.set", {"key": "k", "value": "\ud800"}))
        self.assertIn("lone surrogate", self.error("cache.get", {"key": "\ud800"}))

    def test_incr(self) -> None:
        self.assertEqual(self.structured("cache.incr", {"key": "n"}), {"value": 1})
        self.assertEqual(self.structured("cache.incr", {"key": "n", "by": -5, "ttl": 60}), {"value": -4})
        self.assertEqual(self.structured("cache.get", {"key": "n"}), {"found": True, "value": -4, "ttl": 60})
        self.structured("cache.set", {"key": "s", "value": "five"})
        self.assertIn("holds no integer", self.error("cache.incr", {"key": "s"}))
        self.assertIn("maximum", self.error("cache.incr", {"key": "n", "by": 2**63}))

    def test_delete(self) -> None:
        self.structured("cache.set", {"key": "k", "value": 1})
        self.assertEqual(self.structured("cache.delete", {"key": "k"}), {"deleted": True})
        self.assertEqual(self.structured("cache.delete", {"key": "k"}), {"deleted": False})

    def test_scan_pages_and_its_cursor_is_the_tenant_s_own(self) -> None:
        for i in range(5):
            self.structured("cache.set", {"key": f"r:{i}", "value": i})
        self.structured("cache.set", {"key": "other", "value": 0})
        first = self.structured("cache.scan", {"pattern": "r:*", "limit": 3})
        self.assertEqual(first["keys"], ["r:0", "r:1", "r:2"])
        second = self.structured("cache.scan", {"pattern": "r:*", "limit": 3, "cursor": first["next_cursor"]})
        self.assertEqual(second, {"keys": ["r:3", "r:4"], "next_cursor": None})
        self.assertIn("another listing", self.error("cache.scan", {"pattern": "*", "cursor": first["next_cursor"]}))
        self.assertIn(
            "another listing", self.error("cache.scan", {"pattern": "r:*", "cursor": first["next_cursor"]}, BOB)
        )
        self.assertIn("not one this server gave out", self.error("cache.scan", {"cursor": "garbage!"}))

    def test_tenants_never_meet(self) -> None:
        self.structured("cache.set", {"key": "plan", "value": "acme's"})
        self.assertEqual(self.structured("cache.get", {"key": "plan"}, BOB)["found"], False)
        self.assertEqual(self.structured("cache.scan", {}, BOB), {"keys": [], "next_cursor": None})
        self.assertEqual(self.structured("cache.delete", {"key": "plan"}, BOB), {"deleted": False})
        self.assertEqual(self.structured("cache.incr", {"key": "plan"}, BOB), {"value": 1})
        self.assertEqual(self.structured("cache.get", {"key": "plan"})["value"], "acme's")

    def test_a_full_in_process_cache_says_what_to_do(self) -> None:
        harness = PackHarness(pack, stores={ICache: MemoryCache(self.clock, max_keys=1)}, caller=ALICE)
        self.successResultOf(harness.call("cache.set", {"key": "a", "value": 1}))
        result = self.successResultOf(harness.call("cache.set", {"key": "b", "value": 1}))
        self.assertTrue(result["isError"])
        self.assertIn("--cache-max-keys", result["content"][0]["text"])


# -- the pack through the official SDK, over HTTP, on both backends -----------------------------

KEYS = {"alice": ("alice-key", "acme"), "eve": ("eve-key", "globex")}


class _CacheOverHTTP:
    """Two tenants' clients on one daemon call the five tools as a model would."""

    mode: str
    workdir: Any
    start_daemon: Any
    in_thread: Any
    assertEqual: Any
    assertIn: Any
    assertTrue: Any
    assertLessEqual: Any

    def backend_args(self) -> list[str]:
        return []

    def check_backend(self) -> None:
        """What the scenario left where the backend keeps it."""

    def test_two_tenants_through_the_sdk(self) -> Deferred[None]:
        key_file = self.workdir / "keys"
        key_file.write_text("".join(f"{name}:{key}::{tenant}\n" for name, (key, tenant) in KEYS.items()))
        daemon = self.start_daemon(
            "--api-key-file",
            str(key_file),
            "--toolsets",
            "server,cache",
            "--cache-default-ttl",
            "60",
            "--cache-max-ttl",
            "120",
            "--cache-max-value",
            "1000",
            *self.backend_args(),
            fixture_pack=False,
        )

        def client(name: str) -> Any:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {KEYS[name][0]}"})
            return Client(streamable_http_client(daemon.url, http_client=http), mode=self.mode)

        async def main() -> None:
            with anyio.fail_after(60):
                async with client("alice") as alice, client("eve") as eve:
                    await self.scenario(alice, eve)
            self.check_backend()

        return self.in_thread(lambda: run_anyio(main))

    async def scenario(self, alice: Client, eve: Client) -> None:
        tools = {tool.name for tool in (await alice.list_tools()).tools}
        self.assertEqual({name for name in tools if name.startswith("cache.")}, CACHE_TOOLS)
        value = {"total": 42, "rows": [1, 2.5, None, "é"], "ok": True}
        self.assertEqual(
            structured(await alice.call_tool("cache.set", {"key": "plan", "value": value, "ttl": 60})),
            {"stored": True, "ttl": 60},
        )
        got = structured(await alice.call_tool("cache.get", {"key": "plan"}))
        self.assertEqual((got["found"], got["value"]), (True, value))
        self.assertTrue(0 < got["ttl"] <= 60)
        # The operator's cap, and the value size limit.
        self.assertEqual(
            structured(await alice.call_tool("cache.set", {"key": "long", "value": 1, "ttl": 9999}))["ttl"], 120
        )
        self.assertIn(
            "limit of 1000", error_text(await alice.call_tool("cache.set", {"key": "big", "value": "x" * 2000}))
        )
        for _ in range(3):
            counted = structured(await alice.call_tool("cache.incr", {"key": "hits"}))
        self.assertEqual(counted, {"value": 3})
        self.assertIn("holds no integer", error_text(await alice.call_tool("cache.incr", {"key": "plan"})))
        # Counts come back exact beyond 10^14 and a double's 53 bits, to the 64-bit edges; a
        # step beyond is a tool error naming the range, and the count stays as it was.
        for start, by, expected in ((10**14 - 1, 1, 10**14), (2**53, 1, 2**53 + 1), (0, -(2**63), -(2**63))):
            await alice.call_tool("cache.set", {"key": "hits", "value": start})
            counted = structured(await alice.call_tool("cache.incr", {"key": "hits", "by": by}))
            self.assertEqual(counted, {"value": expected})
        await alice.call_tool("cache.set", {"key": "hits", "value": 2**63 - 1})
        self.assertIn("64-bit integer range", error_text(await alice.call_tool("cache.incr", {"key": "hits"})))
        self.assertEqual(structured(await alice.call_tool("cache.get", {"key": "hits"}))["value"], 2**63 - 1)
        for i in range(5):
            await alice.call_tool("cache.set", {"key": f"page:{i}", "value": i})
        seen: list[str] = []
        arguments: dict[str, Any] = {"pattern": "page:*", "limit": 2}
        cursor = None
        for _ in range(20):
            page = structured(
                await alice.call_tool("cache.scan", {**arguments, **({"cursor": cursor} if cursor else {})})
            )
            self.assertLessEqual(len(page["keys"]), 2)
            seen.extend(page["keys"])
            if cursor is None:
                first_cursor = page["next_cursor"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        self.assertEqual(set(seen), {f"page:{i}" for i in range(5)})

        # Eve sees none of it, by any tool, pattern or cursor of Alice's.
        self.assertEqual(structured(await eve.call_tool("cache.get", {"key": "plan"}))["found"], False)
        self.assertEqual(
            structured(await eve.call_tool("cache.scan", {"pattern": "*"})), {"keys": [], "next_cursor": None}
        )
        self.assertIn(
            "another listing", error_text(await eve.call_tool("cache.scan", {**arguments, "cursor": first_cursor}))
        )
        self.assertEqual(structured(await eve.call_tool("cache.delete", {"key": "plan"})), {"deleted": False})
        self.assertEqual(structured(await eve.call_tool("cache.incr", {"key": "hits"})), {"value": 1})
        structured(await eve.call_tool("cache.set", {"key": "plan", "value": "eve's"}))
        self.assertEqual(structured(await alice.call_tool("cache.get", {"key": "plan"}))["value"], value)
        self.assertEqual(structured(await alice.call_tool("cache.delete", {"key": "plan"})), {"deleted": True})
        self.assertEqual(structured(await eve.call_tool("cache.get", {"key": "plan"}))["value"], "eve's")


# The keys the scenario leaves, by tenant.
EXPECTED_KEYS = [
    ("acme", "long"),
    ("acme", "hits"),
    *(("acme", f"page:{i}") for i in range(5)),
    ("globex", "hits"),
    ("globex", "plan"),
]


class InProcessCacheOverHTTPModern(_CacheOverHTTP, DaemonTestCase):
    mode = MODERN
    timeout = 90


class InProcessCacheOverHTTPLegacy(_CacheOverHTTP, DaemonTestCase):
    mode = LEGACY
    timeout = 90


class _RedisBackend:
    assertEqual: Any
    prefix = ""

    def backend_args(self) -> list[str]:
        self.prefix = unique_prefix()
        return ["--redis-url", shared_redis().url_of(0), "--redis-prefix", self.prefix]

    def check_backend(self) -> None:
        keys = shared_redis().cli("--scan", "--pattern", f"{self.prefix}cache:*").split()
        self.assertEqual(sorted(keys), sorted(f"{self.prefix}cache:{tenant}:{key}" for tenant, key in EXPECTED_KEYS))


class RedisCacheOverHTTPModern(_RedisBackend, _CacheOverHTTP, DaemonTestCase):
    mode = MODERN
    timeout = 90


class RedisCacheOverHTTPLegacy(_RedisBackend, _CacheOverHTTP, DaemonTestCase):
    mode = LEGACY
    timeout = 90


class CacheSettingsTests(SynchronousTestCase):
    def test_a_default_ttl_beyond_the_maximum_is_refused(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            resolve({}, {"CACHE_DEFAULT_TTL": "7200", "CACHE_MAX_TTL": "3600"}, {})
        self.assertIn("--cache-default-ttl 7200 is longer than --cache-max-ttl 3600", str(caught.exception))

    def test_the_daemon_picks_the_backend(self) -> None:
        settings = resolve({}, {"CACHE_MAX_VALUE": "10", "CACHE_MAX_KEYS": "3"}, {})
        cache = cache_store(settings, Clock(), None)
        self.assertIsInstance(cache, MemoryCache)
        self.assertEqual((cache.max_value, cache.max_keys, cache.default_ttl), (10, 3, 3600))


class GlobTests(SynchronousTestCase):
    """The in-process cache matches patterns exactly as Redis does (checked against a real
    redis-server), in bounded time."""

    KEYS = (
        "user:1", "user:2", "user:10", "a*b", "a?b", "a]b", "ab", "abab", "abXab", "h]", "x-y", "X", "é:1", "a\\b",
        "]", "^", "_", "`", "a", "b", "!", "-", "\\", "[", "ax", "]x", "é", "ü", "~", "\x7f", "a-", "!a",
    )  # fmt: skip
    PATTERNS = (
        "*", "user:*", "user:?", "user:[12]", "user:[^1]", "*:1", "a\\*b", "a?b", "a[*?]b", "[a-c]*", "[c-a]*",
        "*ab*ab", "a*b", "*b*", "h[\\]]", "x[-]y", "[^a-z]", "é*", "a\\\\b", "??", "[]*", "*[",
        # Redis' edges (stringmatchlen): a range takes the byte after "-" even when it is "]", an
        # unclosed class runs to the end, "!" is no negation, "?" is one byte, ranges are signed.
        "[a-]", "[a-]x", "[a-]*", "[]", "[^]", "[!a]", "[!a]*", "[^a]", "[^a]*", "[\\]]", "[a-\\]", "[\\-a]",
        "[\\", "\\", "*\\", "[abc", "a[", "[^", "[-a]", "[a-c-e]", "?", "??:1", "?:1", "[é]", "[é]:1",
        "[a-é]", "[é-a]", "[^é]", "[~-\x7f]", "[\x7f-é]", "[]a]", "[^]a]", "x[a-]", "[a-]]",
    )  # fmt: skip

    def test_the_same_matches_as_redis(self) -> None:
        server = shared_redis()
        prefix = unique_prefix()
        for key in self.KEYS:
            server.cli("SET", prefix + key, "1", "EX", "60")
        for pattern in self.PATTERNS:
            redis = set(server.cli("--scan", "--pattern", prefix + pattern).splitlines()) - {""}
            ours = {prefix + key for key in self.KEYS if glob_regex(pattern).fullmatch(key.encode())}
            self.assertEqual(ours, redis, pattern)

    def test_no_pattern_takes_the_reactor_hostage(self) -> None:
        started = time.monotonic()
        self.assertIsNone(glob_regex("*a" * 200 + "*b").fullmatch(b"a" * 512))
        self.assertLess(time.monotonic() - started, 0.5)

"""Tests for `mcpd.web.ratelimit`: token buckets on a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mcpd.interfaces import IBucketStore
from mcpd.web.ratelimit import MemoryBucketStore, RateLimit, RateLimiter, retry_after


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = MemoryBucketStore(self.clock)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IBucketStore, self.store))

    def test_exactly_the_limit_per_window(self) -> None:
        limiter = RateLimiter(RateLimit(10, 60.0), self.store)
        results = [limiter.check("key:a") for _ in range(20)]
        self.assertEqual(sum(1 for wait in results if wait == 0), 10)
        self.assertAlmostEqual(results[10], 6.0)
        # Other clients have their own bucket.
        self.assertEqual(limiter.check("key:b"), 0)
        # One token comes back every window/limit seconds.
        self.clock.advance(6.0)
        self.assertEqual(limiter.check("key:a"), 0)
        self.assertGreater(limiter.check("key:a"), 0)
        # A whole window refills the bucket, never beyond its size.
        self.clock.advance(600)
        self.assertEqual(sum(1 for _ in range(20) if limiter.check("key:a") == 0), 10)

    def test_burst(self) -> None:
        limiter = RateLimiter(RateLimit(60, 60.0, burst=3), self.store)
        self.assertEqual([limiter.check("ip:x") == 0 for _ in range(4)], [True, True, True, False])
        self.clock.advance(1.0)
        self.assertEqual(limiter.check("ip:x"), 0)

    def test_retry_after(self) -> None:
        self.assertEqual(retry_after(0.01), 1)
        self.assertEqual(retry_after(5.2), 6)

    def test_idle_buckets_pruned(self) -> None:
        import mcpd.web.ratelimit as ratelimit

        self.patch(ratelimit, "_PRUNE_AT", 3)
        self.store = ratelimit.MemoryBucketStore(self.clock)
        for name in "abc":
            self.store.take(name, 2.0, 1.0)
        self.clock.advance(10)
        self.store.take("d", 2.0, 1.0)
        self.assertEqual(len(self.store), 1)

    def test_busy_buckets_make_the_next_prune_wait(self) -> None:
        import mcpd.web.ratelimit as ratelimit

        self.patch(ratelimit, "_PRUNE_AT", 3)
        self.store = ratelimit.MemoryBucketStore(self.clock)
        scans: list[int] = []
        prune = self.store._prune
        self.patch(self.store, "_prune", lambda *a: (scans.append(len(self.store)), prune(*a)))
        for name in "abcdefgh":  # all active: nothing can be pruned
            self.store.take(name, 2.0, 1.0)
        # A scan at 3 freed nothing; the next waits until the table has doubled (6 buckets).
        self.assertEqual(scans, [3, 6])
        self.assertEqual(len(self.store), 8)

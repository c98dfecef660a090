"""What one session sweep costs with ``--redis-url``: the records and GET streams of N live
Streamable HTTP sessions kept (`mcpd.cluster.sessions.ClusterSessions.refresh`).

Starts a redis-server (tests/redis_service.py), opens N sessions in a `SessionStore` with its
cluster, then runs ``--sweeps`` refreshes one after the other and prints, per sweep (median):
mcpd's CPU (this process), wall time until Redis answered everything, the commands (or scripts)
sent, and Redis' own CPU (INFO cpu)::

    .venv/bin/python bench/cluster_sweep.py --sessions 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=20)
    options = parser.parse_args()

    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred, inlineCallbacks
    from twisted.python.failure import Failure

    from mcpd.cluster.bus import ClusterBus
    from mcpd.cluster.instances import InstanceRegistry
    from mcpd.cluster.journal import Journal
    from mcpd.cluster.sessions import ClusterSessions
    from mcpd.protocol.changes import ChangeFeed
    from mcpd.protocol.session import SessionStore
    from mcpd.stores.redis import RedisConnection, redis_config
    from mcpd.stores.redis.sessions import RedisSessionStore
    from mcpd.transport.streamable import HTTPSession
    from tests.redis_service import RedisServer
    from tests.test_redis import answers_again

    server = RedisServer().start()

    def sleep(seconds: float) -> Deferred[None]:
        return task.deferLater(reactor, seconds, lambda: None)

    def sent(connection: RedisConnection) -> int:
        return int(
            sum(
                sample.value
                for metric in connection.metrics.duration.collect()
                for sample in metric.samples
                if sample.name.endswith("_count")
            )
        )

    def failed(connection: RedisConnection) -> int:
        return int(
            sum(
                sample.value
                for metric in connection.metrics.errors.collect()
                for sample in metric.samples
                if sample.name.endswith("_total")
            )
        )

    @inlineCallbacks
    def redis_cpu(connection: RedisConnection) -> Any:
        yield answers_again(connection, timeout=30.0)
        info = yield connection.execute("INFO", "cpu")
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return float(fields["used_cpu_sys"]) + float(fields["used_cpu_user"])

    @inlineCallbacks
    def run() -> Any:
        connection = RedisConnection(redis_config(server.url, prefix="sweep:"), reactor)
        connection.startService()
        bus = ClusterBus(connection, clock=reactor)
        yield bus.start(10.0)
        yield answers_again(connection)
        journal = Journal(bus, 16, 600.0)
        records = RedisSessionStore(connection, reactor, 600.0)
        sessions = SessionStore(reactor, 600.0, records=records)
        cluster = ClusterSessions(bus, journal, InstanceRegistry(bus, [], [], clock=reactor), sessions, ChangeFeed())
        sessions.cluster = cluster
        live = []
        for n in range(options.sessions):
            session = HTTPSession(f"sweep-{n}")
            session.version = "2025-11-25"
            sessions.add(session)
            live.append(session)
        while connection._outstanding:
            yield sleep(0.01)
        cpu, wall, commands, redis, errors = [], [], [], [], []
        for _ in range(options.sweeps):
            before_redis = yield redis_cpu(connection)
            before_sent, before_failed = sent(connection), failed(connection)
            wall_start, cpu_start = time.perf_counter(), time.process_time()
            cluster.refresh(live)
            while connection._outstanding:
                yield sleep(0.0005)
            wall.append(time.perf_counter() - wall_start)
            cpu.append(time.process_time() - cpu_start)
            commands.append(sent(connection) - before_sent)  # before the INFO below
            errors.append(failed(connection) - before_failed)
            redis.append((yield redis_cpu(connection)) - before_redis)
        print(
            f"{options.sessions} sessions, median of {options.sweeps} sweeps: "
            f"mcpd CPU {statistics.median(cpu) * 1000:.1f} ms, wall {statistics.median(wall) * 1000:.1f} ms, "
            f"{statistics.median(commands):.0f} commands/scripts, "
            f"Redis CPU {statistics.median(redis) * 1000:.1f} ms (and one INFO's); "
            f"failed commands (timeouts: --redis-timeout 2 s) per sweep {errors}",
            flush=True,
        )
        yield bus.stop()
        yield connection.stopService()

    def done(result: Any) -> None:
        if isinstance(result, Failure):
            result.printTraceback()
        server.destroy()
        reactor.stop()

    reactor.callWhenRunning(lambda: run().addBoth(done))
    reactor.run()


if __name__ == "__main__":
    main()

"""Benchmark of autorefresh: write throughput with immediate vs deferred refresh, and the worker's lag.

Usage::

    python bench/deferred.py [--url URL] [--rows 200000] [--seconds 5] [--writers 1 4] [--debounce 1] [--max-delay 30]

Without ``--url`` a throwaway PostgreSQL is started. The stack: a table ``events`` of ``--rows`` rows, a
materialized view ``PerKey`` (a ``GROUP BY`` over it, refreshed ``CONCURRENTLY``: it has a unique index) and a
materialized view ``TopKeys`` reading it. For each mode and each number of writer threads, every writer
inserts single rows, one transaction each, for ``--seconds``; the rate of committed inserts is printed. In
deferred mode a worker runs in the same process (its own connections) and every refresh's lag (first write
to fresh data) is collected; then a sparse phase (a write every 0.1-2 s) measures the lag that a steady
trickle of writes sees. Not a test: it asserts nothing and prints figures for docs/performance.md.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack

import sqlalchemy as sa

from alembic_samizdat import SamizdatMaterializedView, SamizdatRegistry
from alembic_samizdat.api import sync
from alembic_samizdat.worker import Refreshed, Worker


def registry_for(mode: str) -> SamizdatRegistry:
    """The two views, with ``refresh_mode = mode`` on the one the table's writes refresh."""

    class PerKey(SamizdatMaterializedView):
        refresh_triggers = {"events"}
        refresh_concurrently = True
        refresh_mode = mode
        sql_template = """${preamble}
            SELECT k, count(*) AS n, sum(v) AS total FROM events GROUP BY k
            ${postamble};
            CREATE UNIQUE INDEX ON ${samizdatname} (k)"""

    class TopKeys(SamizdatMaterializedView):
        deps_on = {PerKey}
        # Immediate mode refreshes it from the table's triggers too; deferred marks it with PerKey.
        refresh_triggers = {"events"} if mode == "immediate" else set()
        sql_template = '${preamble} SELECT k, total FROM "PerKey" ORDER BY total DESC LIMIT 10 ${postamble}'

    registry = SamizdatRegistry(scope="bench")
    registry.register_all(PerKey, TopKeys)
    return registry


def writers(engine: sa.Engine, count: int, seconds: float) -> float:
    """Inserts per second by ``count`` threads, each inserting one row per transaction for ``seconds``."""
    done = [0] * count
    stop = time.monotonic() + seconds

    def write(index: int) -> None:
        rng = random.Random(index)
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            while time.monotonic() < stop:
                conn.exec_driver_sql(
                    "INSERT INTO events (k, v) VALUES (%(k)s, %(v)s)", {"k": rng.randrange(1000), "v": rng.random()}
                )
                done[index] += 1

    threads = [threading.Thread(target=write, args=(i,)) for i in range(count)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.monotonic() - began)


def percentiles(values: Sequence[float]) -> str:
    if not values:
        return "no refresh"
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return (
        f"n={len(ordered)} p50 {at(0.5):.2f} s, p90 {at(0.9):.2f} s, p99 {at(0.99):.2f} s, "
        f"max {ordered[-1]:.2f} s, mean {statistics.fmean(ordered):.2f} s"
    )


def refresh_seconds(engine: sa.Engine) -> float:
    """How long one plain refresh of the stack takes (median of three)."""
    times = []
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for _ in range(3):
            began = time.perf_counter()
            conn.exec_driver_sql('REFRESH MATERIALIZED VIEW CONCURRENTLY "PerKey"')
            conn.exec_driver_sql('REFRESH MATERIALIZED VIEW "TopKeys"')
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", help="SQLAlchemy URL of an empty database (default: a throwaway server)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--debounce", type=float, default=1.0)
    parser.add_argument("--max-delay", type=float, default=30.0)
    parser.add_argument("--sparse-seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        url = args.url
        if url is None:
            from alembic_samizdat.pgserver import start_throwaway_server

            server = stack.enter_context(start_throwaway_server())
            url = server.url
            print(f"throwaway PostgreSQL {server.major}")
        engine = sa.create_engine(url, pool_size=max(args.writers) + 4)
        stack.callback(engine.dispose)
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS events CASCADE")
            conn.exec_driver_sql("CREATE TABLE events (id bigserial PRIMARY KEY, k int NOT NULL, v float8 NOT NULL)")
            conn.exec_driver_sql(
                f"INSERT INTO events (k, v) SELECT mod(i, 1000), random() FROM generate_series(1, {args.rows}) i"
            )
            conn.exec_driver_sql("ANALYZE events")
        sync(engine, registry_for("immediate"))
        print(f"stack: events ({args.rows} rows) -> PerKey (GROUP BY, 1,000 rows, CONCURRENTLY) -> TopKeys")
        print(f"one refresh of the stack: {refresh_seconds(engine):.3f} s")
        results: dict[tuple[str, int], float] = {}
        for count in args.writers:
            results[("immediate", count)] = writers(engine, count, args.seconds)
            print(f"immediate, {count} writer(s): {results[('immediate', count)]:.0f} inserts/s", flush=True)
        deferred = registry_for("deferred")
        sync(engine, deferred)
        lags: list[float] = []
        durations: list[float] = []

        def collect(done: Refreshed) -> None:
            if done.key.name == "TopKeys":
                lags.append(done.lag)
            durations.append(done.seconds)

        worker = Worker(engine, deferred, debounce=args.debounce, max_delay=args.max_delay, on_refresh=collect)
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            for count in args.writers:
                results[("deferred", count)] = writers(engine, count, args.seconds)
                print(f"deferred, {count} writer(s): {results[('deferred', count)]:.0f} inserts/s", flush=True)
            time.sleep(args.debounce + 2)
            print(f"burst lag (first write -> TopKeys fresh), under continuous writes: {percentiles(lags)}")
            lags.clear()
            rng = random.Random(7)
            stop = time.monotonic() + args.sparse_seconds
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                while time.monotonic() < stop:
                    conn.exec_driver_sql("INSERT INTO events (k, v) VALUES (1, 1)")
                    time.sleep(rng.uniform(0.1, 2.0))
            time.sleep(args.debounce + 2)
            print(f"sparse lag (a write every 0.1-2 s): {percentiles(lags)}")
            print(f"worker refresh durations: {percentiles(durations)}")
        finally:
            worker.stop()
            thread.join(30)
        print()
        print("| writers | immediate inserts/s | deferred inserts/s | ratio |")
        print("|---:|---:|---:|---:|")
        for count in args.writers:
            im, de = results[("immediate", count)], results[("deferred", count)]
            print(f"| {count} | {im:.0f} | {de:.0f} | {de / im if im else float('inf'):.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark of runs over many targets: tenant schemas of one database, and many databases.

Usage::

    python bench/fleet.py [--url URL] [--tenants 200] [--tenant-objects 100] [--databases 20]
                          [--database-objects 1000] [--jobs 2] [--skip-tenants] [--skip-databases]

``--url`` names a server where the role may create databases (default: a throwaway PostgreSQL). Each object
set is a stack of views over one table (every 10th a materialized view, every 25th a function) whose depth grows
with its size. Tenants: ``--tenants`` schemas, each with its table, synced with ``fleet.sync(tenants=…)`` (fresh,
then a no-op run). Databases: ``--databases`` databases, synced with ``fleet.run_databases`` with ``--jobs``
databases at a time and with one at a time (fresh each time: the databases are emptied in between), then a
no-op run. A sampler thread counts the connections the runs hold (``pg_stat_activity``, by the fleet's
``application_name``) every 20 ms; the maximum is printed. Not a test: it asserts nothing and prints figures for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import sqlalchemy as sa

from alembic_samizdat import TENANT, SamizdatFunction, SamizdatMaterializedView, SamizdatRegistry, SamizdatView
from alembic_samizdat.fleet import APPLICATION_NAME, Outcome, engine_for, run_databases, sync_operation
from alembic_samizdat.fleet import sync as fleet_sync
from alembic_samizdat.model import Samizdat


def stack(count: int, *, tenant: bool) -> list[type[Samizdat]]:
    """``count`` classes over the table ``items``: views reading earlier ones, some materialized, some functions."""
    schema: str = TENANT if tenant else "public"
    where = "${tenant}" if tenant else "public"
    made: list[type[Samizdat]] = []
    relations: list[type[Samizdat]] = []
    for index in range(count):
        name = f"o{index:05}"
        if index % 25 == 24:
            made.append(
                type(
                    name,
                    (SamizdatFunction,),
                    {
                        "schema": schema,
                        "__module__": __name__,
                        "function_arguments_signature": "x int",
                        "sql_template": f"${{preamble}} RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT x + {index} $$",
                    },
                )
            )
            continue
        if relations:
            parent = relations[(index * 7) % len(relations)]
            source = f'{where}."{parent.__name__}"'
            deps: dict[str, object] = {"deps_on": {parent}}
        else:
            source = f"{where}.items"
            deps = {"deps_on_unmanaged": {"items"}}
        base = SamizdatMaterializedView if index % 10 == 9 else SamizdatView
        cls = type(
            name,
            (base,),
            {
                "schema": schema,
                "__module__": __name__,
                **deps,
                "sql_template": f"${{preamble}} SELECT id, v + {index} AS v FROM {source} ${{postamble}}",
            },
        )
        made.append(cls)
        relations.append(cls)
    return made


class Sampler:
    """The most connections of the fleet's ``application_name`` seen at once, sampled every 20 ms."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.NullPool)
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                held = conn.execute(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :a"),
                    {"a": APPLICATION_NAME},
                ).scalar_one()
                conn.rollback()
                self.most = max(self.most, int(held))
                self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


def timed(label: str, url: str, work: Callable[[], object]) -> float:
    with Sampler(url) as sampler:
        started = time.perf_counter()
        work()
        seconds = time.perf_counter() - started
    print(f"| {label} | {seconds:.1f} s | {sampler.most} |", flush=True)
    return seconds


def bench_tenants(url: str, tenants: int, objects: int) -> None:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    db = f"bench_tenants_{os.getpid()}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}"')
        conn.exec_driver_sql(f'CREATE DATABASE "{db}"')
    target = sa.make_url(url).set(database=db).render_as_string(hide_password=False)
    names = [f"tenant_{i:04}" for i in range(tenants)]
    setup = sa.create_engine(target)
    with setup.begin() as conn:
        for name in names:
            conn.exec_driver_sql(
                f"CREATE SCHEMA {name}; CREATE TABLE {name}.items (id int, v int); "
                f"INSERT INTO {name}.items SELECT g, g FROM generate_series(1, 10) g"
            )
    setup.dispose()
    registry = SamizdatRegistry(scope="bench")
    registry.register_all(*stack(objects, tenant=True))
    engine = engine_for(target)
    print(f"\n{tenants} tenant schemas x {objects} objects ({tenants * objects} objects), one database")
    print("| run | wall | connections held (max) |\n|---|---|---|")
    started = time.perf_counter()

    def progress(outcome: Outcome) -> None:
        if outcome.tenant is not None and (names.index(outcome.tenant) + 1) % 25 == 0:
            print(
                f"  ... {outcome.tenant}: {outcome.seconds:.2f} s ({time.perf_counter() - started:.0f} s in)",
                file=sys.stderr,
                flush=True,
            )

    try:
        timed(
            "fresh sync, every tenant",
            url,
            lambda: fleet_sync(engine, registry, tenants=names, on_outcome=progress).check(),
        )
        started = time.perf_counter()
        timed(
            "no-op sync, every tenant",
            url,
            lambda: fleet_sync(engine, registry, tenants=names, on_outcome=progress).check(),
        )
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def databases(url: str, count: int) -> Iterator[list[str]]:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    names = [f"bench_db_{os.getpid()}_{i:03}" for i in range(count)]
    urls = []
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    for name in names:
        target = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
        engine = sa.create_engine(target)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TABLE items (id int, v int); INSERT INTO items SELECT g, g FROM generate_series(1, 10) g"
            )
        engine.dispose()
        urls.append(target)
    try:
        yield urls
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def bench_databases(url: str, count: int, objects: int, jobs: int) -> None:
    registry = SamizdatRegistry(scope="bench")
    registry.register_all(*stack(objects, tenant=False))
    print(f"\n{count} databases x {objects} objects ({count * objects} objects)")
    print("| run | wall | connections held (max) |\n|---|---|---|")
    with databases(url, count) as urls:

        def run(j: int) -> None:
            run_databases(urls, registry, sync_operation(), jobs=j).check()

        def empty() -> None:
            for target in urls:
                engine = sa.create_engine(target)
                from alembic_samizdat.api import nuke

                nuke(engine, registry)
                engine.dispose()

        timed(f"fresh sync, --jobs {jobs}", url, lambda: run(jobs))
        timed(f"no-op sync, --jobs {jobs}", url, lambda: run(jobs))
        empty()
        timed("fresh sync, --jobs 1 (one after another)", url, lambda: run(1))
        timed("no-op sync, --jobs 1", url, lambda: run(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="SQLAlchemy URL of a role that may create databases (default: throwaway)")
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--tenant-objects", type=int, default=100)
    parser.add_argument("--databases", type=int, default=20)
    parser.add_argument("--database-objects", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--skip-tenants", action="store_true")
    parser.add_argument("--skip-databases", action="store_true")
    args = parser.parse_args(argv)
    with ExitStack() as stack_:
        url = args.url
        if url is None:
            from alembic_samizdat.pgserver import start_throwaway_server

            server = stack_.enter_context(start_throwaway_server(settings={"max_connections": "200"}))
            url = server.url
            print(f"throwaway PostgreSQL {server.major}")
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
        print(f"CPUs: {os.cpu_count()}, Python {sys.version.split()[0]}")
        if not args.skip_tenants:
            bench_tenants(url, args.tenants, args.tenant_objects)
        if not args.skip_databases:
            bench_databases(url, args.databases, args.database_objects, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())

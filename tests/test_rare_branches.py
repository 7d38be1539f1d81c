"""Explicit cases of branches the random workloads of test_convergence reach only by luck, so that every run
covers them: the drop order when the declarations contradict the catalog, and a refresh that cascades to the
materialized views reading a refreshed one. Judged from the catalog and the data."""

from __future__ import annotations

import sqlalchemy as sa
from helpers import catalog_snapshot, make_registry, matview, rows, run_sql, scalar, view, view_definition

from alembic_samizdat import diff_database, sync
from alembic_samizdat.planner import Verb


def test_swapping_which_view_reads_which_drops_in_the_catalogs_order(engine: sa.Engine) -> None:
    """ "first" read "second"; now "second" reads "first". Declared and recorded dependencies point both ways,
    so only the catalog's order can drop them; the new pair is created the other way round."""
    run_sql(engine, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1), (2)")
    second = view("second", "SELECT x FROM t", deps_on_unmanaged={"t"})
    first = view("first", "SELECT x + 1 AS y FROM second", deps_on={second})
    sync(engine, make_registry(first, second))

    first2 = view("first", "SELECT x * 10 AS x FROM t", deps_on_unmanaged={"t"})
    second2 = view("second", "SELECT x + 2 AS y FROM first", deps_on={first2})
    done = sync(engine, make_registry(first2, second2))
    drops = [a.key.name for a in done.applied if a.verb is Verb.DROP]
    assert drops == ["first", "second"]  # the catalog's order: "first" depended on "second"
    assert "FROM first" in str(view_definition(engine, "second"))
    assert rows(engine, "SELECT y FROM second ORDER BY 1") == [(12,), (22,)]
    # Converged, judged by the catalog: a second sync changes no oid, definition or privilege.
    before = catalog_snapshot(engine, oids=True)
    assert sync(engine, make_registry(first2, second2)).applied == ()
    assert catalog_snapshot(engine, oids=True) == before


def test_refreshing_a_view_refreshes_the_views_that_read_it(engine: sa.Engine) -> None:
    """A materialized view left unpopulated is refreshed by the next sync, and so is the one reading it (which
    was populated, but from the old data): both then hold what the table says."""
    run_sql(engine, "CREATE TABLE t (x int)", "INSERT INTO t VALUES (1), (2)")
    low = matview("low", "SELECT x FROM t", deps_on_unmanaged={"t"})
    high = matview("high", "SELECT sum(x) AS total FROM low", deps_on={low})
    side = matview("side", "SELECT count(*) AS n FROM t", deps_on_unmanaged={"t"})
    registry = make_registry(low, high, side)
    sync(engine, registry)
    run_sql(engine, "INSERT INTO t VALUES (4)", "REFRESH MATERIALIZED VIEW low WITH NO DATA")
    oids = dict(rows(engine, "SELECT relname, oid::bigint FROM pg_class WHERE relkind = 'm'"))

    done = sync(engine, registry)
    assert [(a.verb, a.key.name, a.reason) for a in done.applied] == [
        (Verb.REFRESH, "low", "not populated (a refresh failed or never ran)"),
        (Verb.REFRESH, "high", "reads a materialized view refreshed, or an object replaced, below it"),
    ]
    # From the catalog and the data: nothing recreated, both views current, the unrelated one untouched.
    assert dict(rows(engine, "SELECT relname, oid::bigint FROM pg_class WHERE relkind = 'm'")) == oids
    assert scalar(engine, "SELECT total FROM high") == 7
    assert scalar(engine, "SELECT n FROM side") == 2
    assert diff_database(engine, registry).differences == ()

"""The materialized-view swap (alembic_samizdat/swap.py): a changed materialized view is built and populated
beside the old one, then moved into place; readers of it, and of what stands on it, never get an error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from conftest import libpq_dsn
from helpers import (
    alembic_project,
    make_registry,
    matview,
    ops_in,
    relation_oid,
    rows,
    run_sql,
    scalar,
    unique_role,
    view,
)
from test_live_deploy import Readers, chain

from alembic_samizdat import sync
from alembic_samizdat.model import Samizdat
from alembic_samizdat.planner import Verb
from alembic_samizdat.swap import NO_CREATE_PRIVILEGE, SWAPPED

ROWS = 3000
#: Populating sleeps this long (once per populate), so that a rebuild that locks readers out for the populate
#: could not go unnoticed by the readers' threads.
SLEEP = 0.3


def _setup(engine: sa.Engine) -> None:
    run_sql(
        engine,
        "CREATE TABLE src (id int PRIMARY KEY, v int NOT NULL)",
        f"INSERT INTO src SELECT g, g % 10 FROM generate_series(1, {ROWS}) AS g",
        f"CREATE FUNCTION slow() RETURNS int LANGUAGE sql AS 'SELECT 1 FROM pg_sleep({SLEEP})'",
    )


def _stack(factor: int, *, index_after: str | None = None) -> list[type[Samizdat]]:
    after = (
        index_after
        if index_after is not None
        else ";\nCREATE UNIQUE INDEX totals_id ON ${samizdatname} (id);\nCREATE INDEX ON ${samizdatname} (w)"
    )
    totals = matview(
        "totals",
        f"SELECT id, v * {factor} AS w FROM src WHERE (SELECT slow()) = 1",
        after=after,
        deps_on_unmanaged={"src", "slow"},
        refresh_concurrently=True,
    )
    top = view("top", "SELECT id, w FROM totals WHERE w > 0", deps_on={totals})
    upper = matview("upper_totals", "SELECT count(*) AS n, sum(w) AS s FROM top", deps_on={top})
    return [totals, top, upper]


def _verbs(result: object) -> list[tuple[Verb, str]]:
    return [(a.verb, a.key.name) for a in result.applied]  # type: ignore[attr-defined]


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_a_changed_matview_is_swapped_in_and_readers_see_no_error(
    engine: sa.Engine, db_url: str, discipline: str
) -> None:
    _setup(engine)
    sync(engine, make_registry(*_stack(1)))
    reader = unique_role("reader")
    run_sql(
        engine,
        f"CREATE ROLE {reader}",
        f"GRANT SELECT ON totals TO {reader}",
        "CREATE INDEX by_hand ON totals (id, w)",
    )
    old = relation_oid(engine, "public", "totals")
    # Readers of the view above it and of the materialized view above that, as an application reads them.
    dsn = libpq_dsn(db_url)
    through_view = Readers(dsn, "SELECT count(*) FROM top", count=4)
    upper = Readers(dsn, "SELECT n FROM upper_totals", count=4)
    with through_view.running(), upper.running():
        result = sync(engine, make_registry(*_stack(2)), discipline=discipline)
    assert through_view.errors == [] and upper.errors == []
    assert all(through_view.reads) and all(upper.reads)
    verbs = _verbs(result)
    # Built first, before anything readers use is locked; then the stack goes, the new view moves in.
    assert verbs[0] == (Verb.BUILD, "totals")
    assert verbs.index((Verb.DROP, "totals")) < verbs.index((Verb.CREATE, "totals"))
    assert (Verb.REFRESH, "totals") not in verbs  # populated by the build
    swapped = next(a for a in result.applied if a.verb is Verb.CREATE and a.key.name == "totals")
    assert SWAPPED in swapped.reason
    # The view above it that held rows is populated in the same unit.
    assert (Verb.REFRESH, "upper_totals") in verbs
    if discipline == "checkpoint":
        units = {a.unit for a in result.applied if a.key.name in ("totals", "top", "upper_totals")}
        assert len(units) == 1
    # What was built is what stands now: new rows, template indexes under their own names, what users added.
    assert relation_oid(engine, "public", "totals") != old
    assert scalar(engine, "SELECT sum(w) FROM totals") == 2 * scalar(engine, "SELECT sum(v) FROM src")
    assert scalar(engine, "SELECT n FROM upper_totals") == ROWS - ROWS // 10
    indexes = {r[0] for r in rows(engine, "SELECT indexname FROM pg_indexes WHERE tablename = 'totals'")}
    assert indexes == {"totals_id", "totals_w_idx", "by_hand"}
    assert scalar(engine, f"SELECT has_table_privilege('{reader}', 'totals', 'SELECT')") is True
    assert rows(engine, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'samizdat_swap%'") == []
    # Timed: the build includes the populate (which sleeps), the locks are reported.
    assert [s.key.name for s in result.swaps] == ["totals"]
    assert result.swaps[0].build_seconds >= SLEEP and result.swaps[0].locked_seconds >= 0
    # Signed as a plain create would sign it: in sync, and refreshable concurrently (its unique index came).
    assert not sync(engine, make_registry(*_stack(2))).plan
    run_sql(engine, "REFRESH MATERIALIZED VIEW CONCURRENTLY totals")


def test_a_dry_run_of_a_swap_leaves_everything_as_it_was(engine: sa.Engine) -> None:
    _setup(engine)
    sync(engine, make_registry(*_stack(1)))
    old = relation_oid(engine, "public", "totals")
    result = sync(engine, make_registry(*_stack(3)), discipline="dryrun")
    assert (Verb.BUILD, "totals") in _verbs(result)
    assert result.swaps == ()
    assert relation_oid(engine, "public", "totals") == old
    assert rows(engine, "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'samizdat_swap%'") == []


def test_without_create_on_the_database_the_matview_is_rebuilt_and_populated_in_its_unit(
    engine: sa.Engine, db_url: str, make_database: object
) -> None:
    _setup(engine)
    deployer = unique_role("deployer")
    run_sql(
        engine,
        f"CREATE ROLE {deployer} LOGIN PASSWORD 'pw'",
        f"GRANT CREATE, USAGE ON SCHEMA public TO {deployer}",
        f"GRANT SELECT ON src TO {deployer}",
        f"GRANT EXECUTE ON FUNCTION slow() TO {deployer}",
    )
    url = sa.engine.make_url(db_url).set(username=deployer, password="pw")
    as_deployer = sa.create_engine(url)
    try:
        sync(as_deployer, make_registry(*_stack(1)))
        assert scalar(engine, "SELECT has_database_privilege(current_database(), 'CREATE')") is True  # the admin
        dsn = libpq_dsn(db_url)
        readers, upper = (
            Readers(dsn, "SELECT count(*) FROM totals", count=4),
            Readers(dsn, "SELECT n FROM upper_totals", count=4),
        )
        with readers.running(), upper.running():
            result = sync(as_deployer, make_registry(*_stack(2)))
    finally:
        as_deployer.dispose()
    assert readers.errors == [] and upper.errors == []
    verbs = _verbs(result)
    assert (Verb.BUILD, "totals") not in verbs
    created = next(a for a in result.applied if a.verb is Verb.CREATE and a.key.name == "totals")
    assert NO_CREATE_PRIVILEGE in created.reason
    # Never committed empty: its populate is in the unit that recreated it.
    populate = next(a for a in result.applied if a.verb is Verb.REFRESH and a.key.name == "totals")
    assert populate.unit == created.unit is not None
    assert scalar(engine, "SELECT sum(w) FROM totals") == 2 * scalar(engine, "SELECT sum(v) FROM src")


def test_a_template_that_names_its_view_directly_is_rebuilt_not_swapped(engine: sa.Engine) -> None:
    _setup(engine)
    after = ";\nCREATE INDEX totals_w ON totals (w)"
    sync(engine, make_registry(*_stack(1, index_after=after)))
    result = sync(engine, make_registry(*_stack(2, index_after=after)))
    # Building it beside the old one would have put that index on the old view.
    assert (Verb.BUILD, "totals") not in _verbs(result)
    assert {r[0] for r in rows(engine, "SELECT indexname FROM pg_indexes WHERE tablename = 'totals'")} == {"totals_w"}
    assert scalar(engine, "SELECT sum(w) FROM totals") == 2 * scalar(engine, "SELECT sum(v) FROM src")


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_a_matview_rebuilt_because_a_view_below_lost_a_column_is_never_seen_empty(
    engine: sa.Engine, db_url: str, discipline: str
) -> None:
    # Something below changes too, so no swap: the matview is dropped, recreated and populated in one unit.
    views = chain("SELECT g AS id, g % 7 AS k FROM generate_series(1, 200) AS g", depth=2)
    on_top = matview("on_top", "SELECT count(*) AS n FROM v2", deps_on={views[-1]})
    sync(engine, make_registry(*views, on_top))
    readers = Readers(libpq_dsn(db_url), "SELECT n FROM on_top")
    changed = chain("SELECT g AS id FROM generate_series(1, 50) AS g", depth=2)
    with readers.running():
        result = sync(
            engine,
            make_registry(*changed, matview("on_top", "SELECT count(*) AS n FROM v2", deps_on={changed[-1]})),
            discipline=discipline,
        )
    assert readers.errors == []
    assert (Verb.BUILD, "on_top") not in _verbs(result)
    assert scalar(engine, "SELECT n FROM on_top") == 50


MATVIEW_MODULE = """
from sqlalchemy import Column, Integer, MetaData, Table

from alembic_samizdat import SamizdatMaterializedView, SamizdatRegistry, SamizdatView

metadata = MetaData()
Table("src", metadata, Column("id", Integer, primary_key=True), Column("v", Integer, nullable=False))
registry = SamizdatRegistry(metadata)


class totals(SamizdatMaterializedView):
    deps_on_unmanaged = {"src", "slow"}
    sql_template = (
        "${preamble} SELECT id, v * FACTOR AS w FROM src WHERE (SELECT slow()) = 1 ${postamble}"
        " CREATE UNIQUE INDEX totals_id ON ${samizdatname} (id)"
    )


class top(SamizdatView):
    deps_on = {totals}
    sql_template = "${preamble} SELECT id, w FROM totals WHERE w > 0 ${postamble}"


registry.register_all(totals, top)
"""


def test_alembic_rebuilds_a_changed_matview_in_its_transaction_and_readers_see_no_error(
    engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A revision does not swap (its table operations may add what the new definition reads): the matview is
    # dropped, created and populated inside the revision's transaction, and readers wait for it.
    _setup(engine)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = alembic_project(tmp_path, "mvmod")

    def write(factor: int) -> str:
        (tmp_path / "mvmod.py").write_text(MATVIEW_MODULE.replace("FACTOR", str(factor)))
        sys.modules.pop("mvmod", None)
        script = command.revision(config, message=f"factor {factor}", autogenerate=True)
        assert script is not None and not isinstance(script, list)
        return Path(script.path).read_text()

    write(1)
    command.upgrade(config, "head")
    script = write(2)
    assert "op.build" not in script and "samizdat_swap" not in script
    assert ops_in(script).count("op.drop_samizdat") == 2 and ops_in(script).count("op.create_samizdat") == 2
    readers = Readers(libpq_dsn(db_url), "SELECT (SELECT count(*) FROM top) + (SELECT count(*) FROM totals)")
    try:
        with readers.running():
            sys.modules.pop("mvmod", None)
            command.upgrade(config, "head")
            assert scalar(engine, "SELECT sum(w) FROM totals") == 2 * scalar(engine, "SELECT sum(v) FROM src")
            command.downgrade(config, "-1")
    finally:
        sys.modules.pop("mvmod", None)
    assert readers.errors == []
    assert all(readers.reads)
    assert scalar(engine, "SELECT sum(w) FROM totals") == scalar(engine, "SELECT sum(v) FROM src")


def test_no_swap_rebuilds_and_the_json_report_shows_the_build(
    engine: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _setup(engine)
    sync(engine, make_registry(*_stack(1)))
    result = sync(engine, make_registry(*_stack(2)), swap=False)
    assert (Verb.BUILD, "totals") not in _verbs(result) and result.swaps == ()
    populate = next(a for a in result.applied if a.verb is Verb.REFRESH and a.key.name == "totals")
    assert populate.unit is not None

    # Through the CLI: sync prints the swap; the JSON report (validated by its schema) has the build step.
    def module(factor: int) -> str:
        # A file per version: the same path rewritten within a second could be served from a stale bytecode cache.
        path = tmp_path / f"swapmod_{factor}.py"
        path.write_text(
            "from alembic_samizdat import SamizdatMaterializedView\n"
            "class totals(SamizdatMaterializedView):\n"
            "    deps_on_unmanaged = {'src', 'slow'}\n"
            f"    sql_template = '${{preamble}} SELECT id, v * {factor} AS w FROM src WHERE (SELECT slow()) = 1 "
            "${postamble}'\n"
        )
        return str(path)

    # The stack of _stack(2) is no longer declared: nuke it first, then sync the module's view.
    from alembic_samizdat import nuke
    from alembic_samizdat.cli import main

    nuke(engine, make_registry(*_stack(2)))
    assert main(["sync", "-q", db_url, module(5)]) == 0
    capsys.readouterr()
    assert main(["sync", db_url, module(6)]) == 0
    captured = capsys.readouterr()
    assert 'swapped materialized view "public"."totals"' in captured.out + captured.err
    assert main(["sync", "--format", "json", db_url, module(7)]) == 0
    out = capsys.readouterr().out
    assert '"verb": "build"' in out


def test_readers_taking_the_stack_in_another_order_cannot_hold_a_swap_off_for_ever(
    engine: sa.Engine, db_url: str
) -> None:
    # Each of these queries locks "top" (and "totals" under it) before "upper_totals", while the swap drops
    # "upper_totals" first: every attempt that meets one of them mid-query would deadlock. The stack lets go
    # and tries again a few times, then waits like any statement and lets PostgreSQL's deadlock detector
    # decide: the deploy finishes (a reader may then be the one that gives way; docs/deploying.md).
    _setup(engine)
    sync(engine, make_registry(*_stack(1)))
    readers = Readers(libpq_dsn(db_url), "SELECT (SELECT count(*) FROM top) + (SELECT n FROM upper_totals)")
    with readers.running():
        result = sync(engine, make_registry(*_stack(2)))
    assert all("deadlock detected" in error for error in readers.errors), readers.errors
    assert [s.key.name for s in result.swaps] == ["totals"]
    assert scalar(engine, "SELECT sum(w) FROM totals") == 2 * scalar(engine, "SELECT sum(v) FROM src")
    assert not sync(engine, make_registry(*_stack(2))).plan

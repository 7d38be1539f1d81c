"""The privileges each command needs (docs/privileges.md), checked on a real server with real roles.

Each test makes its own roles (roles are cluster-wide: their names carry the test database's name, and they are
dropped at the end), grants the documented minimum, and shows that it is enough; then it takes one privilege
away and shows that the command fails with :class:`InsufficientPrivilegeError` naming that privilege and the
role, with the catalog unchanged. The commands connect as the roles themselves (the URL's user), as a
deployment would.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import catalog_snapshot, function, make_registry, matview, rows, run_sql, scalar, trigger, view
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from alembic_samizdat import InsufficientPrivilegeError, SamizdatRegistry
from alembic_samizdat.api import diff_database, nuke, refresh, refresh_async, sync
from alembic_samizdat.cli import main
from alembic_samizdat.errors import FunctionSignatureMismatchError, NameClashError
from alembic_samizdat.keys import Key
from alembic_samizdat.model import Samizdat
from alembic_samizdat.refresher import RefreshError
from alembic_samizdat.signature import mark_stale_statement

#: Every role a test makes gets this password: servers ask for one (the throwaway server too, SCRAM over
#: TCP and over its socket).
PASSWORD = "samizdat-test"


@dataclass
class Roles:
    """The roles of one test and engines connected as each."""

    owner: str  # owns schema "data" and its tables (NOLOGIN, as application owners usually are)
    migrator: str  # runs sync, refresh and nuke
    reader: str  # runs diff
    admin: sa.Engine  # the test database as the server's superuser
    url: str
    engines: list[sa.Engine]

    def engine(self, role: str) -> sa.Engine:
        """An engine on the test database logged in as ``role``."""
        url = make_url(self.url).set(username=role, password=PASSWORD)
        engine = sa.create_engine(url)
        self.engines.append(engine)
        return engine

    def sql(self, *statements: str) -> None:
        """Run statements as the superuser (``{owner}``, ``{migrator}`` and ``{reader}`` are filled in)."""
        run_sql(
            self.admin, *(s.format(owner=self.owner, migrator=self.migrator, reader=self.reader) for s in statements)
        )

    @property
    def server_version(self) -> int:
        return int(scalar(self.admin, "SHOW server_version_num"))


#: The documented minimum for the migration role, for registries that put no trigger on the application's tables.
MINIMUM = (
    'GRANT USAGE, CREATE ON SCHEMA reports TO "{migrator}"',
    'GRANT USAGE ON SCHEMA data TO "{migrator}"',
    'GRANT SELECT ON ALL TABLES IN SCHEMA data TO "{migrator}"',
)
#: What a registry with triggers (its own, or autorefresh ones) on the application's tables needs on top.
TRIGGERS = ('GRANT "{owner}" TO "{migrator}"',)


@pytest.fixture
def roles(db_url: str, engine: sa.Engine) -> Iterator[Roles]:
    """An application owner, a migration role and a read-only role, with the schemas the tests use."""
    suffix = uuid.uuid4().hex[:10]
    made = Roles(f"samizdat_owner_{suffix}", f"samizdat_mig_{suffix}", f"samizdat_ro_{suffix}", engine, db_url, [])
    run_sql(
        engine,
        f'CREATE ROLE "{made.owner}" NOLOGIN',
        f"CREATE ROLE \"{made.migrator}\" LOGIN PASSWORD '{PASSWORD}'",
        f"CREATE ROLE \"{made.reader}\" LOGIN PASSWORD '{PASSWORD}'",
    )
    try:
        made.sql(
            'CREATE SCHEMA data AUTHORIZATION "{owner}"',
            "CREATE TABLE data.orders (id int PRIMARY KEY, amount int NOT NULL)",
            "INSERT INTO data.orders VALUES (1, 10), (2, 32)",
            'ALTER TABLE data.orders OWNER TO "{owner}"',
            # Owned by the superuser, so that membership in the owner role does not bring EXECUTE with it.
            "CREATE FUNCTION data.noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$",
            "CREATE SCHEMA reports",
        )
        yield made
    finally:
        for eng in made.engines:
            eng.dispose()
        names = ", ".join(f'"{r}"' for r in (made.owner, made.migrator, made.reader))
        # What the roles own or were granted in this database goes first; then the roles themselves.
        run_sql(engine, f"DROP OWNED BY {names} CASCADE")
        engine.dispose()
        run_sql(engine, f"DROP ROLE {names}")


def reports(total: str = "sum(amount)") -> SamizdatRegistry:
    """A view (granted to PUBLIC), a materialized view and a function in schema "reports", reading data.orders.

    ``total`` is the view's expression: changing it replaces the view in place, and changing its type makes
    the next sync drop and recreate the view.
    """
    return make_registry(*report_classes(total))


def trusting(registry: SamizdatRegistry, *owners: str) -> SamizdatRegistry:
    """``registry`` as a role that is not a member of the migration role sees it: trusting that role's objects
    (a signature counts only on objects of trusted owners; docs/security.md)."""
    registry.trusted_owners = frozenset(owners)
    return registry


def report_classes(total: str = "sum(amount)") -> list[type[Samizdat]]:
    """The classes of :func:`reports`."""
    orders = {("data", "orders")}
    return [
        view(
            "Total",
            f"SELECT {total} AS total FROM data.orders",
            schema="reports",
            deps_on_unmanaged=orders,
            grants={"PUBLIC": {"SELECT"}},
        ),
        matview("Counts", "SELECT count(*) AS n FROM data.orders", schema="reports", deps_on_unmanaged=orders),
        function(
            "double",
            "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 2 * $1 $$",
            schema="reports",
            function_arguments_signature="int",
        ),
    ]


def with_triggers() -> SamizdatRegistry:
    """A trigger and an autorefreshed materialized view on data.orders."""
    live = matview(
        "Live",
        "SELECT count(*) AS n FROM data.orders",
        schema="reports",
        deps_on_unmanaged={("data", "orders")},
        refresh_triggers={("data", "orders")},
    )
    audit = trigger(
        "Audit",
        "${preamble} FOR EACH STATEMENT EXECUTE FUNCTION data.noop()",
        schema="data",
        on_table="orders",
        condition="AFTER INSERT",
    )
    return make_registry(live, audit)


def ownership_and_acls(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """Owner and privileges of every relation and function in the test schemas (the snapshot has neither)."""
    return rows(
        engine,
        """SELECT n.nspname, c.relname, pg_get_userbyid(c.relowner), c.relacl::text FROM pg_class c
           JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname IN ('data', 'reports')
           UNION ALL
           SELECT n.nspname, p.proname, pg_get_userbyid(p.proowner), p.proacl::text FROM pg_proc p
           JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname IN ('data', 'reports')
           ORDER BY 1, 2""",
    )


def state(roles: Roles) -> tuple[object, object]:
    return catalog_snapshot(roles.admin), ownership_and_acls(roles.admin)


def fails(roles: Roles, run: Any, privilege: str, role: str, *, unchanged: bool = True) -> InsufficientPrivilegeError:
    """``run()`` raises InsufficientPrivilegeError naming ``privilege`` and ``role``, and (``unchanged``)
    leaves the catalog as it was."""
    before = state(roles)
    with pytest.raises(InsufficientPrivilegeError) as info:
        run()
    error = info.value
    assert privilege in error.privilege, error
    assert privilege in str(error) and f'"{role}"' in str(error), error
    assert error.role == role
    assert "GRANT" in error.fix or "run as" in error.fix, error
    if unchanged:
        assert state(roles) == before
    return error


# --------------------------------------------------------------------------------------------------------------
# The documented minimum is enough


def test_minimum_is_enough_for_sync_diff_refresh_nuke(roles: Roles) -> None:
    roles.sql(*MINIMUM)
    migrator, reader = roles.engine(roles.migrator), roles.engine(roles.reader)
    registry = reports()
    assert sync(migrator, registry).committed
    # The read-only role needs nothing beyond CONNECT (which PUBLIC has): diff reads the catalog only.
    assert diff_database(reader, trusting(reports(), roles.migrator)).exit_code == 0
    assert refresh(migrator, registry).refreshed == [Key("relation", "reports", "Counts")]
    # A change recreates the view (capture and restore use a temporary table: TEMPORARY, which PUBLIC has).
    changed = reports("sum(amount) + 0")
    assert diff_database(reader, trusting(reports("sum(amount) + 0"), roles.migrator)).exit_code == 103
    assert any(a.verb.value == "replace" for a in sync(migrator, changed, discipline="jumbo").applied)
    retyped = reports("sum(amount)::float8")
    assert any(a.verb.value == "drop" for a in sync(migrator, retyped, discipline="jumbo").applied)
    assert scalar(roles.admin, 'SELECT total FROM reports."Total"') == 42
    assert len(nuke(migrator, changed).applied) == 3
    assert rows(roles.admin, "SELECT relname FROM pg_class WHERE relnamespace = 'reports'::regnamespace") == []


def test_membership_in_the_table_owner_is_enough_for_triggers(roles: Roles) -> None:
    roles.sql(*MINIMUM, *TRIGGERS, 'GRANT EXECUTE ON FUNCTION data.noop() TO "{migrator}"')
    migrator = roles.engine(roles.migrator)
    registry = with_triggers()
    assert sync(migrator, registry).committed
    # The writer needs no privilege on the view: the refresh function runs as its owner (SECURITY DEFINER).
    roles.sql('GRANT USAGE ON SCHEMA data TO "{reader}"', 'GRANT INSERT ON data.orders TO "{reader}"')
    with roles.engine(roles.reader).begin() as conn:
        conn.exec_driver_sql("INSERT INTO data.orders VALUES (3, 1)")
    assert scalar(roles.admin, 'SELECT n FROM reports."Live"') == 3
    assert (
        diff_database(roles.engine(roles.reader), trusting(with_triggers(), roles.migrator, roles.owner)).exit_code == 0
    )
    assert len(nuke(migrator, registry).applied) == 4


# --------------------------------------------------------------------------------------------------------------
# One privilege less: the error names it


ALL_THREE = ("Total", "Counts", "double")


@pytest.mark.parametrize(
    ("revoke", "privilege", "failing"),
    [
        ('REVOKE CREATE ON SCHEMA reports FROM "{migrator}"', 'CREATE on schema "reports"', ALL_THREE),
        ('REVOKE USAGE ON SCHEMA reports FROM "{migrator}"', 'USAGE on schema "reports"', ALL_THREE),
        # Creating a view looks the table up (USAGE); only populating a materialized view reads it (SELECT).
        ('REVOKE USAGE ON SCHEMA data FROM "{migrator}"', 'USAGE on schema "data"', ("Total", "Counts")),
        ('REVOKE SELECT ON data.orders FROM "{migrator}"', 'SELECT on table "data"."orders"', ("Counts",)),
    ],
    ids=["create-on-schema", "usage-on-own-schema", "usage-on-read-schema", "select-on-table"],
)
def test_sync_names_the_missing_privilege(roles: Roles, revoke: str, privilege: str, failing: tuple[str, ...]) -> None:
    roles.sql(*MINIMUM, revoke)
    migrator = roles.engine(roles.migrator)
    # In one transaction (jumbo): the whole run fails and nothing is kept. The failed transaction cannot answer,
    # so a second connection is asked which schema privilege is missing: exactly that one is named.
    word, on = privilege.split(" ", 1)
    error = fails(roles, lambda: sync(migrator, reports(), discipline="jumbo"), on, roles.migrator)
    assert word in error.privilege, error
    if "schema" in privilege:
        assert ("USAGE" in error.privilege) != ("CREATE" in error.privilege), error
    assert "Nothing was applied: the whole run (jumbo: one transaction) was rolled back" in str(error)
    # Checkpoint, one object per run, so that the failing action is the first: outside a transaction the
    # server is asked which schema privilege is missing, so exactly that one is named.
    for cls in report_classes():
        if cls.__name__ not in failing:
            continue
        # (A materialized view is created, and committed, before the action that populates it fails.)
        populate = cls.__name__ == "Counts" and privilege.startswith("SELECT")
        error = fails(
            roles, lambda c=cls: sync(migrator, make_registry(c)), privilege, roles.migrator, unchanged=not populate
        )
        if "schema" in privilege:
            assert ("USAGE" in error.privilege) != ("CREATE" in error.privilege), error
        # CREATE FUNCTION works without USAGE on its schema; signing it does not: not a signature mismatch.
        assert not isinstance(error, FunctionSignatureMismatchError)


def test_trigger_without_ownership_of_the_table(roles: Roles) -> None:
    roles.sql(*MINIMUM, 'GRANT EXECUTE ON FUNCTION data.noop() TO "{migrator}"')
    migrator = roles.engine(roles.migrator)
    # Checkpoint: outside a transaction the server is asked who owns the table, and the fix names it.
    audit = make_registry(next(c for c in with_triggers() if c.__name__ == "Audit"))
    error = fails(roles, lambda: sync(migrator, audit), 'ownership of table "data"."orders"', roles.migrator)
    assert (
        error.fix
        == f'run as "{roles.owner}", or make "{roles.migrator}" a member of it: GRANT "{roles.owner}" TO "{roles.migrator}"'
    )
    # TRIGGER alone lets PostgreSQL create the trigger, but not sign (comment on) it: ownership is still named.
    roles.sql('GRANT TRIGGER ON data.orders TO "{migrator}"')
    error = fails(
        roles,
        lambda: sync(migrator, with_triggers(), discipline="jumbo"),
        'ownership of table "data"."orders"',
        roles.migrator,
    )
    # Inside the failed transaction a second connection looks the owner up: the fix names it.
    assert f'GRANT "{roles.owner}" TO "{roles.migrator}"' in error.fix
    assert "TRIGGER privilege is not enough" in str(error)


def test_trigger_function_without_execute(roles: Roles) -> None:
    roles.sql(*MINIMUM, *TRIGGERS, "REVOKE EXECUTE ON FUNCTION data.noop() FROM PUBLIC")
    migrator = roles.engine(roles.migrator)
    registry = make_registry(next(c for c in with_triggers() if c.__name__ == "Audit"))
    fails(roles, lambda: sync(migrator, registry), "EXECUTE on function data.noop", roles.migrator)


def test_recreate_needs_ownership_and_temporary(roles: Roles) -> None:
    roles.sql(*MINIMUM)
    migrator = roles.engine(roles.migrator)
    assert sync(migrator, reports()).committed
    changed = reports("sum(amount)::float8")  # a new column type: recreated, not replaced in place
    # Keeping grants and indexes across the recreate needs a temporary table.
    roles.sql("REVOKE TEMPORARY ON DATABASE {db} FROM PUBLIC".replace("{db}", f'"{make_url(roles.url).database}"'))
    fails(roles, lambda: sync(migrator, changed, discipline="jumbo"), "TEMPORARY on database", roles.migrator)
    roles.sql("GRANT TEMPORARY ON DATABASE {db} TO PUBLIC".replace("{db}", f'"{make_url(roles.url).database}"'))
    # Someone else owns the view now, a role whose privileges the migration role does not have: its signature
    # no longer counts (anyone can copy one), so the run stops before any SQL, naming the owner.
    roles.sql('ALTER VIEW reports."Total" OWNER TO "{owner}"')
    before = state(roles)
    with pytest.raises(NameClashError, match=f"owned by role '{roles.owner}'.*not trusted"):
        sync(migrator, changed, discipline="jumbo")
    assert state(roles) == before
    roles.sql(*TRIGGERS)  # membership in the owner's role: the view is ours again, and may be dropped
    assert sync(migrator, changed).committed


def test_nuke_needs_ownership(roles: Roles) -> None:
    roles.sql(*MINIMUM)
    assert sync(roles.engine(roles.migrator), reports()).committed
    roles.sql('GRANT USAGE ON SCHEMA reports, data TO "{reader}"')
    reader = roles.engine(roles.reader)
    error = fails(
        roles,
        lambda: nuke(reader, trusting(reports(), roles.migrator), discipline="jumbo"),
        "ownership of",
        roles.reader,
    )
    assert f'GRANT "{roles.migrator}" TO "{roles.reader}"' in error.fix or "GRANT <owner>" in error.fix


def test_refresh_needs_ownership(roles: Roles) -> None:
    roles.sql(*MINIMUM)
    assert sync(roles.engine(roles.migrator), reports()).committed
    reader = roles.engine(roles.reader)
    fails(
        roles, lambda: refresh(reader, trusting(reports(), roles.migrator)), 'USAGE on schema "reports"', roles.reader
    )
    roles.sql('GRANT USAGE ON SCHEMA reports TO "{reader}"')
    if roles.server_version >= 170000:
        # MAINTAIN allows REFRESH MATERIALIZED VIEW, but refresh marks the view stale in its comment first.
        roles.sql('GRANT MAINTAIN ON reports."Counts" TO "{reader}"')
    else:
        print(f"PostgreSQL {roles.server_version}: no MAINTAIN privilege (PG17+); ownership alone is checked")
    error = fails(
        roles,
        lambda: refresh(reader, trusting(reports(), roles.migrator)),
        'ownership of materialized view "reports"."Counts"',
        roles.reader,
    )
    assert f'GRANT "{roles.migrator}" TO "{roles.reader}"' in error.fix
    assert "Nothing was refreshed" in str(error)
    assert ("MAINTAIN is not enough" in str(error)) == (roles.server_version >= 170000)


def test_refresh_of_a_stale_view_reports_the_privilege_per_view(roles: Roles) -> None:
    roles.sql(*MINIMUM)
    assert sync(roles.engine(roles.migrator), reports()).committed
    # Already marked stale: refresh goes straight to REFRESH MATERIALIZED VIEW, which reports per view.
    with roles.admin.begin() as conn:
        conn.exec_driver_sql(
            mark_stale_statement(Key("relation", "reports", "Counts")), execution_options={"no_parameters": True}
        )
    roles.sql('GRANT USAGE ON SCHEMA reports TO "{reader}"')
    reader = roles.engine(roles.reader)
    async_reader = create_async_engine(reader.url)

    async def on_asyncio() -> None:
        try:
            await refresh_async(async_reader, trusting(reports(), roles.migrator))
        finally:
            await async_reader.dispose()

    for runner in (lambda: refresh(reader, trusting(reports(), roles.migrator)), lambda: asyncio.run(on_asyncio())):
        with pytest.raises(RefreshError) as info:
            runner()
        (failure,) = info.value.failures
        if roles.server_version >= 170000:
            assert 'MAINTAIN or ownership of materialized view "reports"."Counts" to refresh it' in failure.message
            assert f'GRANT MAINTAIN ON "reports"."Counts" TO "{roles.reader}"' in failure.message
        else:
            assert 'ownership of materialized view "reports"."Counts" to refresh it' in failure.message
        assert f'role "{roles.reader}" lacks' in failure.message


def test_diff_needs_no_privilege_beyond_connect(roles: Roles) -> None:
    roles.sql(*MINIMUM)
    assert sync(roles.engine(roles.migrator), reports()).committed
    # Even with PUBLIC's default TEMPORARY taken away and no USAGE anywhere, diff reads the catalog fine.
    database = make_url(roles.url).database
    roles.sql(f'REVOKE TEMPORARY ON DATABASE "{database}" FROM PUBLIC')
    assert diff_database(roles.engine(roles.reader), trusting(reports(), roles.migrator)).exit_code == 0
    # Without trusting the migration role, its objects are not ours to the read-only role.
    assert diff_database(roles.engine(roles.reader), reports()).exit_code == 102


def test_cli_prints_one_line(roles: Roles, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "priv_reports.py"
    module.write_text(
        textwrap.dedent(
            """\
            from alembic_samizdat import SamizdatView

            class Total(SamizdatView):
                schema = "reports"
                deps_on_unmanaged = {("data", "orders")}
                sql_template = "${preamble} SELECT sum(amount) AS total FROM data.orders ${postamble}"
            """
        )
    )
    roles.sql(*MINIMUM, 'REVOKE CREATE ON SCHEMA reports FROM "{migrator}"')
    url = make_url(roles.url).set(username=roles.migrator, password=PASSWORD).render_as_string(hide_password=False)
    assert main(["sync", url, str(module)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("samizdat: error: create view"), err
    assert f'Role "{roles.migrator}" lacks CREATE on schema "reports"; fix: ' in err
    assert f'GRANT CREATE ON SCHEMA "reports" TO "{roles.migrator}"' in err
    sys.modules.pop("priv_reports", None)


ALEMBIC_MODULE = """
from sqlalchemy import MetaData

from alembic_samizdat import SamizdatRegistry, SamizdatView

metadata = MetaData()
registry = SamizdatRegistry(metadata)


class OrderCount(SamizdatView):
    schema = "reports"
    deps_on_unmanaged = {("data", "orders")}
    sql_template = "${preamble} SELECT count(*) AS n FROM data.orders ${postamble}"


registry.register(OrderCount)
"""


def test_alembic_upgrade_names_the_missing_privilege(
    roles: Roles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import Project

    # CREATE on public for alembic_version (PG15+ no longer grants it to everybody); none on "reports".
    roles.sql(
        *MINIMUM[1:], 'GRANT USAGE ON SCHEMA reports TO "{migrator}"', 'GRANT CREATE ON SCHEMA public TO "{migrator}"'
    )
    url = make_url(roles.url).set(username=roles.migrator, password=PASSWORD).render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.syspath_prepend(str(tmp_path))
    project = Project(tmp_path, url)
    project.write(textwrap.dedent(ALEMBIC_MODULE))
    project.revision("reports")
    before = state(roles)
    with pytest.raises(InsufficientPrivilegeError) as info:
        project.upgrade()
    error = info.value
    assert 'CREATE on schema "reports"' in error.privilege, error
    assert f'"{roles.migrator}"' in str(error) and "OrderCount" in str(error), error
    assert "GRANT" in error.fix and "rolled back" in str(error), error
    assert state(roles) == before
    assert rows(roles.admin, "SELECT * FROM alembic_version") == []
    # With the privilege, the same revision applies.
    roles.sql('GRANT CREATE ON SCHEMA reports TO "{migrator}"')
    project.upgrade()
    assert rows(roles.admin, 'SELECT n FROM reports."OrderCount"') == [(2,)]

"""Drift: objects we manage that somebody changed by hand are reported by ``diff`` and ``alembic check``, and
``sync`` puts them back; what is not a change of definition (grants, owners, indexes, refreshes, a failed
refresh, a different search_path, a dump and restore) is never reported.

A definition row rewritten after the signature is drift; functions, whose row GRANTs also rewrite, carry a
fingerprint of their definition as PostgreSQL prints it (see ``signature.stamp_statement``). These tests change
objects the ways users do and read the verdict back from the real catalog.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import catalog_snapshot, function, make_registry, matview, rows, run_sql, scalar, trigger, view
from sqlalchemy.engine import make_url

from alembic_samizdat import SamizdatRegistry, diff_database, sync
from alembic_samizdat.catalog import read_state
from alembic_samizdat.keys import Key
from alembic_samizdat.pgserver import ThrowawayServerError, find_binaries
from alembic_samizdat.planner import DiffKind
from alembic_samizdat.signature import mark_stale_statement

BASE = "CREATE TABLE items (id int PRIMARY KEY, price numeric NOT NULL); INSERT INTO items VALUES (1, 10), (2, 20)"


def registry() -> SamizdatRegistry:
    """A view, a view on it, a materialized view, a function and a trigger calling it."""
    cheap = view("Cheap", "SELECT id, price FROM items WHERE price < 15", deps_on_unmanaged={"items"})
    cheapest = view("cheapest", 'SELECT min(price) AS p FROM "Cheap"', deps_on={cheap})
    totals = matview("totals", "SELECT count(*) AS n FROM items", deps_on_unmanaged={"items"})
    stamp = function(
        "stamp",
        "${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.price := NEW.price + 0; RETURN NEW; END $$",
    )
    guard = trigger(
        "guard",
        "${preamble} FOR EACH ROW EXECUTE FUNCTION stamp()",
        on_table="items",
        condition="BEFORE INSERT",
        deps_on={stamp},
    )
    return make_registry(cheap, cheapest, totals, stamp, guard)


@pytest.fixture
def synced(engine: sa.Engine) -> SamizdatRegistry:
    run_sql(engine, BASE)
    reg = registry()
    sync(engine, reg)
    assert diff_database(engine, reg).exit_code == 0
    return reg


def drifted(engine: sa.Engine, reg: SamizdatRegistry) -> list[str]:
    """The labels of the objects ``diff`` reports as changed by hand."""
    result = diff_database(engine, reg)
    return sorted(d.label.rsplit(".", 1)[-1] for d in result.differences if d.what is DiffKind.DRIFTED)


def view_sql(engine: sa.Engine, name: str) -> str:
    return str(scalar(engine, "SELECT pg_get_viewdef(CAST(:n AS regclass))", {"n": name}))


HAND_EDITS: dict[str, tuple[str, str]] = {
    "view replaced": ('CREATE OR REPLACE VIEW "Cheap" AS SELECT id, price FROM items WHERE price < 100', "Cheap"),
    "function replaced": (
        "CREATE OR REPLACE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$",
        "stamp",
    ),
    "function altered": ("ALTER FUNCTION stamp() SECURITY DEFINER", "stamp"),
    "function cost": ("ALTER FUNCTION stamp() COST 1000", "stamp"),
    "function setting": ("ALTER FUNCTION stamp() SET work_mem = '1MB'", "stamp"),
    "trigger disabled": ("ALTER TABLE items DISABLE TRIGGER guard", "guard"),
}


@pytest.mark.parametrize("edit", sorted(HAND_EDITS))
def test_a_hand_edit_is_reported_and_sync_puts_it_back(engine: sa.Engine, synced: SamizdatRegistry, edit: str) -> None:
    statement, name = HAND_EDITS[edit]
    before = {"Cheap": view_sql(engine, '"Cheap"'), "cheapest": view_sql(engine, "cheapest")}
    declared_state = catalog_snapshot(engine)
    run_sql(engine, statement)
    assert catalog_snapshot(engine) != declared_state  # the edit is visible in the catalog
    assert drifted(engine, synced) == [name]
    result = diff_database(engine, synced)
    assert result.exit_code == 103
    assert any("changed by hand" in d.describe() and name in d.describe() for d in result.differences)

    outcome = sync(engine, synced)
    replaced = {a.key.name for a in outcome.applied if a.verb.value == "replace"}
    assert name in replaced
    assert not any(a.verb.value == "drop" for a in outcome.applied)  # put back in place, dependents untouched
    assert diff_database(engine, synced).exit_code == 0
    assert {"Cheap": view_sql(engine, '"Cheap"'), "cheapest": view_sql(engine, "cheapest")} == before
    # The definitions are the declared ones again: the trigger fires, the function is the template's.
    assert scalar(engine, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'guard'") == "O"
    assert scalar(engine, "SELECT prosecdef FROM pg_proc WHERE proname = 'stamp'") is False
    # Judged by the catalog as a whole (definitions, cost, security, settings, trigger state, privileges, owners):
    # exactly as the sync left it before the edit.
    assert catalog_snapshot(engine) == declared_state
    run_sql(engine, "INSERT INTO items VALUES (3, 5)")
    assert scalar(engine, "SELECT price FROM items WHERE id = 3") == 5


def test_trigger_replaced_by_hand_is_reported(engine: sa.Engine, synced: SamizdatRegistry) -> None:
    run_sql(engine, "CREATE OR REPLACE TRIGGER guard BEFORE UPDATE ON items FOR EACH ROW EXECUTE FUNCTION stamp()")
    assert drifted(engine, synced) == ["guard"]
    sync(engine, synced)
    assert "BEFORE INSERT" in str(
        scalar(engine, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = 'guard'")
    )
    assert drifted(engine, synced) == []


NOT_DRIFT: dict[str, str] = {
    "grant on a view": 'GRANT SELECT ON "Cheap" TO PUBLIC',
    "grant on a function": "REVOKE EXECUTE ON FUNCTION stamp() FROM PUBLIC",
    "owner of a function": "DO $$ BEGIN EXECUTE format('ALTER FUNCTION stamp() OWNER TO %I', current_user); END $$",
    "refresh": "REFRESH MATERIALIZED VIEW totals",
    "same function again": (
        "CREATE OR REPLACE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.price := NEW.price + 0; "
        "RETURN NEW; END $$"
    ),
    "matview index": "CREATE INDEX ON totals (n)",
    "view owner": "DO $$ BEGIN EXECUTE format('ALTER VIEW \"Cheap\" OWNER TO %I', current_user); END $$",
    "column comment": "COMMENT ON COLUMN \"Cheap\".price IS 'in euros'",
}


@pytest.mark.parametrize("change", sorted(NOT_DRIFT))
def test_what_is_not_a_change_of_definition_is_not_drift(
    engine: sa.Engine, synced: SamizdatRegistry, change: str
) -> None:
    run_sql(engine, NOT_DRIFT[change])
    assert drifted(engine, synced) == []
    assert sync(engine, synced).applied == ()


def test_failed_refresh_is_not_drift(engine: sa.Engine, synced: SamizdatRegistry) -> None:
    # A failed refresh marks the signature stale in a later transaction than the definition's; the next sync
    # refreshes the view and clears the mark, again in a later transaction. Neither is a change of definition.
    run_sql(engine, mark_stale_statement(Key("relation", "public", "totals")))
    result = diff_database(engine, synced)
    assert [d.what for d in result.differences] == [DiffKind.UNPOPULATED]
    applied = sync(engine, synced).applied
    assert [a.verb.value for a in applied] == ["refresh"]
    assert drifted(engine, synced) == []
    assert diff_database(engine, synced).exit_code == 0


def test_the_same_view_or_trigger_written_again_by_hand_is_reported(
    engine: sa.Engine, synced: SamizdatRegistry
) -> None:
    # Documented: for views and triggers, drift is a definition row rewritten after the signature, whatever it
    # now says (only functions carry a fingerprint). Reported, and a sync recreates them once.
    run_sql(
        engine,
        'CREATE OR REPLACE VIEW "Cheap" AS SELECT id, price FROM items WHERE price < 15; '
        "ALTER TABLE items DISABLE TRIGGER guard; ALTER TABLE items ENABLE TRIGGER guard",
    )
    assert drifted(engine, synced) == ["Cheap", "guard"]
    sync(engine, synced)
    assert drifted(engine, synced) == []
    assert sync(engine, synced).applied == ()


def test_a_session_with_another_search_path_sees_no_drift(engine: sa.Engine, synced: SamizdatRegistry) -> None:
    run_sql(engine, "CREATE SCHEMA elsewhere")
    # Force the slow path (the function's fingerprint recomputed) under a search_path on which nothing of ours is
    # visible: the fingerprint must not depend on the session.
    run_sql(engine, "REVOKE EXECUTE ON FUNCTION stamp() FROM PUBLIC")
    other = sa.create_engine(engine.url, connect_args={"options": "-c search_path=elsewhere"})
    try:
        with other.connect() as conn:
            assert conn.exec_driver_sql("SHOW search_path").scalar() == "elsewhere"
            state = read_state(conn, "default")
            assert [obj.key.name for obj in state.managed.values() if obj.fingerprint is not None] == ["stamp"]
            assert [obj.key for obj in state.managed.values() if obj.drifted] == []
            # The catalog query leaves the session's search_path as it found it, inside a transaction too.
            assert conn.exec_driver_sql("SHOW search_path").scalar() == "elsewhere"
        assert drifted(other, synced) == []
    finally:
        other.dispose()


def test_reading_inside_a_transaction_keeps_its_local_search_path(engine: sa.Engine, synced: SamizdatRegistry) -> None:
    run_sql(engine, "REVOKE EXECUTE ON FUNCTION stamp() FROM PUBLIC")
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL search_path = pg_temp, public")
        state = read_state(conn, "default")
        assert any(obj.fingerprint is not None for obj in state.managed.values())
        assert conn.exec_driver_sql("SHOW search_path").scalar() == "pg_temp, public"
        # Unqualified names still resolve as the transaction expects.
        assert conn.exec_driver_sql("SELECT count(*) FROM items").scalar() == 2


def test_dump_and_restore_is_not_drift(
    engine: sa.Engine, synced: SamizdatRegistry, make_database: Callable[[], str]
) -> None:
    # pg_dump writes settings of its own major, which older servers refuse: use the server's major.
    major = int(scalar(engine, "SELECT current_setting('server_version_num')")) // 10000
    try:
        bin_dir = Path(find_binaries(major, install=False))
    except ThrowawayServerError as exc:
        pytest.skip(f"no PostgreSQL {major} client binaries here: {exc}")
    if not (bin_dir / "pg_dump").exists() or not (bin_dir / "psql").exists():
        pytest.skip(f"no pg_dump and psql next to the server binaries in {bin_dir}")
    target = make_database()
    source_dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    target_dsn = make_url(target).set(drivername="postgresql").render_as_string(hide_password=False)
    dumped = subprocess.run([str(bin_dir / "pg_dump"), "--no-owner", source_dsn], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr
    restore = [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", target_dsn]
    loaded = subprocess.run(restore, input=dumped.stdout, capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    restored = sa.create_engine(target)
    try:
        # Every row has a new transaction id: the comments were written after the definitions, and the
        # function's fingerprint is computed again, and matches.
        with restored.connect() as conn:
            state = read_state(conn, "default")
        assert len(state.managed) == 5
        assert [obj.key.name for obj in state.managed.values() if obj.fingerprint is not None] == ["stamp"]
        assert not any(obj.moved for obj in state.managed.values())
        assert drifted(restored, synced) == []
        assert diff_database(restored, synced).exit_code == 0
    finally:
        restored.dispose()


def test_a_hand_edit_inside_the_view_a_user_reads_is_restored_with_its_data(
    engine: sa.Engine, synced: SamizdatRegistry
) -> None:
    run_sql(engine, 'CREATE OR REPLACE VIEW "Cheap" AS SELECT id, price FROM items WHERE price < 100')
    assert rows(engine, 'SELECT id FROM "Cheap" ORDER BY id') == [(1,), (2,)]
    sync(engine, synced)
    assert rows(engine, 'SELECT id FROM "Cheap" ORDER BY id') == [(1,)]


def test_alembic_check_reports_a_hand_edit_and_a_revision_restores_it(
    tmp_path: Path, db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic.util.exc import AutogenerateDiffsDetected
    from helpers import Project, ops_in

    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    project = Project(tmp_path, db_url)
    project.revision("initial")
    project.upgrade()
    project.check()
    original = view_sql(engine, '"OrderLines"')
    run_sql(engine, f'CREATE OR REPLACE VIEW "OrderLines" AS {original.rstrip().rstrip(";")} LIMIT 1')
    with pytest.raises(AutogenerateDiffsDetected, match="OrderLines"):
        project.check()
    script = project.revision("undo the hand edit")
    ops = ops_in(script)
    assert "op.replace_samizdat" in ops and "op.drop_samizdat" not in ops  # put back in place
    assert "changed by hand" in script
    project.upgrade()
    assert view_sql(engine, '"OrderLines"') == original
    project.check()

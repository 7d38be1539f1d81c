"""What users attach to managed objects survives a recreate: through sync and through alembic upgrade."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from helpers import alembic_project

from alembic_samizdat import SamizdatRegistry, sync
from alembic_samizdat.cli import main

MODULE = '''
from sqlalchemy import Column, Integer, MetaData, Table
from alembic_samizdat import SamizdatFunction, SamizdatMaterializedView, SamizdatRegistry, SamizdatView

metadata = MetaData()
registry = SamizdatRegistry(metadata)
t = Table("t", metadata, Column("id", Integer, primary_key=True), Column("a", Integer), Column("b", Integer))


@registry.register
class fmt(SamizdatFunction):
    function_arguments_signature = "x integer"
    sql_template = """${preamble} RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'n' || FMT_BODY $$"""


@registry.register
class Root(SamizdatView):
    deps_on_unmanaged = {"t"}
    deps_on = {fmt}
    sql_template = """${preamble} SELECT id, a, ROOT_B public.fmt(id) AS label FROM t ${postamble}"""


@registry.register
class Mid(SamizdatMaterializedView):
    deps_on = {Root}
    refresh_concurrently = True
    sql_template = """${preamble} SELECT id, a, MID_B label FROM "Root" ${postamble}"""


@registry.register
class Top(SamizdatView):
    deps_on = {Mid}
    sql_template = """${preamble} SELECT id, a, label FROM "Mid" ${postamble}"""
'''


def module(version: int) -> str:
    """Version 1 has column b; version 2 changes the function and drops b from Root and Mid."""
    source = MODULE
    if version == 1:
        return source.replace("FMT_BODY", "$1").replace("ROOT_B", "b,").replace("MID_B", "b,")
    return source.replace("FMT_BODY", "($1 + 0)").replace("ROOT_B", "").replace("MID_B", "")


@pytest.fixture
def roles(engine: sa.Engine) -> Iterator[tuple[str, str]]:
    suffix = uuid.uuid4().hex[:8]
    reader, owner = f"rep_{suffix}", f"own_{suffix}"
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{reader}"; CREATE ROLE "{owner}"')
        conn.exec_driver_sql(
            "CREATE TABLE t (id int PRIMARY KEY, a int, b int); INSERT INTO t VALUES (1, 1, 1), (2, -1, 2);"
            f'GRANT USAGE ON SCHEMA public TO "{reader}"; GRANT ALL ON SCHEMA public TO "{owner}";'
            "CREATE FUNCTION top_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "'BEGIN INSERT INTO t VALUES (NEW.id, NEW.a, 0); RETURN NEW; END'",
            execution_options={"no_parameters": True},
        )
    yield reader, owner
    with engine.begin() as conn:
        for role in (reader, owner):
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def decorate(engine: sa.Engine, reader: str, owner: str) -> None:
    """What a DBA adds by hand after the first deployment."""
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'GRANT SELECT ON "Mid" TO "{reader}" WITH GRANT OPTION;'
            f'GRANT SELECT (a) ON "Top" TO "{reader}";'
            'CREATE UNIQUE INDEX mid_id ON "Mid" (id);'
            'CREATE INDEX mid_positive ON "Mid" (a) WHERE a > 0;'
            'CREATE INDEX mid_b ON "Mid" (b);'
            'CREATE INDEX mid_expr ON "Mid" ((a * 2)) WITH (fillfactor = 70);'
            "ALTER INDEX mid_expr ALTER COLUMN 1 SET STATISTICS 500;"
            'CREATE TRIGGER top_insert INSTEAD OF INSERT ON "Top" FOR EACH ROW EXECUTE FUNCTION top_insert();'
            "COMMENT ON COLUMN \"Top\".a IS 'the a column';"
            "REVOKE EXECUTE ON FUNCTION fmt(integer) FROM PUBLIC;"
            f'GRANT EXECUTE ON FUNCTION fmt(integer) TO "{reader}";'
            f'ALTER VIEW "Top" OWNER TO "{owner}"',
            execution_options={"no_parameters": True},
        )


def assert_kept(engine: sa.Engine, reader: str, owner: str) -> None:
    with engine.connect() as conn:
        q = conn.exec_driver_sql
        assert q(f"SELECT has_table_privilege('{reader}', '\"Mid\"', 'SELECT WITH GRANT OPTION')").scalar()
        assert q(f"SELECT has_column_privilege('{reader}', '\"Top\"', 'a', 'SELECT')").scalar()
        assert not q(f"SELECT has_column_privilege('{reader}', '\"Top\"', 'id', 'SELECT')").scalar()
        indexes = {r[0] for r in q("SELECT indexname FROM pg_indexes WHERE tablename = 'Mid'")}
        assert {"mid_id", "mid_positive", "mid_expr"} <= indexes
        assert "fillfactor='70'" in str(q("SELECT indexdef FROM pg_indexes WHERE indexname = 'mid_expr'").scalar())
        assert "mid_b" not in indexes  # its column is gone: reported as lost, not kept half-broken
        assert q("SELECT attstattarget FROM pg_attribute WHERE attrelid = 'mid_expr'::regclass").scalar() == 500
        assert q("SELECT count(*) FROM pg_trigger WHERE tgname = 'top_insert'").scalar() == 1
        assert q("SELECT col_description('\"Top\"'::regclass, 2)").scalar() == "the a column"
        assert q(f"SELECT has_function_privilege('{reader}', 'fmt(integer)', 'EXECUTE')").scalar()
        assert not q("SELECT has_function_privilege('public', 'fmt(integer)', 'EXECUTE')").scalar()
        assert q("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'Top'").scalar() == owner
        # the hand-made unique index still serves REFRESH … CONCURRENTLY
        q('REFRESH MATERIALIZED VIEW CONCURRENTLY "Mid"')
        # and the hand-made INSTEAD OF trigger still works
        q('INSERT INTO "Top" (id, a) VALUES (7, 3)')
        assert q("SELECT count(*) FROM t WHERE id = 7").scalar() == 1
        conn.rollback()


def load(tmp_path: Path, version: int) -> SamizdatRegistry:
    name = f"presmod_v{version}_{uuid.uuid4().hex[:6]}"
    (tmp_path / f"{name}.py").write_text(module(version))
    registry = SamizdatRegistry()
    registry.load(str(tmp_path / f"{name}.py"))
    return registry


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_sync_keeps_grants_owner_indexes_triggers(
    engine: sa.Engine, roles: tuple[str, str], tmp_path: Path, discipline: str
) -> None:
    reader, owner = roles
    sync(engine, load(tmp_path, 1))
    decorate(engine, reader, owner)
    result = sync(engine, load(tmp_path, 2), discipline=discipline)
    assert {a.key.name for a in result.applied if a.verb.value == "drop"} == {"Root", "Mid", "Top"}
    assert {a.key.name for a in result.applied if a.verb.value == "replace"} == {"fmt"}  # keeps all by itself
    assert_kept(engine, reader, owner)
    assert any("mid_b" in line and 'column "b" does not exist' in line for line in result.lost), result.lost
    assert any("grant SELECT (a)" in line for line in result.kept), result.kept
    assert not sync(engine, load(tmp_path, 2)).plan.actions


def test_cli_reports_lost_items(
    engine: sa.Engine, db_url: str, roles: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reader, owner = roles
    (tmp_path / "cli_v1.py").write_text(module(1))
    (tmp_path / "cli_v2.py").write_text(module(2))
    assert main(["sync", "-q", db_url, str(tmp_path / "cli_v1.py")]) == 0
    decorate(engine, reader, owner)
    assert main(["sync", "-v", db_url, str(tmp_path / "cli_v2.py")]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "mid_b" in captured.err
    assert "kept grant SELECT" in captured.out or "grant SELECT" in captured.out


def test_migration_file_does_the_same_capture(
    engine: sa.Engine, db_url: str, dsn: str, roles: tuple[str, str], tmp_path: Path
) -> None:
    import subprocess

    from alembic_samizdat.pgserver import find_binaries

    reader, owner = roles
    (tmp_path / "mf_v1.py").write_text(module(1))
    (tmp_path / "mf_v2.py").write_text(module(2))
    assert main(["sync", "-q", db_url, str(tmp_path / "mf_v1.py")]) == 0
    decorate(engine, reader, owner)
    script = tmp_path / "plan.sql"
    assert main(["sync", "-q", "-t", "dryrun", "-m", str(script), db_url, str(tmp_path / "mf_v2.py")]) == 0
    done = subprocess.run(
        [str(find_binaries() / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(script), dsn],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "mid_b" in done.stderr  # the lost index is reported by the server as a WARNING
    assert_kept(engine, reader, owner)


def test_alembic_upgrade_and_downgrade_keep_them(
    engine: sa.Engine, db_url: str, roles: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, owner = roles
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = alembic_project(tmp_path, "presmod")

    def step(version: int, message: str) -> None:
        (tmp_path / "presmod.py").write_text(module(version))
        sys.modules.pop("presmod", None)
        command.revision(cfg, message=message, autogenerate=True)
        sys.modules.pop("presmod", None)
        command.upgrade(cfg, "head")

    step(1, "first")
    decorate(engine, reader, owner)
    step(2, "second")
    assert_kept(engine, reader, owner)
    sys.modules.pop("presmod", None)
    command.downgrade(cfg, "-1")
    with engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT has_table_privilege('{reader}', '\"Mid\"', 'SELECT')").scalar()
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_trigger WHERE tgname = 'top_insert'").scalar() == 1
    sys.modules.pop("presmod", None)


GRANTED = '''
from sqlalchemy import Column, Integer, MetaData, Table
from alembic_samizdat import SamizdatFunction, SamizdatRegistry, SamizdatView

metadata = MetaData()
registry = SamizdatRegistry(metadata)
t = Table("t", metadata, Column("id", Integer, primary_key=True), Column("a", Integer), Column("b", Integer))


@registry.register
class Shown(SamizdatView):
    deps_on_unmanaged = {"t"}
    grants = GRANTS
    sql_template = """${preamble} SELECT id, a FROM t ${postamble}"""


@registry.register
class twice(SamizdatFunction):
    function_arguments_signature = "x integer"
    grants = FGRANTS
    sql_template = """${preamble} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT $1 * 2 $$"""
'''


def granted(tmp_path: Path, grants: dict[str, set[str]], fgrants: dict[str, set[str]]) -> SamizdatRegistry:
    name = f"granted_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(GRANTED.replace("FGRANTS", repr(fgrants)).replace("GRANTS", repr(grants)))
    registry = SamizdatRegistry()
    registry.load(str(tmp_path / f"{name}.py"))
    return registry


def privileges(engine: sa.Engine, role: str) -> tuple[bool, bool, bool]:
    with engine.connect() as conn:
        q = conn.exec_driver_sql
        return (
            bool(q(f"SELECT has_table_privilege('{role}', '\"Shown\"', 'SELECT')").scalar()),
            bool(q(f"SELECT has_table_privilege('{role}', '\"Shown\"', 'UPDATE')").scalar()),
            bool(q(f"SELECT has_function_privilege('{role}', 'twice(integer)', 'EXECUTE')").scalar()),
        )


def test_declared_grants_applied_without_recreating(engine: sa.Engine, roles: tuple[str, str], tmp_path: Path) -> None:
    from alembic_samizdat import diff_database

    reader, other = roles
    sync(engine, granted(tmp_path, {reader: {"SELECT"}}, {"PUBLIC": {"EXECUTE"}}))
    assert privileges(engine, reader) == (True, False, True)
    with engine.begin() as conn:  # someone else's grant: never touched
        conn.exec_driver_sql(f'GRANT UPDATE ON "Shown" TO "{other}"')
        oid = conn.exec_driver_sql("SELECT '\"Shown\"'::regclass::oid").scalar()
    changed = granted(tmp_path, {other: {"select"}}, {reader: {"EXECUTE"}})
    found = diff_database(engine, changed)
    assert {d.what.value for d in found.differences} == {"grants differ"} and found.exit_code == 103
    result = sync(engine, changed)
    assert {a.verb.value for a in result.applied} == {"grant"}  # GRANT/REVOKE only, no drop/create
    assert privileges(engine, reader) == (False, False, True)
    assert privileges(engine, other) == (True, True, False)  # PUBLIC EXECUTE revoked: it was declared before
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT '\"Shown\"'::regclass::oid").scalar() == oid
    assert diff_database(engine, changed).exit_code == 0
    # Drift: a declared grant revoked by hand is reported and granted again.
    with engine.begin() as conn:
        conn.exec_driver_sql(f'REVOKE SELECT ON "Shown" FROM "{other}"')
    assert diff_database(engine, changed).exit_code == 103
    sync(engine, changed)
    assert privileges(engine, other)[0]
    assert not sync(engine, changed).plan.actions


def test_declared_grants_are_validated() -> None:
    from alembic_samizdat import DeclarationError, SamizdatView

    class Bad(SamizdatView):
        grants = {"reporting": {"EXECUTE"}}
        sql_template = "${preamble} SELECT 1 ${postamble}"

    registry = SamizdatRegistry()
    registry.register(Bad)
    with pytest.raises(DeclarationError, match="'EXECUTE' is not a privilege of a view"):
        registry.graph()


def test_declared_grants_through_alembic(
    engine: sa.Engine, db_url: str, roles: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from alembic.util.exc import AutogenerateDiffsDetected

    reader, other = roles
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = alembic_project(tmp_path, "grantmod")

    def write(grants: dict[str, set[str]]) -> None:
        (tmp_path / "grantmod.py").write_text(GRANTED.replace("FGRANTS", "{}").replace("GRANTS", repr(grants)))
        sys.modules.pop("grantmod", None)

    def revision(message: str) -> str:
        sys.modules.pop("grantmod", None)
        script = command.revision(cfg, message=message, autogenerate=True)
        assert script is not None and not isinstance(script, list)
        return Path(script.path).read_text()

    write({reader: {"SELECT"}})
    revision("first")
    command.upgrade(cfg, "head")
    assert privileges(engine, reader)[0]
    write({other: {"SELECT"}})
    sys.modules.pop("grantmod", None)
    with pytest.raises(AutogenerateDiffsDetected, match="regrant view"):
        command.check(cfg)
    script = revision("regrant")
    upgrade = script.split("def upgrade()")[1].split("def downgrade()")[0]
    assert "op.regrant_samizdat" in upgrade and "op.drop_samizdat" not in upgrade and "op.create_" not in upgrade
    sys.modules.pop("grantmod", None)
    command.upgrade(cfg, "head")
    assert privileges(engine, reader)[0] is False and privileges(engine, other)[0] is True
    sys.modules.pop("grantmod", None)
    command.check(cfg)
    sys.modules.pop("grantmod", None)
    command.downgrade(cfg, "-1")
    assert privileges(engine, reader)[0] is True and privileges(engine, other)[0] is False
    sys.modules.pop("grantmod", None)


def test_owner_the_running_role_may_not_set_is_reported(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    """PostgreSQL 16+: a role that may drop an object (it has its owner's privileges) but not SET ROLE to the
    owner cannot give the recreated object back to that owner: reported as lost, the sync still succeeds."""
    with engine.connect() as conn:
        version = int(conn.exec_driver_sql("SHOW server_version_num").scalar() or 0)
    if version < 160000:
        pytest.skip("GRANT … WITH SET FALSE needs PostgreSQL 16 or later; on older servers owners are always settable")
    suffix = uuid.uuid4().hex[:8]
    runner, boss = f"run_{suffix}", f"boss_{suffix}"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f'CREATE ROLE "{runner}" LOGIN PASSWORD \'samizdat-test\'; CREATE ROLE "{boss}";'
            f'GRANT ALL ON SCHEMA public TO "{runner}"; GRANT ALL ON SCHEMA public TO "{boss}";'
            f'GRANT "{boss}" TO "{runner}" WITH INHERIT TRUE, SET FALSE;'
            "CREATE TABLE t (id int PRIMARY KEY, a int, b int);"
            f'GRANT SELECT ON t TO "{runner}"'
        )
    as_runner = sa.create_engine(sa.make_url(db_url).set(username=runner, password="samizdat-test"))
    try:
        sync(as_runner, load(tmp_path, 1))
        with engine.begin() as conn:
            conn.exec_driver_sql(f'ALTER VIEW "Top" OWNER TO "{boss}"')
        result = sync(as_runner, load(tmp_path, 2))
    finally:
        as_runner.dispose()
    assert any("owner" in line and boss in line for line in result.lost), result.lost
    with engine.connect() as conn:
        assert (
            conn.exec_driver_sql("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'Top'").scalar()
            == runner
        )
    with engine.begin() as conn:
        for role in (runner, boss):
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')

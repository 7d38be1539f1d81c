"""Other drivers than psycopg 3: a user's application engine (psycopg2), asyncio on asyncpg, and URLs.

The CLI always talks psycopg 3, whatever driver a URL names; the Python API works on the user's own engine.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import EXAMPLE, make_registry, matview, view
from sqlalchemy.engine import make_url

from alembic_samizdat import api
from alembic_samizdat.cli import main
from alembic_samizdat.errors import LockTimeoutError
from alembic_samizdat.refresher import RefreshError

pytest.importorskip("psycopg2")
pytest.importorskip("asyncpg")


def with_driver(db_url: str, driver: str) -> str:
    return make_url(db_url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)


@pytest.fixture
def items(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id int PRIMARY KEY, price int); INSERT INTO items VALUES (1, 5)")
    return engine


@pytest.fixture
def psycopg2_engine(db_url: str, items: sa.Engine) -> Iterator[sa.Engine]:
    engine = sa.create_engine(with_driver(db_url, "psycopg2"))
    assert engine.dialect.driver == "psycopg2"
    yield engine
    engine.dispose()


Base = view("Base", "SELECT id, price FROM items", deps_on_unmanaged={"items"})
Totals = matview("Totals", 'SELECT sum(price) AS total FROM "Base"', deps_on={Base}, refresh_triggers={"items"})


def test_sync_diff_refresh_nuke_on_a_psycopg2_engine(psycopg2_engine: sa.Engine, items: sa.Engine) -> None:
    registry = make_registry(Base, Totals)
    for discipline in ("checkpoint", "jumbo"):
        api.sync(psycopg2_engine, registry, discipline=discipline)
        assert api.diff_database(psycopg2_engine, registry).exit_code == 0
        with psycopg2_engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO items VALUES (2, 7)" if discipline == "checkpoint" else "SELECT 1")
        assert api.refresh(psycopg2_engine, registry).refreshed
        assert api.refresh(psycopg2_engine, registry, parallel=True, jobs=2).refreshed
        with items.connect() as conn:
            assert conn.exec_driver_sql('SELECT total FROM "Totals"').scalar() == 12
        assert len(api.nuke(psycopg2_engine, registry).applied) >= 2
        assert api.diff_database(psycopg2_engine, registry).exit_code == 102


def test_kept_grants_are_reported_on_a_psycopg2_engine(psycopg2_engine: sa.Engine, items: sa.Engine) -> None:
    api.sync(psycopg2_engine, make_registry(Base, Totals))
    with items.begin() as conn:
        conn.exec_driver_sql('CREATE ROLE "reader_p2"; GRANT SELECT ON "Totals" TO "reader_p2"')
    try:
        changed = matview("Totals", 'SELECT sum(price) + 0 AS total FROM "Base"', deps_on={Base})
        result = api.sync(psycopg2_engine, make_registry(Base, changed))
        assert any("reader_p2" in line for line in result.kept), result.kept
    finally:
        with items.begin() as conn:
            conn.exec_driver_sql('DROP OWNED BY "reader_p2"; DROP ROLE "reader_p2"')


def test_lock_timeout_is_recognised_on_a_psycopg2_engine(psycopg2_engine: sa.Engine, items: sa.Engine) -> None:
    """Errors are told apart by SQLSTATE, which psycopg2 calls pgcode."""
    registry = make_registry(Base)
    api.sync(psycopg2_engine, registry)
    changed = make_registry(view("Base", "SELECT id, price + 0 AS price FROM items", deps_on_unmanaged={"items"}))
    with items.connect() as holder:
        holder.exec_driver_sql('LOCK TABLE "Base" IN ACCESS EXCLUSIVE MODE')
        with pytest.raises(LockTimeoutError, match="Base"):
            api.sync(psycopg2_engine, changed, lock_timeout=0.2)
        holder.rollback()


def test_refresh_async_on_asyncpg(db_url: str, items: sa.Engine) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    registry = make_registry(Base, Totals)
    api.sync(items, registry)
    with items.begin() as conn:
        conn.exec_driver_sql("INSERT INTO items VALUES (2, 7)")

    async def run() -> None:
        engine = create_async_engine(with_driver(db_url, "asyncpg"))
        try:
            result = await api.refresh_async(engine, registry, jobs=2)
            assert [key.name for key in result.refreshed] == ["Totals"]
        finally:
            await engine.dispose()

    asyncio.run(run())
    with items.connect() as conn:
        assert conn.exec_driver_sql('SELECT total FROM "Totals"').scalar() == 12


def test_refresh_async_failure_on_asyncpg_names_the_view(db_url: str, items: sa.Engine) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    Fails = matview("Fails", "SELECT 1 / (count(*) - count(*)) AS boom FROM items", with_data=False)
    registry = make_registry(Fails)
    api.sync(items, registry)

    async def run() -> None:
        engine = create_async_engine(with_driver(db_url, "asyncpg"))
        try:
            with pytest.raises(RefreshError, match=r"Fails.*division by zero"):
                await api.refresh_async(engine, registry)
        finally:
            await engine.dispose()

    asyncio.run(run())


MODULE = """
from alembic_samizdat import SamizdatView

class V(SamizdatView):
    sql_template = "${preamble} SELECT 1 AS one ${postamble}"
"""


#: The CLI in a process where psycopg2 is not installed (``None`` in sys.modules makes its import fail).
WITHOUT_PSYCOPG2 = "import sys; sys.modules['psycopg2'] = None; from alembic_samizdat.cli import main; sys.exit(main())"


def samizdat_without_psycopg2(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_PSYCOPG2, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def test_cli_takes_a_psycopg2_url_and_uses_psycopg3(db_url: str, tmp_path: Path) -> None:
    module = tmp_path / "one.py"
    module.write_text(textwrap.dedent(MODULE))
    done = samizdat_without_psycopg2("sync", with_driver(db_url, "psycopg2"), str(module))
    assert done.returncode == 0, done.stderr
    assert main(["diff", with_driver(db_url, "asyncpg"), str(module)]) == 0


def test_cli_on_an_alembic_env_with_a_psycopg2_url(db_url: str, tmp_path: Path) -> None:
    """env.py builds its own engine from the URL; under the CLI it connects with psycopg 3."""
    project = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    upgrade = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=project,
        env={**os.environ, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    env = {"DATABASE_URL": with_driver(db_url, "psycopg2")}
    # -c works wherever a database and a registry are needed.
    for args, status in (
        (["diff"], 0),
        (["nuke"], 0),
        (["diff"], 102),
        (["sync"], 0),
        (["refresh"], 0),
        (["diff"], 0),
    ):
        done = samizdat_without_psycopg2(*args, "-c", "alembic.ini", cwd=project, env=env)
        assert done.returncode == status, (args, done.stderr)


def test_alembic_init_placeholder_in_alembic_ini_is_one_line(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config

    command.init(Config(str(tmp_path / "alembic.ini")), str(tmp_path / "migrations"))
    assert "driver://user:pass@localhost/dbname" in (tmp_path / "alembic.ini").read_text()
    done = samizdat_without_psycopg2("diff", "-c", "alembic.ini", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert "sqlalchemy.url" in done.stderr and "driver://user:***@localhost/dbname" in done.stderr
    assert "postgresql://USER@HOST/DBNAME" in done.stderr


def test_alembic_init_placeholder_url_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "one.py"
    module.write_text(textwrap.dedent(MODULE))
    assert main(["diff", "driver://user:pass@localhost/dbname", str(module)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "driver://user:***@localhost/dbname" in err and "pass@" not in err
    assert "postgresql://USER@HOST/DBNAME" in err


def test_other_databases_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "one.py"
    module.write_text(textwrap.dedent(MODULE))
    assert main(["diff", "mysql+pymysql://me@localhost/shop", str(module)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only PostgreSQL" in err and "postgresql://" in err

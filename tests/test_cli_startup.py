"""What the command line loads, and its no-op check without SQLAlchemy (alembic_samizdat/quick.py).

Nothing here measures time (bench/ does). The tests check what is imported, that the quick check reads the very
state the usual path reads, that it answers "nothing to do" only when a sync would do nothing, and that any doubt
(a URL it does not read as SQLAlchemy does, a failed connection, something to do) takes the usual path.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from helpers import make_registry, matview, view

from alembic_samizdat import api
from alembic_samizdat.catalog import read_state
from alembic_samizdat.cli import DISCIPLINES, NOTHING_TO_DO, main
from alembic_samizdat.execute import Discipline
from alembic_samizdat.planner import Plan
from alembic_samizdat.quick import _Connection, connect_arguments, nothing_to_sync

MODULE = '''
from alembic_samizdat import SamizdatView, SamizdatMaterializedView

class Base(SamizdatView):
    deps_on_unmanaged = {"items"}
    sql_template = """${preamble} SELECT id, price FROM items ${postamble}"""

class Totals(SamizdatMaterializedView):
    deps_on = {Base}
    grants = {"PUBLIC": {"SELECT"}}
    sql_template = """${preamble} SELECT sum(price) AS total FROM "Base" ${postamble}"""
'''


def _loaded_after(*argv: str) -> set[str]:
    """The top-level packages loaded by running the CLI with ``argv`` in a fresh interpreter."""
    script = textwrap.dedent(
        f"""
        import sys
        from alembic_samizdat.cli import main
        try:
            code = main({list(argv)!r})
        except SystemExit as exc:
            code = exc.code
        print("CODE", code)
        print("LOADED", " ".join(sorted({{m.split(".")[0] for m in sys.modules}})))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120)
    lines = done.stdout.splitlines()
    loaded = next(line for line in lines if line.startswith("LOADED ")).split()[1:]
    code = next(line for line in lines if line.startswith("CODE ")).split()[1]
    assert code == "0", done.stdout + done.stderr
    return set(loaded)


def test_help_loads_no_sqlalchemy() -> None:
    loaded = _loaded_after("--help")
    assert "sqlalchemy" not in loaded and "psycopg" not in loaded and "alembic" not in loaded


def test_printdot_loads_no_sqlalchemy(tmp_path: Path) -> None:
    module = tmp_path / "mod_dot.py"
    module.write_text(MODULE)
    assert "sqlalchemy" not in _loaded_after("printdot", str(module))


def test_parser_disciplines_are_the_engines() -> None:
    assert tuple(d.value for d in Discipline) == DISCIPLINES


def test_nothing_to_do_says_what_the_api_says() -> None:
    assert api.SyncResult(Plan((), ()), Discipline.CHECKPOINT, (), True).summary() == NOTHING_TO_DO


@pytest.fixture
def module(tmp_path: Path, engine: sa.Engine) -> Path:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id int PRIMARY KEY, price int); INSERT INTO items VALUES (1, 5)")
    path = tmp_path / "mod_quick.py"
    path.write_text(MODULE)
    return path


def test_noop_sync_loads_no_sqlalchemy(module: Path, db_url: str) -> None:
    assert main(["sync", "-q", db_url, str(module)]) == 0
    loaded = _loaded_after("sync", db_url, str(module))
    assert "sqlalchemy" not in loaded
    assert "psycopg" in loaded  # it did connect


def test_quick_check_answers_only_when_nothing_to_do(
    module: Path, db_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic_samizdat.registry import registry_from_modules

    registry = registry_from_modules([str(module)])
    # Nothing synced yet: there is something to do.
    assert not nothing_to_sync(db_url, registry, connect_timeout=5, adopt=None)
    assert main(["sync", db_url, str(module)]) == 0
    assert "create view" in capsys.readouterr().out
    assert nothing_to_sync(db_url, registry, connect_timeout=5, adopt=None)
    assert main(["sync", db_url, str(module)]) == 0
    assert capsys.readouterr().out.strip() == NOTHING_TO_DO
    # Another scope owns nothing here: to it, everything is missing.
    assert not nothing_to_sync(db_url, registry.with_scope("other"), connect_timeout=5, adopt=None)
    # A change by hand (drift) is something to do, and the usual path does it.
    with engine.begin() as conn:
        conn.exec_driver_sql('CREATE OR REPLACE VIEW "Base" AS SELECT id, price FROM items WHERE id > 0')
    assert not nothing_to_sync(db_url, registry, connect_timeout=5, adopt=None)
    assert main(["sync", "-q", db_url, str(module)]) == 0
    assert nothing_to_sync(db_url, registry, connect_timeout=5, adopt=None)
    # An unpopulated materialized view is something to do too.
    with engine.begin() as conn:
        conn.exec_driver_sql('REFRESH MATERIALIZED VIEW "Totals" WITH NO DATA')
    assert not nothing_to_sync(db_url, registry, connect_timeout=5, adopt=None)


def test_quick_read_is_the_usual_read(module: Path, db_url: str, engine: sa.Engine) -> None:
    """The same query through a plain psycopg connection gives the same state as through SQLAlchemy."""
    registry = make_registry(
        view("a", "SELECT 1 AS x"),
        matview("b", 'SELECT x FROM "a"', after="CREATE UNIQUE INDEX ON ${samizdatname} (x)"),
    )
    api.sync(engine, registry)
    graph = registry.graph()
    arguments = connect_arguments(db_url, connect_timeout=5)
    assert arguments is not None
    for dependents in (False, True):
        with engine.connect() as conn:
            usual = read_state(conn, registry.scope, graph.nodes, dependents=dependents)
        with psycopg.connect(**arguments, autocommit=True) as raw:
            quick = read_state(_Connection(raw), registry.scope, graph.nodes, dependents=dependents)  # type: ignore[arg-type]
        assert quick == usual


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@h:5433/db",
        "postgresql+psycopg://u:p%40ss%2Fword@db.example.com/my_db?sslmode=require&application_name=x",
        "postgresql+psycopg2://u@127.0.0.1/db?connect_timeout=3",
        "postgresql:///db",
        "postgresql://",
        "postgresql://h/db?options=-csearch_path%3Dx",
    ],
)
def test_connect_arguments_are_sqlalchemys(url: str) -> None:
    """For every URL it reads, psycopg gets what SQLAlchemy's psycopg dialect would give it."""
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://").replace("+psycopg2", "+psycopg"))
    _, expected = engine.dialect.create_connect_args(engine.url)
    expected.pop("context", None)
    expected.setdefault("connect_timeout", 7)
    assert connect_arguments(url, connect_timeout=7) == expected


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@ss@h/db",  # two "@": left to SQLAlchemy's parser and its error
        "postgresql://u@[::1]:5432/db",
        "postgresql://u@h1,h2/db",
        "postgresql://u@h/db?host=/tmp",
        "postgresql://u@h/db?a=1&a=2",
        "mysql://u@h/db",
        "driver://user:pass@localhost/dbname",
        "postgresql://u@h:port/db",
        "postgresql://u@h/my%20db",
    ],
)
def test_connect_arguments_leave_the_rest_to_sqlalchemy(url: str) -> None:
    assert connect_arguments(url, connect_timeout=7) is None


def test_unreachable_server_takes_the_usual_path(module: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://nobody@127.0.0.1:1/nothing"
    assert main(["sync", "--connect-timeout", "2", url, str(module)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("samizdat: error: cannot connect to") and "\n" not in err.strip()

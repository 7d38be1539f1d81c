"""Entry paths that users take and the rest of the suite does not: the API given a ``MetaData`` or a list of
modules and classes (with a scope), and the CLI's interrupted, failing and internal-error exits, with and
without ``-v``. Everything that touches SQL runs on the real server; results are read from the catalog."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import rows, run_sql
from sqlalchemy import MetaData

from alembic_samizdat import NameClashError, SamizdatError, SamizdatRegistry, SamizdatView, diff_database, sync
from alembic_samizdat.cli import main

MODULE = """
from alembic_samizdat import SamizdatView


class {name}(SamizdatView):
    sql_template = "${{preamble}} SELECT {value} AS value ${{postamble}}"
"""


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on sys.path for modules the test writes (forgotten again afterwards)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("entry_"):
            del sys.modules[name]


def signed_views(engine: sa.Engine) -> list[tuple[str, str]]:
    """(view name, scope its signature names), from the catalog."""
    return [
        (name, comment.split('"scope":"')[1].split('"')[0])
        for name, comment in rows(
            engine,
            "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
            "WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'v' ORDER BY 1",
        )
    ]


# --- the API's declarations argument ----------------------------------------------------------------------------


def test_sync_given_a_metadata_uses_its_registry(engine: sa.Engine) -> None:
    metadata = MetaData()
    registry = SamizdatRegistry(metadata)

    @registry.register
    class from_metadata(SamizdatView):
        sql_template = "${preamble} SELECT 1 AS value ${postamble}"

    sync(engine, metadata)
    assert signed_views(engine) == [("from_metadata", "default")]
    assert diff_database(engine, metadata).exit_code == 0
    # A scope given with it applies: under another scope the view is someone else's, and is left alone.
    with pytest.raises(NameClashError, match="signed by scope 'default'"):
        sync(engine, metadata, scope="other")
    assert signed_views(engine) == [("from_metadata", "default")]


def test_metadata_without_a_registry_is_refused_with_the_fix(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE VIEW keep AS SELECT 1 AS one")
    with pytest.raises(SamizdatError, match=r"this MetaData has no SamizdatRegistry; create one with"):
        sync(engine, MetaData())
    assert rows(
        engine, "SELECT relname FROM pg_class WHERE relkind = 'v' AND relnamespace = 'public'::regnamespace"
    ) == [("keep",)]


def test_sync_given_modules_by_name_and_path_and_classes(engine: sa.Engine, modules: Path) -> None:
    (modules / "entry_one.py").write_text(MODULE.format(name="by_name", value=1))
    second = modules / "entry_two.py"
    second.write_text(MODULE.format(name="by_path", value=2))

    class given_as_class(SamizdatView):
        sql_template = "${preamble} SELECT 3 AS value ${postamble}"

    sync(engine, ["entry_one", str(second), given_as_class], scope="mixed")
    assert signed_views(engine) == [("by_name", "mixed"), ("by_path", "mixed"), ("given_as_class", "mixed")]
    assert rows(engine, 'SELECT value FROM by_name UNION ALL SELECT value FROM "by_path"') == [(1,), (2,)]
    assert diff_database(engine, ["entry_one", str(second), given_as_class], scope="mixed").exit_code == 0


# --- the CLI's exits ----------------------------------------------------------------------------------------------

BUG = """
from alembic_samizdat import SamizdatView


class Exploding:
    def __iter__(self):
        raise RuntimeError("boom from a bug")


class V(SamizdatView):
    deps_on = Exploding()
    sql_template = "${preamble} SELECT 1 AS one ${postamble}"
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_cli_internal_error_is_one_line_unless_verbose(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    module = tmp_path / "bug.py"
    module.write_text(textwrap.dedent(BUG))
    code = main([*(["-v"] if verbose else []), "printdot", str(module)])
    captured = capsys.readouterr()
    assert code == 1
    last = "samizdat: internal error: RuntimeError: boom from a bug (run with -v for the traceback)"
    assert captured.err.splitlines()[-1] == last
    if verbose:
        assert captured.err.startswith("Traceback (most recent call last):")
        assert 'raise RuntimeError("boom from a bug")' in captured.err
    else:
        assert captured.err == last + "\n"
    assert captured.out == ""


def test_cli_ctrl_c_exits_130_saying_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "interrupted.py"
    # What the user's Ctrl-C raises, wherever the CLI happens to be (here: loading the module).
    module.write_text("raise KeyboardInterrupt\n")
    assert main(["printdot", str(module)]) == 130
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "samizdat: interrupted\n")


@pytest.mark.parametrize("verbose", [False, True])
def test_cli_database_error_is_exit_1_with_a_traceback_only_when_verbose(
    db_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str], verbose: bool
) -> None:
    module = tmp_path / "broken.py"
    module.write_text(
        textwrap.dedent(
            """
            from alembic_samizdat import SamizdatView


            class reads_nothing(SamizdatView):
                sql_template = "${preamble} SELECT * FROM no_such_table ${postamble}"
            """
        )
    )
    code = main([*(["-v"] if verbose else []), "sync", db_url, str(module)])
    captured = capsys.readouterr()
    assert code == 1
    error = captured.err.splitlines()[-1]
    assert error.startswith("samizdat: error: ") and "no_such_table" in error and "reads_nothing" in error, error
    assert ("Traceback (most recent call last):" in captured.err) is verbose
    # The password of the URL never shows, traceback or not.
    password = sa.make_url(db_url).password
    assert password and password not in captured.err + captured.out
    assert rows(engine, "SELECT count(*) FROM pg_class WHERE relname = 'reads_nothing'") == [(0,)]


# --- the ORM checks and the Alembic configuration as an entry point ----------------------------------------------


def test_model_checks_name_a_missing_view_and_refuse_what_is_not_a_table(engine: sa.Engine) -> None:
    from sqlalchemy import Column, Integer, Table
    from sqlalchemy.types import NullType

    from alembic_samizdat.orm import ColumnDriftError, check_model_columns

    missing = Table("nowhere", MetaData(), Column("n", Integer))
    with engine.connect() as conn, pytest.raises(ColumnDriftError, match=r"^nowhere: no such view or table"):
        check_model_columns(conn, missing)
    with engine.connect() as conn, pytest.raises(TypeError, match="expected a mapped class or a Table"):
        check_model_columns(conn, object())
    # A type without a Python type (here the model's NullType) is not reported as different.
    run_sql(engine, "CREATE VIEW words AS SELECT 1 AS n, 'a b'::tsvector AS v")
    loose = Table("words", MetaData(), Column("n", Integer), Column("v", NullType()))
    with engine.connect() as conn:
        check_model_columns(conn, loose)


def _ini(tmp_path: Path, env_body: str) -> Path:
    (tmp_path / "migrations").mkdir()
    (tmp_path / "migrations" / "env.py").write_text(textwrap.dedent(env_body))
    ini = tmp_path / "alembic.ini"
    ini.write_text(f"[alembic]\nscript_location = {tmp_path / 'migrations'}\n")
    return ini


def test_alembic_configuration_that_cannot_give_a_registry_says_why(tmp_path: Path, db_url: str) -> None:
    from alembic_samizdat.alembic.environment import AlembicConfigError, from_alembic_config

    with pytest.raises(AlembicConfigError, match=r"^no Alembic configuration at .*nothing\.ini$"):
        from_alembic_config(str(tmp_path / "nothing.ini"))
    broken = tmp_path / "broken.ini"
    broken.write_text(f"[alembic]\nscript_location = {tmp_path / 'no-such-dir'}\n")
    with pytest.raises(AlembicConfigError, match=r"broken\.ini: "):
        from_alembic_config(str(broken))
    ini = _ini(
        tmp_path,
        f"""
        from alembic import context
        from sqlalchemy import MetaData, create_engine

        with create_engine({db_url!r}).connect() as connection:
            context.configure(connection=connection, target_metadata=MetaData())
            with context.begin_transaction():
                context.run_migrations()
        """,
    )
    with pytest.raises(AlembicConfigError, match=r"target_metadata holds no SamizdatRegistry; create one with"):
        from_alembic_config(str(ini))

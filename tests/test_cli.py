"""The samizdat CLI against a real PostgreSQL: exit codes, one-line errors, migration files, printdot."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from alembic_samizdat.cli import main

BASE = '''
from alembic_samizdat import SamizdatView, SamizdatMaterializedView, SamizdatFunction, SamizdatTrigger

class Base(SamizdatView):
    deps_on_unmanaged = {"items"}
    sql_template = """${preamble} SELECT id, price FROM items ${postamble}"""

class Totals(SamizdatMaterializedView):
    deps_on = {Base}
    refresh_triggers = {"items"}
    sql_template = """${preamble} SELECT sum(price) AS total FROM "Base" ${postamble}"""

'''


def write_module(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def items(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id int PRIMARY KEY, price int); INSERT INTO items VALUES (1, 5)")
    return engine


def module_v1(tmp_path: Path, price_expr: str = "price", extra: str = "") -> str:
    body = BASE.replace('class "Odd Name"(object): pass\n', "").replace(
        "SELECT id, price", f"SELECT id, {price_expr} AS price"
    )
    return write_module(tmp_path, f"mod_{abs(hash((price_expr, extra)))}", body + extra)


def test_sync_then_diff_is_clean(
    items: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = module_v1(tmp_path)
    assert main(["sync", db_url, mod]) == 0
    out = capsys.readouterr().out
    assert "create view" in out and "refresh matview" in out
    assert main(["diff", db_url, mod]) == 0
    with items.connect() as conn:
        assert conn.exec_driver_sql('SELECT total FROM "Totals"').scalar() == 5


def test_diff_exit_codes(items: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = module_v1(tmp_path)
    assert main(["sync", "-q", db_url, mod]) == 0
    # Excess in code only: a new view.
    more = module_v1(
        tmp_path, extra='\nclass Extra(SamizdatView):\n    sql_template = "${preamble} SELECT 1 ${postamble}"\n'
    )
    assert main(["diff", db_url, more]) == 102
    # Excess in the database only: a module without Totals.
    fewer = write_module(
        tmp_path, "fewer", BASE.split("class Totals")[0].replace("SELECT id, price", "SELECT id, price AS price")
    )
    assert main(["diff", db_url, fewer]) == 101
    # A changed object counts as both.
    changed = module_v1(tmp_path, "price * 2")
    assert main(["diff", db_url, changed]) == 103
    assert "changed: view" in capsys.readouterr().out


def test_dryrun_migration_file_on_stdout_changes_nothing(
    items: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = module_v1(tmp_path)
    assert main(["sync", db_url, mod, "-t", "dryrun", "-m", "-"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("-- alembic-samizdat plan")
    assert 'CREATE VIEW "public"."Base"' in out
    assert "COMMENT ON MATERIALIZED VIEW" in out
    with items.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_views WHERE viewname = 'Base'").scalar() == 0
    assert main(["diff", db_url, mod]) == 102


def test_migration_file_runs_with_psql(items: sa.Engine, db_url: str, dsn: str, tmp_path: Path) -> None:
    from alembic_samizdat.pgserver import find_binaries

    mod = module_v1(tmp_path)
    script = tmp_path / "plan.sql"
    assert main(["sync", "-q", db_url, mod, "-t", "dryrun", "-m", str(script)]) == 0
    psql = find_binaries() / "psql"
    done = subprocess.run(
        [str(psql), "-X", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(script), dsn], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert main(["diff", db_url, mod]) == 0


def test_connection_error_is_one_line(tmp_path: Path) -> None:
    mod = write_module(
        tmp_path,
        "one_view",
        'from alembic_samizdat import SamizdatView\n\n\nclass V(SamizdatView):\n    sql_template = "${preamble} SELECT 1 ${postamble}"\n',
    )
    done = subprocess.run(
        [sys.executable, "-m", "alembic_samizdat.cli", "diff", "postgresql://nobody@127.0.0.1:9/x", mod],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("samizdat: error: cannot connect to") and "Traceback" not in done.stderr


def test_declaration_errors_are_one_line_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = write_module(
        tmp_path,
        "cyclic",
        """
        from alembic_samizdat import SamizdatView
        class A(SamizdatView):
            deps_on = {"B"}
            sql_template = "${preamble} SELECT 1 ${postamble}"
        class B(SamizdatView):
            deps_on = {"A"}
            sql_template = "${preamble} SELECT 1 ${postamble}"
        """,
    )
    assert main(["printdot", mod]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dependency cycle" in err and "cyclic.A -> cyclic.B -> cyclic.A" in err


def test_unknown_module_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["printdot", "no.such.module_here"]) == 1
    assert "cannot import no.such.module_here" in capsys.readouterr().err


def test_printdot_legend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = module_v1(tmp_path)
    assert main(["printdot", mod]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph")
    assert "shape=house" in dot  # the items table
    assert "shape=box" in dot and "#ff6666" in dot  # view and matview
    assert "style=dotted" in dot and "arrowhead=dot" in dot  # autorefresh edge
    assert "samizdat_refresh_" not in dot  # sidekicks are left out


def test_nuke_takes_url_and_modules(items: sa.Engine, db_url: str, tmp_path: Path) -> None:
    mod = module_v1(tmp_path)
    assert main(["sync", "-q", db_url, mod]) == 0
    assert main(["nuke", "-q", db_url, mod]) == 0
    with items.connect() as conn:
        left = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_description WHERE left(description, 20) = '{\"alembic_samizdat\":'"
        ).scalar()
    assert left == 0
    assert main(["diff", db_url, mod]) == 102


def test_refresh_belownodes(items: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = module_v1(tmp_path)
    assert main(["sync", "-q", db_url, mod]) == 0
    capsys.readouterr()
    assert main(["refresh", db_url, mod, "--belownodes", "items"]) == 0
    assert "refreshed 1 materialized view" in capsys.readouterr().out
    assert main(["refresh", db_url, mod, "--belownodes", "nosuchtable"]) == 1
    assert "unknown node 'nosuchtable'" in capsys.readouterr().err


def test_database_url_from_environment(
    items: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    mod = module_v1(tmp_path)
    assert main(["sync", "-q", mod]) == 0
    assert main(["diff", mod]) == 0


def test_scope_flag_isolates(items: sa.Engine, db_url: str, tmp_path: Path) -> None:
    mod = module_v1(tmp_path)
    assert main(["--scope", "one", "sync", "-q", db_url, mod]) == 0
    # Another scope sees the names taken by objects it did not sign.
    assert main(["sync", "-q", "--scope", "two", db_url, mod]) == 1
    assert main(["nuke", "-q", "--scope", "two", db_url]) == 0
    assert main(["diff", "--scope", "one", db_url, mod]) == 0


def test_embedded_sync_of_the_example(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    example = Path(__file__).resolve().parent.parent / "example_project" / "shop.py"
    assert main(["sync", str(example)]) == 0
    out = capsys.readouterr().out
    assert "throwaway PostgreSQL" in out
    assert "managed objects now in the database" in out
    assert "('NL', Decimal('18.16'))" in out  # CountryTotals, populated after the stack was created


def test_init_writes_a_starter_that_syncs(tmp_path: Path, db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "starter.py"
    assert main(["init", str(target)]) == 0
    out = capsys.readouterr().out
    assert "import alembic_samizdat.alembic" in out  # the one line for env.py
    assert main(["sync", "-q", db_url, str(target)]) == 0
    assert main(["diff", db_url, str(target)]) == 0
    assert main(["init", str(target)]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err


def test_module_without_samizdats_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write_module(tmp_path, "nothing_here", "X = 1\n")
    assert main(["printdot", empty]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no samizdat classes" in err and "samizdat init" in err


def test_printdot_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil as sh

    mod = module_v1(tmp_path)
    out_file = tmp_path / "graph.dot"
    assert main(["printdot", "-o", str(out_file), mod]) == 0
    assert out_file.read_text().startswith("digraph")
    code = main(["printdot", "--format", "svg", "-o", str(tmp_path / "g.svg"), mod])
    if sh.which("dot"):
        assert code == 0 and (tmp_path / "g.svg").read_text().lstrip().startswith("<?xml")
    else:
        assert code == 2 and "needs GraphViz" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sync", "diff", "nuke", "refresh", "printdot", "adopt", "init"])
def test_every_command_has_help_with_an_example(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_diff_says_what_the_next_sync_does(
    items: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = module_v1(tmp_path)
    assert main(["sync", "-q", db_url, mod]) == 0
    capsys.readouterr()
    # The view keeps its columns: replaced in place, nothing above it touched.
    assert main(["diff", db_url, module_v1(tmp_path, "price * 2")]) == 103
    out = capsys.readouterr().out
    assert 'changed: view "public"."Base"' in out and "the next sync: replaced in place" in out
    # The materialized view changed: built beside the old one and swapped in.
    body = Path(mod).read_text().replace("SELECT sum(price) AS total", "SELECT sum(price) + 1 AS total")
    swapped = write_module(tmp_path, "swapped", body)
    assert main(["diff", db_url, swapped]) == 103
    assert "the next sync: recreated: built beside the old one and swapped in" in capsys.readouterr().out
    # A user's view on it: the next sync would stop, and diff says so rather than failing.
    with items.begin() as conn:
        conn.exec_driver_sql('CREATE VIEW mine AS SELECT * FROM "Totals"')
    assert main(["diff", db_url, swapped]) == 103
    out = capsys.readouterr().out
    assert "the next sync stops:" in out and "mine" in out

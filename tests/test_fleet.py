"""Many databases from one registry (``--database``, ``--databases-file``, ``--jobs``) on a real PostgreSQL."""

from __future__ import annotations

import textwrap
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import scalar

from alembic_samizdat import SamizdatRegistry
from alembic_samizdat.cli import main
from alembic_samizdat.fleet import APPLICATION_NAME, run_databases, sync_operation

#: Never answers: nothing listens on port 1. The password must never be printed.
UNREACHABLE = "postgresql://fleet:hunter2secret@127.0.0.1:1/nowhere"

#: A materialized view that, while it is populated, sleeps (so that runs overlap) and then counts the databases
#: on which a fleet connection is running a statement: the concurrency as the server sees it.
MODULE = '''
from alembic_samizdat import SamizdatMaterializedView, SamizdatView

class Numbers(SamizdatView):
    sql_template = """${preamble} SELECT n FROM generate_series(1, 3) AS n ${postamble}"""

class Overlap(SamizdatMaterializedView):
    deps_on = {Numbers}
    sql_template = """
        ${preamble}
        SELECT (SELECT count(DISTINCT datname) FROM pg_stat_activity
                WHERE application_name = 'APP' AND state = 'active') AS busy, s.slept
        FROM (SELECT pg_sleep(0.4)::text AS slept, (SELECT count(*) FROM "Numbers") AS n) AS s
        ${postamble}
    """
'''.replace("APP", APPLICATION_NAME)


@pytest.fixture
def module(tmp_path: Path) -> str:
    path = tmp_path / "fleet_views.py"
    path.write_text(textwrap.dedent(MODULE))
    return str(path)


def _busy(url: str) -> int | None:
    engine = sa.create_engine(url)
    try:
        return int(scalar(engine, 'SELECT busy FROM "Overlap"'))
    except sa.exc.ProgrammingError:
        return None
    finally:
        engine.dispose()


class Sampler:
    """Counts, on the server, the databases a fleet connection is running a statement on, until stopped."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.most = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.engine.connect() as conn:
            while not self._stop.is_set():
                busy = conn.execute(
                    sa.text(
                        "SELECT count(DISTINCT datname) FROM pg_stat_activity "
                        "WHERE application_name = :app AND state = 'active'"
                    ),
                    {"app": APPLICATION_NAME},
                ).scalar_one()
                conn.rollback()
                self.most = max(self.most, int(busy))
                self.samples += 1
                self._stop.wait(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


def test_five_databases_and_an_unreachable_one(
    make_database: Callable[[], str], pg_url: str, module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [make_database() for _ in range(5)]
    listing = tmp_path / "databases.txt"
    listing.write_text(
        "# the fleet\n\n" + "\n".join(urls[2:]) + "\n  # a comment, indented\n" + UNREACHABLE + "\n", encoding="utf-8"
    )
    args = ["sync", "--database", urls[0], "--database", urls[1], "--databases-file", str(listing)]
    with Sampler(pg_url) as sampler:
        code = main([*args, "--jobs", "2", module])
    out, err = capsys.readouterr()
    assert code == 1
    # One line per target as it finishes, then the summary table: six targets, one failed.
    lines = out.splitlines()
    assert sum(line.startswith("ok     ") for line in lines) == 5, out
    assert sum(line.startswith("  ok      ") for line in lines) == 5, out
    assert "FAILED postgresql://fleet:***@127.0.0.1:1/nowhere: cannot connect" in out
    assert "summary: 6 target(s), 5 ok, 1 failed" in out
    assert "hunter2secret" not in out + err
    assert "1 of 6 target(s) failed: postgresql://fleet:***@127.0.0.1:1/nowhere" in err
    # Every reachable database got the objects; the unreachable one stopped nothing.
    for url in urls:
        assert _busy(url) is not None
    # Never more than --jobs databases at once: as each view saw it while being populated, and as sampled.
    assert max(b for b in (_busy(u) for u in urls) if b is not None) <= 2
    assert sampler.samples > 0 and sampler.most <= 2


def test_jobs_one_means_one_database_at_a_time(
    make_database: Callable[[], str], module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [make_database() for _ in range(3)]
    assert main(["sync", *(f"--database={u}" for u in urls), "--jobs", "1", module]) == 0
    assert [_busy(u) for u in urls] == [1, 1, 1]
    out = capsys.readouterr().out
    assert "summary: 3 target(s), 3 ok, 0 failed" in out


def test_a_rerun_finishes_only_what_is_left(
    make_database: Callable[[], str], module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [make_database() for _ in range(3)]
    blocked = sa.create_engine(urls[1])
    try:
        # A table where a view must go: that database's sync stops; the others complete.
        with blocked.begin() as conn:
            conn.exec_driver_sql('CREATE TABLE "Numbers" (n int)')
        args = ["sync", *(f"--database={u}" for u in urls), "--jobs", "3", module]
        assert main(args) == 1
        out = capsys.readouterr().out
        assert out.count("FAILED") == 2, out  # its line and its row in the summary
        assert _busy(urls[0]) is not None and _busy(urls[2]) is not None
        assert _busy(urls[1]) is None
        # Nothing of the failed run is left half done there.
        assert scalar(blocked, "SELECT count(*) FROM pg_class WHERE relname = 'Overlap'") == 0
        with blocked.begin() as conn:
            conn.exec_driver_sql('DROP TABLE "Numbers"')
        assert main(args) == 0
        out = capsys.readouterr().out
        lines = [line for line in out.splitlines() if line.startswith("ok")]
        assert len(lines) == 3
        done = [line for line in lines if "nothing to do" in line]
        assert len(done) == 2, out  # the two that completed before are not touched again
        assert _busy(urls[1]) is not None
        assert main(["diff", *(f"--database={u}" for u in urls), module]) == 0
    finally:
        blocked.dispose()


def test_python_api_over_databases(make_database: Callable[[], str], module: str) -> None:
    urls = [make_database() for _ in range(2)]
    registry = SamizdatRegistry()
    registry.load(module)
    seen: list[str] = []
    result = run_databases(
        [*urls, UNREACHABLE], registry, sync_operation(), jobs=2, on_outcome=lambda o: seen.append(o.target)
    )
    assert len(seen) == 3 and len(result.outcomes) == 3
    assert [o.ok for o in result.outcomes] == [True, True, False]
    assert result.exit_code == 1
    with pytest.raises(Exception, match=r"1 of 3 target\(s\) failed: postgresql://fleet:\*\*\*@"):
        result.check()


def test_databases_file_errors_are_one_line(tmp_path: Path, module: str, capsys: pytest.CaptureFixture[str]) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text("not a url\n", encoding="utf-8")
    assert main(["sync", "--databases-file", str(listing), module]) == 2
    assert "line 1: not a database URL" in capsys.readouterr().err
    assert main(["sync", "--databases-file", str(tmp_path / "missing.txt"), module]) == 2
    assert "--databases-file" in capsys.readouterr().err


def test_diff_and_refresh_over_databases(
    make_database: Callable[[], str], module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [make_database() for _ in range(2)]
    assert main(["sync", urls[0], module]) == 0
    # The first database is in sync, the second lacks everything: excess in code, diff's 102.
    assert main(["diff", *(f"--database={u}" for u in urls), module]) == 102
    out = capsys.readouterr().out
    assert "no differences" in out and "2 missing" in out, out
    assert main(["sync", "--database", urls[1], module]) == 0
    assert main(["refresh", *(f"--database={u}" for u in urls), "-j", "1", module]) == 0
    out = capsys.readouterr().out
    assert out.count("refreshed 1 materialized view(s)") == 4, out  # its lines and its summary rows
    assert main(["refresh", "--database", urls[0], "--parallel", module]) == 2
    assert "--parallel" in capsys.readouterr().err

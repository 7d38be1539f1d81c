"""Smoke test of the benchmark (bench/run.py): it runs end to end and prints every expected row.

Never asserts a speed. Offline: nothing is installed here (``--no-install``). alembic-samizdat, Alembic alone
and the floor run every scenario at N = 24 (the floor needs ``psql`` and is left out without one); DBSamizdat
and alembic_utils run three scenarios at N = 12 when their venvs exist already (see docs/performance.md),
and are skipped with the reason printed otherwise. The CPU-heavy stack is made tiny, and only the untimed warm-up runs (``--repeat 0``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
N = 50
SMALL = 24
TINY_STACK = ["--heavy-width", "3", "--heavy-rows", "20"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run() -> ModuleType:
    return _load("run")


def _table_rows(stdout: str) -> list[list[str]]:
    rows = []
    for line in stdout.splitlines():
        if line.startswith("| ") and not line.startswith(("| N |", "|---")):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _bench(pg_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(BENCH / "run.py"), "--url", pg_url, "--repeat", "0", "--no-install"]
    command += ["--workdir", str(tmp_path), *TINY_STACK, *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_workload_is_reproducible_and_consistent() -> None:
    workload = _load("workload")
    first, again = workload.generate(N), workload.generate(N)
    assert first.module("samizdat") == again.module("samizdat")
    kinds = [o.kind for o in first.objects]
    assert kinds.count("view") == 30 and kinds.count("matview") == 10 and kinds.count("trigger") == 5
    for obj in first.objects:
        body = first.body(obj)
        for dep in obj.deps:
            # Every declared dependency is used by the SQL.
            assert f'"public"."{first.objects[dep].name}"' in body, (obj.name, first.objects[dep].name)
    # DBSamizdat's templates are string.Template: every literal $ is doubled there.
    function = next(o for o in first.objects if o.kind == "function")
    assert "$$ SELECT" in first.template(function, "samizdat")
    assert "$$$$ SELECT" in first.template(function, "dbsamizdat")
    for variant in workload.VARIANTS:
        assert first.module("samizdat", variant) != first.module("samizdat")
        # The cached graph facts agree with a plain walk of the graph.
        target = first.target(variant)
        assert first.expected_recreated(variant) == 1 + len(first.descendants(target.index))


def test_large_workload_generates_quickly() -> None:
    workload = _load("workload")
    big = workload.generate(10_000)
    stats = big.stats()
    assert stats["view"] == 6000 and stats["matview"] == 2000
    assert len(big.module("samizdat", "root_view")) > 1_000_000


def test_heavy_stack_is_consistent() -> None:
    workload = _load("workload")
    stack = workload.HeavyWorkload(width=6, rows=10)
    objects = stack.objects()
    assert len(objects) == stack.n == 6 + 2 + 2
    names = {name for name, *_ in objects}
    for name, _kind, deps, body in objects:
        assert set(deps) <= names
        for dep in deps:
            assert f'"public"."{dep}"' in body, (name, dep)
    assert "from dbsamizdat import" in stack.module("dbsamizdat")


def test_alembic_utils_rendering(run: ModuleType) -> None:
    workload = _load("workload").generate(N)
    revision = run.alembic_utils_revision(workload)
    compile(revision, "revision.py", "exec")
    assert run.count_ops(revision) == N
    models = run.alembic_models(workload, run.AL_UTILS, Path("unused.py"))
    compile(models, "bench_models.py", "exec")
    assert "ON public.bench_t" in models and "PGTrigger(" in models


def test_benchmark_runs_and_prints_every_row(pg_url: str, run: ModuleType, tmp_path: Path) -> None:
    contenders = ["samizdat", "alembic", "floor"]
    result = _bench(pg_url, tmp_path, "--n", str(SMALL), "--contenders", ",".join(contenders))
    rows = _table_rows(result.stdout)
    has_psql = run.find_psql() is not None
    modes = {m for c in contenders for m in run.CONTENDER_MODES[c]}
    if not has_psql:
        modes.discard(run.FLOOR)
    expected = [
        (run.SCENARIOS[scenario], mode) for scenario in run.SCENARIOS for mode in run.MODES[scenario] if mode in modes
    ]
    assert [(r[1], r[2]) for r in rows] == expected, result.stdout
    for row in rows:
        assert "failed" not in row[3] and "skipped" not in row[3] and "did not finish" not in row[3], row
        assert "NOT RECREATED" not in row[7], row
    by_key = {(r[1], r[2]): r for r in rows}
    assert by_key[("fresh sync", run.SZ_API)][7].startswith(f"{SMALL} created")
    assert by_key[("no-op sync", run.SZ_API)][7] == "0 recreated"
    assert by_key[("alembic autogenerate from empty", run.AL_SZ)][7] == f"{SMALL} ops in the revision"
    assert by_key[("alembic autogenerate, no-op", run.AL_SZ)][7] == "0 ops in the revision"
    assert by_key[("alembic autogenerate, no-op", run.AL_BARE)][7] == "0 ops in the revision"
    assert "faster than serial" in by_key[("refresh CPU-heavy stack, parallel", run.SZ_API)][5]
    assert "Alembic alone" in by_key[("alembic autogenerate from empty", run.AL_SZ)][5]


def test_other_contenders_when_installed(pg_url: str, run: ModuleType, tmp_path: Path) -> None:
    """DBSamizdat and alembic_utils, each in the venv the benchmark would install it into; never installed here."""
    available = []
    venv_args: list[str] = []
    for name, finder, option, venv_dir in (
        ("dbsamizdat", run.dbsamizdat_python, "--dbsamizdat-venv", _dbsamizdat_venv(run)),
        ("alembic_utils", run.alembic_utils_python, "--alembic-utils-venv", _alembic_utils_venv(run)),
    ):
        python, why = finder(venv_dir, install=False)
        if python is None:
            print(f"{name} left out: {why}")
        else:
            available.append(name)
            venv_args += [option, str(venv_dir)]
    if not available:
        pytest.skip("neither DBSamizdat nor alembic_utils is installed (bench/run.py installs them on first use)")
    scenarios = "noop,al_autogen_noop,heavy_refresh,heavy_refresh_parallel"
    args = ["--n", "12", "--contenders", ",".join(available), "--scenarios", scenarios, *venv_args]
    result = _bench(pg_url, tmp_path, *args, "--alembic-utils-timeout", "60")
    rows = _table_rows(result.stdout)
    modes = {r[2] for r in rows}
    if "dbsamizdat" in available:
        assert {run.DBSZ, run.DBSZ_CLI} <= modes, result.stdout
        assert "faster than serial" in next(r[5] for r in rows if r[1].endswith("parallel")), result.stdout
    if "alembic_utils" in available:
        assert run.AL_UTILS in modes, result.stdout
    for row in rows:
        assert "failed" not in row[3] and "skipped" not in row[3], row


def _dbsamizdat_venv(run: ModuleType) -> Path:
    """The venv CI installs DBSamizdat into (``$SAMIZDAT_TEST_DBSAMIZDAT`` is its ``bin/dbsamizdat``), else the
    benchmark's own default."""
    cli = os.environ.get("SAMIZDAT_TEST_DBSAMIZDAT")
    return Path(cli).parent.parent if cli and Path(cli).exists() else run.DEFAULT_DBSZ_VENV


def _alembic_utils_venv(run: ModuleType) -> Path:
    """CI's alembic_utils venv (``$SAMIZDAT_TEST_ALEMBIC_UTILS`` is its python) when it has the psycopg2 driver the
    benchmark's alembic_utils project uses, else the benchmark's own default."""
    python = os.environ.get("SAMIZDAT_TEST_ALEMBIC_UTILS")
    if python and Path(python).exists():
        has_driver = subprocess.run([python, "-c", "import psycopg2"], capture_output=True, check=False)
        if has_driver.returncode == 0:
            return Path(python).parent.parent
    return run.DEFAULT_AUTILS_VENV


def test_fleet_bench_runs(pg_url: str) -> None:
    """bench/fleet.py end to end at a tiny size: both tables, every row (speeds are not looked at)."""
    command = [sys.executable, str(BENCH / "fleet.py"), "--url", pg_url, "--tenants", "3", "--tenant-objects", "5"]
    command += ["--databases", "2", "--database-objects", "5", "--jobs", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in _table_rows(result.stdout) if r[0] != "run"]
    assert [r[0] for r in rows] == [
        "fresh sync, every tenant",
        "no-op sync, every tenant",
        "fresh sync, --jobs 2",
        "no-op sync, --jobs 2",
        "fresh sync, --jobs 1 (one after another)",
        "no-op sync, --jobs 1",
    ]
    assert all(int(r[2]) <= 2 for r in rows)


def test_growth_table_and_exponents(tmp_path: Path) -> None:
    """The growth report (bench/growth.py) from saved rows: medians per N, exponents, "did not finish"; the plot
    needs matplotlib (the bench extra) and is not drawn here."""
    growth = _load("growth")
    rows = [
        {"n": 100, "scenario": "fresh", "mode": growth.SZ_API, "times": [1.0, 3.0, 2.0]},
        {"n": 1000, "scenario": "fresh", "mode": growth.SZ_API, "times": [20.0]},
        {"n": 100, "scenario": "fresh", "mode": growth.DBSZ, "times": [1.0]},
        {"n": 1000, "scenario": "fresh", "mode": growth.DBSZ, "times": [], "timed_out": 120.0},
    ]
    table = growth.table(rows)
    assert "| fresh sync | alembic-samizdat (API) | 2.00 s | 20.00 s | 1.00 |" in table
    assert "did not finish in 120 s" in table
    merged = growth.merge(rows, [{"n": 1000, "scenario": "fresh", "mode": growth.SZ_API, "times": [10.0]}])
    assert [r["n"] for r in merged] == [100, 100, 1000]
    doc = tmp_path / "page.md"
    doc.write_text(f"# x\n\n{growth.BEGIN}\nold\n{growth.END}\n\ntail\n")
    growth.write_doc(doc, "new")
    assert doc.read_text() == f"# x\n\n{growth.BEGIN}\nnew\n{growth.END}\n\ntail\n"

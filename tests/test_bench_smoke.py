"""Smoke test of the benchmark (bench/run.py): it runs end to end at N = 50 and prints every expected row.

Never asserts a speed. Offline and quick: alembic-samizdat and the floor only (DBSamizdat is never installed
here: ``--no-install``); the floor needs ``psql`` and is left out without one.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
N = 50


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
        if line.startswith(f"| {N} |"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


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


def test_benchmark_runs_and_prints_every_row(pg_url: str, run: ModuleType, tmp_path: Path) -> None:
    contenders = ["samizdat", "floor"]
    command = [
        sys.executable,
        str(BENCH / "run.py"),
        "--url",
        pg_url,
        "--n",
        str(N),
        "--repeat",
        "1",
        "--contenders",
        ",".join(contenders),
        "--no-install",
        "--workdir",
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
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
        assert "failed" not in row[3] and "skipped" not in row[3], row
        assert "NOT RECREATED" not in row[7], row
    by_key = {(r[1], r[2]): r for r in rows}
    assert by_key[("fresh sync", run.SZ_API)][7].startswith(f"{N} created")
    assert by_key[("no-op sync", run.SZ_API)][7] == "0 recreated"

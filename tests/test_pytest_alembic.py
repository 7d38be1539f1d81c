"""pytest-alembic's standard tests on a copy of example_project: they pass, and ``test_model_definitions_match_ddl``
fails when a samizdat changes without a revision (on a real PostgreSQL, through ``pytester``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("pytest_alembic", reason="pytest-alembic is not installed (the test extra has it)")

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

# The project's own test file, as pytest-alembic documents it: its standard tests, imported, and an engine on
# the database env.py migrates (the example's env.py reads DATABASE_URL).
TESTS = """
import os

import pytest
import sqlalchemy as sa
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)


@pytest.fixture
def alembic_config():
    return {"file": "alembic.ini"}


@pytest.fixture
def alembic_engine():
    engine = sa.create_engine(os.environ["DATABASE_URL"])
    yield engine
    engine.dispose()
"""


@pytest.fixture
def project(pytester: pytest.Pytester, db_url: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("shop.py", "alembic.ini"):
        shutil.copy(EXAMPLE / name, pytester.path / name)
    shutil.copytree(EXAMPLE / "migrations", pytester.path / "migrations", ignore=shutil.ignore_patterns("__pycache__"))
    pytester.makepyfile(test_migrations=TESTS)
    monkeypatch.setenv("DATABASE_URL", db_url)
    # shop.py is imported by env.py (prepend_sys_path) and by the test run: never a stale copy from another test.
    monkeypatch.delitem(__import__("sys").modules, "shop", raising=False)
    return pytester


def test_standard_tests_pass_on_the_example(project: pytest.Pytester) -> None:
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=4)


def test_a_samizdat_changed_without_a_revision_fails(project: pytest.Pytester) -> None:
    shop = project.path / "shop.py"
    source = shop.read_text()
    changed = source.replace("public.with_vat(o.amount) AS gross", "public.with_vat(o.amount) * 1 AS gross")
    assert changed != source
    shop.write_text(changed)
    result = project.runpytest_subprocess()
    result.assert_outcomes(passed=3, failed=1)
    out = result.stdout.str()
    assert (
        "test_model_definitions_match_ddl FAILED" in out
        or "FAILED test_migrations.py::test_model_definitions_match_ddl" in out
    )
    assert "OrderLines" in out

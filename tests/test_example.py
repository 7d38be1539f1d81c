"""The shipped example stays true: its committed revision is what the tool renders today.

Any change to SQL the tool generates (templates rendering, autorefresh functions, signatures) shows in users'
``alembic check``; this test makes it show here first, on every PostgreSQL major CI runs, until the example's
revision is regenerated (see CHANGELOG.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

REGENERATE = (
    "example_project's committed revision no longer matches what the tool renders. Regenerate it: on a fresh "
    "database, in example_project/, delete migrations/versions/*.py, run `alembic revision --autogenerate -m "
    '"initial schema: shop tables and samizdats"`, and note the changed SQL in CHANGELOG.md'
)


def alembic(copy: Path, db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real ``alembic`` command in the example's copy, as a user runs it."""
    env = {**os.environ, "DATABASE_URL": db_url, "PYTHONPATH": ""}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def example_copy(tmp_path: Path) -> Path:
    """The example project as committed (no caches), so a run here never writes into the repository."""
    copy = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_committed_revision_matches_rendered_sql(example_copy: Path, db_url: str, engine: sa.Engine) -> None:
    upgrade = alembic(example_copy, db_url, "upgrade", "head")
    assert upgrade.returncode == 0, upgrade.stderr
    check = alembic(example_copy, db_url, "check")
    assert check.returncode == 0, f"{REGENERATE}\n\nalembic check said:\n{check.stdout}{check.stderr}"
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    matviews = (
        "SELECT relname, relispopulated FROM pg_class WHERE relkind = 'm' AND relnamespace = 'public'::regnamespace"
    )
    with engine.connect() as conn:
        assert dict(conn.exec_driver_sql(matviews).all()) == {"CustomerTotals": True, "CountryTotals": True}
    downgrade = alembic(example_copy, db_url, "downgrade", "base")
    assert downgrade.returncode == 0, downgrade.stderr
    managed = "SELECT count(*) FROM pg_class WHERE relkind IN ('v', 'm') AND relnamespace = 'public'::regnamespace"
    with engine.connect() as conn:
        assert conn.exec_driver_sql(managed).scalar() == 0


def test_a_stale_revision_is_caught(example_copy: Path, db_url: str) -> None:
    """The check above can fail: a revision rendered from other SQL than today's is reported."""
    (revision,) = (example_copy / "migrations" / "versions").glob("*.py")
    source = revision.read_text()
    # What a template or generator change does to a revision: the SQL, and so the signature's hash, differ.
    signed = re.search(r'"with_vat","amount numeric"\],"hash":"([0-9a-f]{64})"', source)
    assert signed is not None
    revision.write_text(source.replace(signed.group(1), "0" * 64))
    assert alembic(example_copy, db_url, "upgrade", "head").returncode == 0
    check = alembic(example_copy, db_url, "check")
    assert check.returncode != 0
    assert "with_vat" in check.stdout + check.stderr

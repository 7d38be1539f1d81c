"""The shipped example stays true: its committed revision, upgraded on a fresh database, leaves nothing for
``alembic check`` to report. Any change to SQL the library generates fails here until the revision is
regenerated (and CHANGELOG.md says so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def alembic(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=EXAMPLE,
        env={**os.environ, "DATABASE_URL": db_url},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_committed_revision_upgrades_and_checks_clean(db_url: str, engine: sa.Engine) -> None:
    upgraded = alembic(db_url, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    checked = alembic(db_url, "check")
    assert checked.returncode == 0, (
        "example_project's committed revision no longer matches what the library generates: regenerate it "
        "(see example_project/README.md) and note the change in CHANGELOG.md\n" + checked.stdout + checked.stderr
    )
    with engine.connect() as conn:
        populated = dict(
            conn.exec_driver_sql(
                "SELECT relname, relispopulated FROM pg_class "
                "WHERE relkind = 'm' AND relnamespace = 'public'::regnamespace"
            ).all()
        )
    assert populated == {"CustomerTotals": True, "CountryTotals": True}
    downgraded = alembic(db_url, "downgrade", "base")
    assert downgraded.returncode == 0, downgraded.stderr
    with engine.connect() as conn:
        assert (
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_class WHERE relkind IN ('v', 'm') AND relnamespace = 'public'::regnamespace"
            ).scalar()
            == 0
        )

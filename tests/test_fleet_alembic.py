"""Tenant schemas under Alembic: ``alembic -x tenants=PATTERN`` autogenerate, upgrade, check and downgrade."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.config import main as alembic_main
from helpers import alembic_project, run_sql, scalar

from alembic_samizdat import TenantError
from alembic_samizdat import fleet as fleet_api
from alembic_samizdat.registry import registry_from_modules

MODULE = '''
from sqlalchemy import MetaData
from alembic_samizdat import TENANT, SamizdatFunction, SamizdatMaterializedView, SamizdatRegistry, SamizdatView

metadata = MetaData()
registry = SamizdatRegistry(metadata)


@registry.register
class Rates(SamizdatView):
    sql_template = """${preamble} SELECT 2 AS rate ${postamble}"""


@registry.register
class Orders(SamizdatView):
    schema = TENANT
    deps_on = {Rates}
    deps_on_unmanaged = {"orders"}
    sql_template = """${preamble} SELECT o.id, o.qty * r.rate AS total FROM ${tenant}.orders o, public."Rates" r
        ${postamble}"""


@registry.register
class Totals(SamizdatMaterializedView):
    schema = TENANT
    deps_on = {Orders}
    sql_template = """${preamble} SELECT sum(total) AS total FROM ${tenant}."Orders" ${postamble}"""


@registry.register
class how_many(SamizdatFunction):
    schema = TENANT
    deps_on = {Orders}
    sql_template = """${preamble} RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM ${tenant}."Orders" $$"""
'''

TENANTS = ["t_a", "t_b", "t_c"]


@pytest.fixture
def project(tmp_path: Path, db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tenantshop.py").write_text(textwrap.dedent(MODULE))
    alembic_project(tmp_path, "tenantshop")
    for name in TENANTS:
        run_sql(engine, f"CREATE SCHEMA {name}; CREATE TABLE {name}.orders (id int, qty int)")
        run_sql(engine, f"INSERT INTO {name}.orders VALUES (1, 1), (2, {TENANTS.index(name) + 1})")
    yield tmp_path
    sys.modules.pop("tenantshop", None)


def alembic(root: Path, *argv: str) -> None:
    sys.modules.pop("tenantshop", None)
    alembic_main(argv=["-c", str(root / "alembic.ini"), *argv])


def test_one_revision_for_every_tenant(project: Path, engine: sa.Engine) -> None:
    alembic(project, "-x", "tenants=t\\_%", "revision", "--autogenerate", "-m", "tenants")
    (script,) = (project / "migrations" / "versions").glob("*.py")
    text = script.read_text()
    assert "__samizdat_tenant__" in text and "t_a" not in text  # written for the placeholder tenant
    assert text.count("op.create_samizdat(") == 4  # Rates, and the three tenant objects once

    alembic(project, "-x", "tenants=t\\_%", "upgrade", "head")
    for index, name in enumerate(TENANTS):
        assert scalar(engine, f'SELECT total FROM {name}."Totals"') == 2 * (2 + index)
        assert scalar(engine, f"SELECT {name}.how_many()") == 2
    # What Alembic signed is what `samizdat sync` would have signed: no differences, nothing to do.
    sys.modules.pop("tenantshop", None)
    registry = registry_from_modules(["tenantshop"])
    assert fleet_api.diff(engine, registry, tenants=TENANTS).exit_code == 0
    sync = fleet_api.sync(engine, registry, tenants=TENANTS).check()
    assert {o.message for o in sync.outcomes} == {"nothing to do: the database matches the declarations"}
    alembic(project, "-x", "tenants=t\\_%", "check")

    # One tenant drifts: check fails naming it.
    run_sql(engine, 'DROP MATERIALIZED VIEW t_b."Totals"')
    with pytest.raises(TenantError, match=r"differ from the representative tenant t_a: t_b\. "):
        alembic(project, "-x", "tenants=t\\_%", "check")
    fleet_api.sync(engine, registry, tenants=["t_b"]).check()
    alembic(project, "-x", "tenants=t\\_%", "-x", "tenant_representative=t_c", "check")

    # The way back, per tenant too.
    alembic(project, "-x", "tenants=t\\_%", "downgrade", "base")
    assert scalar(engine, "SELECT count(*) FROM pg_matviews WHERE matviewname = 'Totals'") == 0
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE viewname IN ('Orders', 'Rates')") == 0


def test_tenant_operations_need_tenants(project: Path, engine: sa.Engine) -> None:
    alembic(project, "-x", "tenants=t_a", "revision", "--autogenerate", "-m", "tenants")
    with pytest.raises(TenantError, match=r"alembic -x tenants=tenant_% upgrade head"):
        alembic(project, "upgrade", "head")
    # The migration's transaction was rolled back: nothing of it is left.
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE viewname = 'Rates'") == 0
    # Only the selected tenants are touched.
    alembic(project, "-x", "tenants=t_a,t_c", "upgrade", "head")
    assert scalar(engine, "SELECT string_agg(schemaname, ',' ORDER BY schemaname) FROM pg_matviews") == "t_a,t_c"


def test_offline_sql_names_each_tenant(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alembic(project, "-x", "tenants=t_a", "revision", "--autogenerate", "-m", "tenants")
    capsys.readouterr()
    alembic(project, "-x", "tenants=t_b,t_c", "upgrade", "head", "--sql")
    sql = capsys.readouterr().out
    assert 'CREATE VIEW "t_b"."Orders"' in sql and 'CREATE VIEW "t_c"."Orders"' in sql
    assert "__samizdat_tenant__" not in sql and '"t_a"' not in sql
    with pytest.raises(TenantError, match="plain lowercase names"):
        alembic(project, "-x", "tenants=Odd", "upgrade", "head", "--sql")


def test_a_second_revision_replaces_per_tenant_and_downgrades(project: Path, engine: sa.Engine) -> None:
    alembic(project, "-x", "tenants=t\\_%", "revision", "--autogenerate", "-m", "one")
    alembic(project, "-x", "tenants=t\\_%", "upgrade", "head")
    module = project / "tenantshop.py"
    module.write_text(module.read_text().replace("o.qty * r.rate AS total", "o.qty * r.rate * 10 AS total"))
    alembic(
        project, "-x", "tenants=t\\_%", "-x", "tenant_representative=t_b", "revision", "--autogenerate", "-m", "two"
    )
    second = max((project / "migrations" / "versions").glob("*.py"), key=lambda p: p.stat().st_mtime).read_text()
    assert "__samizdat_tenant__" in second and '"t_b"' not in second
    alembic(project, "-x", "tenants=t\\_%", "upgrade", "head")
    for index, name in enumerate(TENANTS):
        assert scalar(engine, f'SELECT total FROM {name}."Totals"') == 20 * (2 + index)
    alembic(project, "-x", "tenants=t\\_%", "check")
    alembic(project, "-x", "tenants=t\\_%", "downgrade", "-1")
    for index, name in enumerate(TENANTS):
        assert scalar(engine, f'SELECT total FROM {name}."Totals"') == 2 * (2 + index)
    sys.modules.pop("tenantshop", None)
    module.write_text(module.read_text().replace("o.qty * r.rate * 10 AS total", "o.qty * r.rate AS total"))
    registry = registry_from_modules(["tenantshop"])
    assert fleet_api.diff(engine, registry, tenants=TENANTS).exit_code == 0

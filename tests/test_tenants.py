"""Tenant schemas: ``schema = TENANT`` classes rendered once per tenant, signed per tenant, on a real PostgreSQL."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import rows, run_sql, scalar

from alembic_samizdat import (
    TENANT,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatRegistry,
    SamizdatTrigger,
    SamizdatView,
    TemplateError,
    TenantError,
    sync,
)
from alembic_samizdat import fleet as fleet_api
from alembic_samizdat.cli import main
from alembic_samizdat.fleet import Tenants
from alembic_samizdat.signature import parse, signature_text, split_scope, tenant_scope


class Prices(SamizdatView):
    """Shared: one object in public, read by every tenant."""

    sql_template = """${preamble} SELECT 1 AS id, 10 AS price UNION ALL SELECT 2, 20 ${postamble}"""


class Orders(SamizdatView):
    schema = TENANT
    deps_on = {Prices}
    deps_on_unmanaged = {"orders"}
    sql_template = """
        ${preamble}
        SELECT o.id, o.qty, o.qty * p.price AS total FROM ${tenant}.orders o JOIN public."Prices" p ON p.id = o.id
        ${postamble}
    """


class Totals(SamizdatMaterializedView):
    schema = TENANT
    deps_on = {Orders}
    sql_template = """${preamble} SELECT sum(total) AS total FROM ${tenant}."Orders" ${postamble}"""


class order_count(SamizdatFunction):
    schema = TENANT
    deps_on = {Orders}
    sql_template = """${preamble} RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM ${tenant}."Orders" $$"""


def registry_v1() -> SamizdatRegistry:
    registry = SamizdatRegistry()
    registry.register_all(Prices, Orders, Totals, order_count)
    return registry


class OrdersV2(SamizdatView):
    """Orders without its qty column: PostgreSQL cannot replace the view in place, so it is rebuilt."""

    schema = TENANT
    deps_on = {Prices}
    deps_on_unmanaged = {"orders"}
    sql_template = """
        ${preamble}
        SELECT o.id, o.qty * p.price AS total FROM ${tenant}.orders o JOIN public."Prices" p ON p.id = o.id
        ${postamble}
    """

    @classmethod
    def object_name(cls) -> str:
        return "Orders"


class TotalsV2(SamizdatMaterializedView):
    schema = TENANT
    deps_on = {OrdersV2}
    sql_template = """${preamble} SELECT sum(total) AS total FROM ${tenant}."Orders" ${postamble}"""

    @classmethod
    def object_name(cls) -> str:
        return "Totals"


class order_count_v2(SamizdatFunction):
    schema = TENANT
    function_name = "order_count"
    deps_on = {OrdersV2}
    sql_template = """${preamble} RETURNS bigint LANGUAGE sql STABLE AS $$ SELECT count(*) FROM ${tenant}."Orders" $$"""


def registry_v2() -> SamizdatRegistry:
    registry = SamizdatRegistry()
    registry.register_all(Prices, OrdersV2, TotalsV2, order_count_v2)
    return registry


def make_tenants(engine: sa.Engine, names: list[str], qty: int = 1) -> None:
    run_sql(
        engine,
        *(
            f'CREATE SCHEMA "{n}"; CREATE TABLE "{n}".orders (id int, qty int); '
            f'INSERT INTO "{n}".orders VALUES (1, {qty}), (2, 1)'
            for n in names
        ),
    )


def signed_tenants(engine: sa.Engine) -> dict[str, str | None]:
    """``schema.name`` of every signed view → the tenant its signature names."""
    found = rows(
        engine,
        "SELECT n.nspname || '.' || c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('v', 'm') "
        "AND obj_description(c.oid, 'pg_class') LIKE '{\"alembic_samizdat\":%'",
    )
    return {name: json.loads(comment).get("tenant") for name, comment in found}


TENANTS = [f"t{i:02}" for i in range(50)]


def test_fifty_tenants_and_one_blocked_by_a_users_view(engine: sa.Engine) -> None:
    make_tenants(engine, TENANTS)
    result = fleet_api.sync(engine, registry_v1(), tenants=Tenants(patterns=("t__",)))
    assert [o.tenant for o in result.outcomes] == [None, *TENANTS]
    assert not result.failed
    for name in ("t00", "t31", "t49"):
        assert scalar(engine, f'SELECT total FROM "{name}"."Totals"') == 30
        assert scalar(engine, f'SELECT "{name}".order_count()') == 2
    signed = signed_tenants(engine)
    assert signed["public.Prices"] is None  # shared: signed as before tenants existed
    assert signed["t07.Orders"] == "t07" and signed["t49.Totals"] == "t49"
    assert len(signed) == 1 + 2 * 50

    # A user's own (unsigned) view on top of t07's managed view: t07 cannot be rebuilt, the others can.
    run_sql(engine, 'CREATE VIEW t07.mine AS SELECT id, qty FROM t07."Orders"')
    result = fleet_api.sync(engine, registry_v2(), tenants=Tenants(patterns=("t__",)))
    assert [o.tenant for o in result.failed] == ["t07"]
    (failure,) = result.failed
    assert 'view t07.mine depends on view "t07"."Orders"' in failure.message, failure.message
    assert "Nothing was changed" in failure.message
    assert len([o for o in result.outcomes if o.ok]) == 50
    columns = "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = '{}'::regclass"
    assert scalar(engine, columns.format('t08."Orders"')) == "id,total"
    assert scalar(engine, columns.format('t07."Orders"')) == "id,qty,total"  # left as it was
    assert scalar(engine, 'SELECT count(*) FROM t07."Totals"') == 1
    with pytest.raises(Exception, match=r"1 of 51 target\(s\) failed: .* schema t07: "):
        result.check()

    # The user moves their view away; the same command finishes what is left.
    run_sql(engine, "DROP VIEW t07.mine")
    again = fleet_api.sync(engine, registry_v2(), tenants=Tenants(patterns=("t__",))).check()
    assert [o.message for o in again.outcomes if "nothing to do" not in o.message] != []
    assert scalar(engine, columns.format('t07."Orders"')) == "id,total"
    assert fleet_api.diff(engine, registry_v2(), tenants=TENANTS).exit_code == 0


def test_a_tenant_added_and_removed_between_runs(engine: sa.Engine) -> None:
    make_tenants(engine, ["acme", "bolt"])
    fleet_api.sync(engine, registry_v1(), tenants=["acme", "bolt"]).check()
    make_tenants(engine, ["core"], qty=5)
    fleet_api.sync(engine, registry_v1(), tenants=["acme", "bolt", "core"]).check()
    assert scalar(engine, 'SELECT total FROM core."Totals"') == 70

    # bolt and core are no longer selected: a sync of the rest (and of the shared objects) leaves them alone.
    before = signed_tenants(engine)
    result = fleet_api.sync(engine, registry_v2(), tenants=["acme"]).check()
    assert [o.tenant for o in result.outcomes] == [None, "acme"]
    assert signed_tenants(engine) == before
    assert (
        scalar(
            engine, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'bolt.\"Orders\"'::regclass AND attname = 'qty'"
        )
        == 1
    )
    # A plain sync (no tenants at all) does not see any tenant object as its own either.
    assert sync(engine, registry_v2()).plan.actions == ()

    # A nuke of one tenant drops that tenant's objects and nothing else.
    fleet_api.nuke(engine, registry_v1(), tenants=["bolt"]).check()
    after = signed_tenants(engine)
    assert not [k for k in after if k.startswith("bolt.")]
    assert {k for k in after if k.startswith(("acme.", "core."))} == {
        k for k in before if k.startswith(("acme.", "core."))
    }
    assert "public.Prices" in after
    assert scalar(engine, "SELECT count(*) FROM pg_proc WHERE proname = 'order_count'") == 2
    assert scalar(engine, "SELECT count(*) FROM bolt.orders") == 2  # the tenant's own table is not ours


def test_cli_tenant_schemas(engine: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_tenants(engine, ["shop_a", "shop_b", "other"])
    module = tmp_path / "tenant_views.py"
    module.write_text(
        textwrap.dedent(
            '''
            from alembic_samizdat import TENANT, SamizdatView

            class Shared(SamizdatView):
                sql_template = """${preamble} SELECT 1 AS one ${postamble}"""

            class Local(SamizdatView):
                schema = TENANT
                deps_on = {Shared}
                sql_template = """${preamble} SELECT count(*) AS n FROM ${tenant}.orders, public."Shared" ${postamble}"""
            '''
        )
    )
    assert main(["sync", db_url, str(module), "--tenant-schemas", "shop%"]) == 0
    out = capsys.readouterr().out
    assert "schema shop_a: 1 create" in out and "schema shop_b: 1 create" in out and "other" not in out
    assert main(["sync", db_url, str(module), "--tenant-schemas-query", "SELECT 'other'"]) == 0
    assert scalar(engine, 'SELECT n FROM other."Local"') == 2
    capsys.readouterr()
    assert main(["diff", db_url, str(module), "--tenant-schemas", "shop%", "--tenant-schemas", "oth%"]) == 0
    assert main(["nuke", db_url, str(module), "--tenant-schemas", "shop_b"]) == 0
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE viewname = 'Local'") == 2
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE viewname = 'Shared'") == 1
    # Without tenants, diff sees the shared objects only; the tenants' objects are not excess.
    capsys.readouterr()
    assert main(["diff", db_url, str(module)]) == 0
    out, err = capsys.readouterr()
    assert "Local" not in out
    assert "1 class(es) with schema = TENANT left out (shared objects only)" in err


def test_a_shared_class_cannot_depend_on_a_tenant_class(engine: sa.Engine) -> None:
    class Summary(SamizdatView):
        deps_on = {Orders}
        sql_template = """${preamble} SELECT 1 AS x ${postamble}"""

    registry = SamizdatRegistry()
    registry.register_all(Prices, Orders, Summary)
    with pytest.raises(TenantError, match=r"Summary \(schema 'public', shared\) depends on .*Orders, which has schema"):
        sync(engine, registry)
    with pytest.raises(TenantError):
        registry.for_tenant("t1")
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == 0


def test_tenant_classes_need_tenants_and_tenant_is_their_placeholder() -> None:
    with pytest.raises(TenantError, match="has schema = TENANT: it declares one object per tenant schema"):
        Orders.key()

    class Stray(SamizdatView):
        sql_template = """${preamble} SELECT 1 FROM ${tenant}.x ${postamble}"""

    with pytest.raises(TemplateError, match=r"\$\{tenant\} in classes with schema = TENANT"):
        Stray.create()
    expanded = registry_v1().for_tenant('Odd "Tenant"')
    orders = expanded.lookup("Orders")
    assert orders.schema_name() == 'Odd "Tenant"'
    assert '"Odd ""Tenant"""."Orders"' in orders.create() and '"Odd ""Tenant""".orders' in orders.create()
    # The same class each time, so declarations and graphs are memoized across runs.
    assert expanded.lookup("Orders") is registry_v1().for_tenant('Odd "Tenant"').lookup("Orders")


def test_triggers_in_tenants(engine: sa.Engine) -> None:
    class stamp(SamizdatFunction):
        schema = TENANT
        sql_template = """${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.qty := NEW.qty * 100;
            RETURN NEW; END $$"""

    class stamp_orders(SamizdatTrigger):
        schema = TENANT
        on_table = "orders"
        condition = "BEFORE INSERT"
        deps_on = {stamp}
        sql_template = """${preamble} FOR EACH ROW EXECUTE FUNCTION ${tenant}.stamp()"""

    make_tenants(engine, ["x1", "x2"])
    registry = SamizdatRegistry()
    registry.register_all(stamp, stamp_orders)
    fleet_api.sync(engine, registry, tenants=["x1", "x2"]).check()
    run_sql(engine, "INSERT INTO x2.orders VALUES (9, 3)")
    assert scalar(engine, "SELECT qty FROM x2.orders WHERE id = 9") == 300
    assert fleet_api.diff(engine, registry, tenants=["x1", "x2"]).exit_code == 0


def test_signatures_with_and_without_a_tenant() -> None:
    from alembic_samizdat.declared import declared_of

    plain = signature_text(declared_of(Prices), "default")
    assert '"tenant"' not in plain
    assert parse(plain).scope == "default"
    item = declared_of(registry_v1().for_tenant("t1").lookup("Orders"))
    text = signature_text(item, tenant_scope("default", "t1"))
    body = json.loads(text)
    assert body["scope"] == "default" and body["tenant"] == "t1"
    assert parse(text).scope == tenant_scope("default", "t1")
    assert split_scope(parse(text).scope) == ("default", "t1")
    bad = text.replace('"tenant":"t1"', '"tenant":7')
    with pytest.raises(Exception, match="tenant must be a non-empty string"):
        parse(bad)


def test_a_tenants_run_reads_only_its_own_objects(engine: sa.Engine) -> None:
    from alembic_samizdat.catalog import read_state

    make_tenants(engine, ["acme", "bolt"])
    fleet_api.sync(engine, registry_v1(), tenants=["acme", "bolt"]).check()
    with engine.connect() as conn:
        state = read_state(conn, tenant_scope("default", "acme"), ())
        shared = read_state(conn, "default", ())
    assert {k.schema for k in state.managed} == {"acme"} and len(state.managed) == 3
    assert not [o for o in state.others if o.key.schema == "bolt"]
    # The shared run reads everything as before: the tenants' objects are others, never its own.
    assert {k.schema for k in shared.managed} == {"public"}
    assert {o.key.schema for o in shared.others} >= {"acme", "bolt"}


class Live(SamizdatMaterializedView):
    schema = TENANT
    refresh_triggers = {"orders"}
    sql_template = """${preamble} SELECT count(*) AS n FROM ${tenant}.orders ${postamble}"""


def test_autorefresh_per_tenant_and_refresh(engine: sa.Engine) -> None:
    make_tenants(engine, ["p1", "p2"])
    registry = SamizdatRegistry()
    registry.register(Live)
    fleet_api.sync(engine, registry, tenants=["p1", "p2"]).check()
    run_sql(engine, "INSERT INTO p2.orders VALUES (5, 5)")
    assert scalar(engine, 'SELECT n FROM p2."Live"') == 3  # p2's own trigger refreshed p2's view
    assert scalar(engine, 'SELECT n FROM p1."Live"') == 2
    functions = rows(engine, "SELECT pronamespace::regnamespace::text FROM pg_proc WHERE proname LIKE 'samizdat%'")
    assert sorted(r[0] for r in functions) == ["p1", "p2"]
    assert fleet_api.diff(engine, registry, tenants=["p1", "p2"]).exit_code == 0
    result = fleet_api.refresh(engine, registry, tenants=["p1", "p2"]).check()
    assert [o.message for o in result.outcomes] == [
        "nothing to refresh",
        "refreshed 1 materialized view(s)",
        "refreshed 1 materialized view(s)",
    ]
    with engine.connect() as conn, pytest.raises(Exception, match="give an Engine or a list of database URLs"):
        fleet_api.sync(conn, registry, tenants=["p1"])  # type: ignore[arg-type]


def test_a_broken_tenant_class_is_one_error_before_any_connection(engine: sa.Engine) -> None:
    class Broken(SamizdatView):
        schema = TENANT
        sql_template = """SELECT 1"""  # no ${preamble}

    registry = SamizdatRegistry()
    registry.register_all(Prices, Broken)
    with pytest.raises(TemplateError, match=r"Broken\[TENANT\]\.sql_template must hold \$\{preamble\}"):
        fleet_api.sync(engine, registry, tenants=["nowhere"])
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE schemaname = 'public'") == 0


class PricesV2(SamizdatView):
    """Prices without its price column: a rebuild, which the tenants' views stand in the way of."""

    sql_template = """${preamble} SELECT 1 AS id, 10 AS cost UNION ALL SELECT 2, 20 ${postamble}"""

    @classmethod
    def object_name(cls) -> str:
        return "Prices"


class OrdersOnCost(SamizdatView):
    schema = TENANT
    deps_on = {PricesV2}
    deps_on_unmanaged = {"orders"}
    sql_template = """
        ${preamble}
        SELECT o.id, o.qty * p.cost AS total FROM ${tenant}.orders o JOIN public."Prices" p ON p.id = o.id
        ${postamble}
    """

    @classmethod
    def object_name(cls) -> str:
        return "Orders"


def test_a_shared_rebuild_under_tenant_objects_needs_them_dropped_first(engine: sa.Engine) -> None:
    make_tenants(engine, ["m1", "m2"])
    fleet_api.sync(engine, registry_v1(), tenants=["m1", "m2"]).check()
    changed = SamizdatRegistry()
    changed.register_all(PricesV2, OrdersOnCost)
    result = fleet_api.sync(engine, changed, tenants=["m1", "m2"])
    failed = result.failed[0]
    assert failed.tenant is None
    expected = 'view "m1"."Orders" (signed by scope \'default\' (tenant \'m1\')) depends on view "public"."Prices"'
    assert expected in failed.message, failed.message
    assert "drop them first with `samizdat nuke --tenant-schemas …`, then sync" in failed.message
    # The documented way through: the tenants' objects go, the shared view is rebuilt, the tenants come back.
    fleet_api.nuke(engine, changed, tenants=["m1", "m2"]).check()
    fleet_api.sync(engine, changed, tenants=["m1", "m2"]).check()
    assert scalar(engine, 'SELECT sum(total) FROM m2."Orders"') == 30
    assert fleet_api.diff(engine, changed, tenants=["m1", "m2"]).exit_code == 0


def test_an_interrupted_run_starts_no_further_tenant(engine: sa.Engine) -> None:
    import threading

    from alembic_samizdat.fleet import run_database, sync_operation

    make_tenants(engine, ["s1", "s2", "s3"])
    stop = threading.Event()
    seen: list[str | None] = []

    def tell(outcome: fleet_api.Outcome) -> None:
        seen.append(outcome.tenant)
        if outcome.tenant == "s1":
            stop.set()  # as Ctrl-C does, from the main thread, while a tenant runs

    outcomes = run_database(
        engine, registry_v1(), sync_operation(), tenants=["s1", "s2", "s3"], on_outcome=tell, stop=stop
    )
    assert seen == [None, "s1"] and [o.tenant for o in outcomes] == [None, "s1"]
    assert scalar(engine, "SELECT count(*) FROM pg_views WHERE schemaname IN ('s2', 's3')") == 0

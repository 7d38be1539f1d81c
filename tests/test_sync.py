"""The engine end to end on a real PostgreSQL: sync, diff, nuke, disciplines, scopes, odd names, concurrency."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from helpers import (
    catalog_snapshot,
    function,
    function_names,
    make_registry,
    matview,
    protocol_trace,
    psql_binary,
    relation_oid,
    relkind,
    rows,
    run_sql,
    scalar,
    statement_log,
    trigger,
    trigger_names,
    view,
    view_definition,
)

from alembic_samizdat import (
    Discipline,
    ExecutionError,
    FunctionSignatureMismatchError,
    NameClashError,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatTrigger,
    SamizdatView,
    UnmanagedDependentError,
    diff_database,
    nuke,
    plan,
    sync,
)
from alembic_samizdat.planner import DiffKind, Verb

ALL_DISCIPLINES = [Discipline.CHECKPOINT, Discipline.JUMBO, Discipline.DRYRUN]

# --- a small but complete set of objects ----------------------------------------------------------------------

BASE_TABLES = (
    "CREATE TABLE orders (id serial PRIMARY KEY, customer text NOT NULL, amount numeric NOT NULL)",
    "INSERT INTO orders (customer, amount) VALUES ('ann', 10), ('bob', 5), ('ann', 7)",
    "CREATE TABLE audit (id serial PRIMARY KEY, note text)",
)


class Customers(SamizdatView):
    deps_on_unmanaged = {"orders"}
    sql_template = """
        ${preamble}
        SELECT DISTINCT customer, '$1 costs $$5 (100%)' AS price_text FROM orders
        ${postamble}
    """


class Totals(SamizdatMaterializedView):
    deps_on = {Customers}
    deps_on_unmanaged = {"orders"}
    sql_template = """
        ${preamble}
        SELECT c.customer, (SELECT sum(amount) FROM orders o WHERE o.customer = c.customer) AS total
        FROM "Customers" c
        ${postamble};
        CREATE UNIQUE INDEX "Totals_customer" ON ${samizdatname} (customer)
    """


class double_it(SamizdatFunction):
    function_arguments_signature = "integer"
    sql_template = "${preamble} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT $1 * 2 $$"


class log_order(SamizdatFunction):
    sql_template = """
        ${preamble} RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            msg text := format('order %s for %s ($1 literal)', NEW.id, NEW.customer);
        BEGIN
            INSERT INTO audit (note) VALUES (msg);
            RETURN NEW;
        END;
        $$
    """


class order_logger(SamizdatTrigger):
    on_table = "orders"
    condition = "AFTER INSERT"
    deps_on = {log_order}
    sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION log_order()"


class Doubled(SamizdatView):
    deps_on = {("public", "double_it", "integer"), "Totals"}
    sql_template = '${preamble} SELECT customer, double_it(total::int) AS twice FROM "Totals" ${postamble}'


FULL = (Customers, Totals, double_it, log_order, order_logger, Doubled)


@pytest.fixture
def shop(engine: sa.Engine) -> sa.Engine:
    run_sql(engine, *BASE_TABLES)
    return engine


def test_fresh_sync_creates_everything(shop: sa.Engine) -> None:
    result = sync(shop, make_registry(*FULL))
    assert result.committed
    assert relkind(shop, "Customers") == "v"
    assert relkind(shop, "Totals") == "m"
    assert relkind(shop, "Doubled") == "v"
    assert scalar(shop, "SELECT relispopulated FROM pg_class WHERE relname = 'Totals'") is True
    assert rows(shop, 'SELECT customer, total FROM "Totals" ORDER BY 1') == [("ann", 17), ("bob", 5)]
    assert rows(shop, 'SELECT customer, twice FROM "Doubled" ORDER BY 1') == [("ann", 34), ("bob", 10)]
    assert scalar(shop, 'SELECT price_text FROM "Customers" LIMIT 1') == "$1 costs $$5 (100%)"
    assert scalar(shop, "SELECT double_it(21)") == 42
    assert relkind(shop, "Totals_customer") == "i"
    assert trigger_names(shop) == {"order_logger"}
    run_sql(shop, "INSERT INTO orders (customer, amount) VALUES ('cy', 1)")
    assert scalar(shop, "SELECT note FROM audit") == "order 4 for cy ($1 literal)"
    # every object is signed
    comments = rows(
        shop,
        "SELECT obj_description(oid, 'pg_class') FROM pg_class WHERE relname IN ('Customers', 'Totals', 'Doubled')",
    )
    assert all(c[0].startswith('{"alembic_samizdat":') for c in comments)
    assert scalar(shop, "SELECT obj_description('double_it(integer)'::regprocedure, 'pg_proc')").startswith(
        '{"alembic_samizdat":'
    )
    assert scalar(
        shop, "SELECT obj_description(oid, 'pg_trigger') FROM pg_trigger WHERE tgname = 'order_logger'"
    ).startswith('{"alembic_samizdat":')
    assert diff_database(shop, make_registry(*FULL)).exit_code == 0


@pytest.mark.parametrize("discipline", [Discipline.CHECKPOINT, Discipline.JUMBO])
def test_second_sync_is_a_noop_in_at_most_three_statements(shop: sa.Engine, discipline: Discipline) -> None:
    registry = make_registry(*FULL)
    sync(shop, registry, discipline=discipline)
    before = catalog_snapshot(shop)
    with statement_log(shop) as log:
        result = sync(shop, registry, discipline=discipline)
    assert result.plan.actions == ()
    assert result.differences == ()
    assert result.summary().startswith("nothing to do")
    assert len(log) <= 3, log.statements
    assert catalog_snapshot(shop) == before


@pytest.mark.parametrize("discipline", [Discipline.CHECKPOINT, Discipline.JUMBO])
def test_noop_sync_round_trips_on_the_wire(shop: sa.Engine, discipline: Discipline) -> None:
    """What the server actually receives: lock, catalog read, unlock (checkpoint needs no transaction at all;
    jumbo may add its BEGIN and COMMIT)."""
    registry = make_registry(*FULL)
    sync(shop, registry, discipline=discipline)
    with shop.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        conn.rollback()
        with protocol_trace(conn) as wire:
            result = sync(conn, registry, discipline=discipline)
    assert result.plan.actions == ()
    if discipline is Discipline.CHECKPOINT:
        assert len(wire) <= 3, wire.round_trips
    else:
        assert len(wire.without_transaction_control()) <= 2, wire.round_trips
        assert len(wire) <= 4, wire.round_trips


def test_sync_statements_are_visible_to_sqlalchemy_events(shop: sa.Engine) -> None:
    """``echo=True`` and ``before_cursor_execute`` listeners see the DDL a sync runs, like any other SQL."""
    with statement_log(shop) as log:
        sync(shop, make_registry(Customers))
    assert any(s.lstrip().startswith('CREATE VIEW "public"."Customers"') for s in log.statements), log.statements


@pytest.mark.parametrize("discipline", [Discipline.CHECKPOINT, Discipline.JUMBO])
def test_sync_on_a_connection_leaves_it_usable(shop: sa.Engine, discipline: Discipline) -> None:
    """A caller's Connection can run several syncs in a row, and afterwards is not left in autocommit."""
    with shop.connect() as conn:
        sync(conn, make_registry(Customers), discipline=discipline)
        if discipline is Discipline.JUMBO:
            conn.commit()
        sync(conn, make_registry(Customers, Totals), discipline=discipline)
        if discipline is Discipline.JUMBO:
            conn.commit()
        conn.exec_driver_sql("CREATE TABLE must_roll_back (x int)")
        conn.rollback()
    assert relkind(shop, "Totals") == "m"
    assert relkind(shop, "must_roll_back") is None


def test_diff_exit_codes(shop: sa.Engine) -> None:
    registry = make_registry(Customers)
    assert diff_database(shop, registry).exit_code == 102
    sync(shop, registry)
    assert diff_database(shop, registry).exit_code == 0
    assert diff_database(shop, make_registry(scope="default")).exit_code == 101
    changed = view("Customers", "SELECT 1 AS customer", deps_on_unmanaged={"orders"})
    assert diff_database(shop, make_registry(changed)).exit_code == 103


# --- changes and dependents -----------------------------------------------------------------------------------


def test_changing_a_template_recreates_it_and_its_dependents(shop: sa.Engine) -> None:
    a_base = view("a_base", "SELECT customer, amount FROM orders")
    b_declared = view("b_declared", 'SELECT customer FROM "a_base"', deps_on={"a_base"})
    c_undeclared = view("c_undeclared", 'SELECT amount FROM "a_base"')  # reads a_base, deps_on forgets it
    d_mat = matview("d_mat", 'SELECT count(*) AS n FROM "b_declared"', deps_on={b_declared})
    e_unrelated = view("e_unrelated", "SELECT 1 AS one")
    sync(shop, make_registry(a_base, b_declared, c_undeclared, d_mat, e_unrelated))
    oids = {
        n: relation_oid(shop, "public", n) for n in ("a_base", "b_declared", "c_undeclared", "d_mat", "e_unrelated")
    }

    # Columns reordered: PostgreSQL refuses to replace it in place, so the stack is rebuilt.
    a_base2 = view("a_base", "SELECT amount, customer, id FROM orders")
    registry = make_registry(a_base2, b_declared, c_undeclared, d_mat, e_unrelated)
    # the warning is known before the sync (from the catalog)
    assert any("c_undeclared" in w and "a_base" in w for w in diff_database(shop, registry).warnings)
    result = sync(shop, registry)
    recreated = {a.key.name for a in result.applied if a.verb is Verb.CREATE}
    assert recreated == {"a_base", "b_declared", "c_undeclared", "d_mat"}
    dropped = [a.key.name for a in result.applied if a.verb is Verb.DROP]
    assert set(dropped) == {"a_base", "b_declared", "c_undeclared", "d_mat"}
    assert dropped.index("d_mat") < dropped.index("b_declared") < dropped.index("a_base")
    assert dropped.index("c_undeclared") < dropped.index("a_base")
    warnings = [w for w in result.warnings if "c_undeclared" in w]
    assert warnings and "deps_on" in warnings[0] and "a_base" in warnings[0]
    for name in ("a_base", "b_declared", "c_undeclared", "d_mat"):
        assert relation_oid(shop, "public", name) != oids[name], name
    assert relation_oid(shop, "public", "e_unrelated") == oids["e_unrelated"]
    assert "id" in view_definition(shop, "a_base")
    assert scalar(shop, 'SELECT n FROM "d_mat"') == 3
    assert sync(shop, registry).plan.actions == ()


def test_undeclared_dependent_that_sorts_first_is_recreated_after_what_it_reads(shop: sa.Engine) -> None:
    """The catalog knows "a_reader" reads "z_source"; the plan must create z_source first even though
    deps_on does not say so (the warning tells the user to fix deps_on, but the sync must not break)."""
    z_source = view("z_source", "SELECT customer FROM orders")
    a_reader = view("a_reader", "SELECT 1 AS one")
    sync(shop, make_registry(z_source, a_reader))
    a_reader2 = view("a_reader", 'SELECT customer FROM "z_source"')  # deps_on forgotten
    sync(shop, make_registry(z_source, a_reader2))
    z_source2 = view("z_source", "SELECT customer, amount FROM orders")
    registry = make_registry(z_source2, a_reader2)
    before = catalog_snapshot(shop)
    try:
        result = sync(shop, registry, discipline=Discipline.JUMBO)
    except ExecutionError as exc:
        assert catalog_snapshot(shop) == before
        pytest.fail(f"sync with an undeclared (but cataloged) dependency failed: {exc}")
    assert any("a_reader" in w for w in result.warnings)
    assert "amount" in view_definition(shop, "z_source")
    assert relkind(shop, "a_reader") == "v"


def test_function_change_recreates_views_calling_it(shop: sa.Engine) -> None:
    fn = function(
        "tax",
        "${preamble} RETURNS numeric LANGUAGE sql AS $$ SELECT $1 * 0.1 $$",
        function_arguments_signature="numeric",
    )
    taxed = view("taxed", "SELECT id, tax(amount) AS t FROM orders", deps_on={("public", "tax", "numeric")})
    sync(shop, make_registry(fn, taxed))
    assert scalar(shop, "SELECT t FROM taxed WHERE id = 1") == 1
    fn2 = function(
        "tax",
        "${preamble} RETURNS numeric LANGUAGE sql AS $$ SELECT $1 * 0.2 $$",
        function_arguments_signature="numeric",
    )
    taxed_oid = relation_oid(shop, "public", "taxed")
    result = sync(shop, make_registry(fn2, taxed))
    # Same signature and result type: replaced in place, the view calling it untouched.
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.REPLACE, "tax")]
    assert relation_oid(shop, "public", "taxed") == taxed_oid
    assert scalar(shop, "SELECT t FROM taxed WHERE id = 1") == 2


def test_instead_of_trigger_on_a_managed_view_survives_a_view_change(shop: sa.Engine) -> None:
    editable = view("editable", "SELECT id, customer FROM orders")
    fn = function(
        "editable_insert",
        "${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO orders (customer, amount) VALUES (NEW.customer, 0); RETURN NEW; END $$",
    )
    trig = trigger(
        "editable_ins",
        "${preamble} FOR EACH ROW EXECUTE FUNCTION editable_insert()",
        on_table=editable,
        condition="INSTEAD OF INSERT",
        deps_on={fn},
    )
    sync(shop, make_registry(editable, fn, trig))
    run_sql(shop, "INSERT INTO editable (customer) VALUES ('via view')")
    editable2 = view("editable", "SELECT id, customer, amount FROM orders")
    trig2 = trigger(
        "editable_ins",
        "${preamble} FOR EACH ROW EXECUTE FUNCTION editable_insert()",
        on_table=editable2,
        condition="INSTEAD OF INSERT",
        deps_on={fn},
    )
    sync(shop, make_registry(editable2, fn, trig2))
    run_sql(shop, "INSERT INTO editable (customer) VALUES ('again')")
    assert scalar(shop, "SELECT count(*) FROM orders WHERE customer IN ('via view', 'again')") == 2


def test_matview_turned_into_a_view_and_back(shop: sa.Engine) -> None:
    as_mat = matview("shape", "SELECT 1 AS x")
    as_view = view("shape", "SELECT 1 AS x")
    sync(shop, make_registry(as_mat))
    assert relkind(shop, "shape") == "m"
    sync(shop, make_registry(as_view))
    assert relkind(shop, "shape") == "v"
    sync(shop, make_registry(as_mat))
    assert relkind(shop, "shape") == "m"
    assert sync(shop, make_registry(as_mat)).plan.actions == ()


# --- what we never touch --------------------------------------------------------------------------------------


@pytest.mark.parametrize("discipline", ALL_DISCIPLINES)
def test_unmanaged_dependent_stops_the_sync_and_changes_nothing(shop: sa.Engine, discipline: Discipline) -> None:
    managed = view("managed", "SELECT customer FROM orders")
    on_top = view("on_top", 'SELECT customer FROM "managed"', deps_on={"managed"})
    sync(shop, make_registry(managed, on_top))
    run_sql(shop, 'CREATE VIEW "users view" AS SELECT customer FROM on_top')
    before = catalog_snapshot(shop)
    # A changed column type: PostgreSQL refuses the in-place replacement, and the rebuild would drop the user's view.
    changed = view("managed", "SELECT customer::varchar(99) AS customer FROM orders")
    with statement_log(shop) as log, pytest.raises(UnmanagedDependentError) as info:
        sync(shop, make_registry(changed, on_top), discipline=discipline)
    assert '"users view"' in str(info.value) or "users view" in str(info.value)
    assert catalog_snapshot(shop) == before
    assert "amount" not in view_definition(shop, "managed")
    assert relkind(shop, "users view") == "v"
    assert not any("DROP" in s.upper() for s in log.statements)
    # nuke refuses too
    with pytest.raises(UnmanagedDependentError, match="users view"):
        nuke(shop, make_registry(), discipline=discipline)
    assert catalog_snapshot(shop) == before


def test_no_statement_ever_cascades(shop: sa.Engine) -> None:
    registry = make_registry(*FULL)
    with shop.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        conn.rollback()
        with protocol_trace(conn) as wire:
            sync(conn, registry, discipline=Discipline.JUMBO)
            conn.commit()
            triple_it = function(  # a new result type: rebuilt, not replaced in place
                "double_it",
                "${preamble} RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT $1::bigint * 3 $$",
                function_arguments_signature="integer",
            )
            result = sync(
                conn,
                make_registry(Customers, Totals, triple_it, log_order, order_logger, Doubled),
                discipline=Discipline.JUMBO,
            )
            conn.commit()
            assert {a.key.name for a in result.applied if a.verb is Verb.DROP} == {"double_it", "Doubled"}
            sync(conn, make_registry(triple_it), discipline=Discipline.JUMBO)
            conn.commit()
            nuke(conn, make_registry(), discipline=Discipline.JUMBO)
            conn.commit()
    assert any("DROP VIEW" in s.upper() for s in wire.round_trips)
    assert any("DROP FUNCTION" in s.upper() for s in wire.round_trips)
    assert not any("CASCADE" in s.upper() for s in wire.round_trips)
    assert relkind(shop, "Customers") is None and "double_it" not in function_names(shop)
    assert relkind(shop, "orders") == "r"


@pytest.mark.parametrize(
    "existing",
    [
        'CREATE VIEW "Customers" AS SELECT 1 AS x',
        'CREATE TABLE "Customers" (x int)',
        'CREATE VIEW "Customers" AS SELECT 1 AS x; COMMENT ON VIEW "Customers" IS \'{"alembic_samizdat": broken\'',
    ],
)
def test_name_taken_by_an_object_we_did_not_sign(shop: sa.Engine, existing: str) -> None:
    run_sql(shop, existing)
    before = catalog_snapshot(shop)
    with pytest.raises(NameClashError, match="Customers"):
        sync(shop, make_registry(Customers))
    with pytest.raises(NameClashError):
        sync(shop, make_registry(Customers), discipline=Discipline.JUMBO)
    assert catalog_snapshot(shop) == before


@pytest.mark.parametrize("spelling", ["integer", "  INTEGER "])
def test_function_name_taken_by_an_unsigned_function(shop: sa.Engine, spelling: str) -> None:
    """Spelt as PostgreSQL prints it, the clash is found while planning, before any SQL."""
    run_sql(shop, "CREATE FUNCTION double_it(integer) RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$")
    declared = function(
        "double_it",
        "${preamble} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT $1 * 2 $$",
        function_arguments_signature=spelling,
    )
    earlier = view("a_first", "SELECT 1 AS x")  # planned before the function
    before = catalog_snapshot(shop)
    with pytest.raises(NameClashError, match="double_it"):
        sync(shop, make_registry(earlier, declared))
    # refused before any SQL: even the checkpoint discipline has created nothing
    assert catalog_snapshot(shop) == before


@pytest.mark.parametrize("spelling", ["int", "int4"])
def test_function_clash_with_other_type_spelling_fails_cleanly(shop: sa.Engine, spelling: str) -> None:
    """Other spellings of the same types cannot be matched without the server parsing them: the CREATE
    fails with an error that says the object exists unsigned, and a jumbo sync leaves nothing behind."""
    run_sql(shop, "CREATE FUNCTION double_it(integer) RETURNS integer LANGUAGE sql AS $$ SELECT 0 $$")
    declared = function(
        "double_it",
        "${preamble} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT $1 * 2 $$",
        function_arguments_signature=spelling,
    )
    earlier = view("a_first", "SELECT 1 AS x")
    before = catalog_snapshot(shop)
    with pytest.raises(ExecutionError, match="not signed by this registry"):
        sync(shop, make_registry(earlier, declared), discipline=Discipline.JUMBO)
    assert catalog_snapshot(shop) == before


def test_objects_renamed_behind_our_back_are_replaced(shop: sa.Engine) -> None:
    registry = make_registry(Customers, double_it)
    sync(shop, registry)
    run_sql(
        shop,
        'ALTER VIEW "Customers" RENAME TO "Customers_old"',
        "ALTER FUNCTION double_it(integer) RENAME TO double_it_old",
    )
    found = {(d.what, d.key.name) for d in diff_database(shop, registry).differences}
    assert (DiffKind.EXCESS_CODE, "Customers") in found and (DiffKind.EXCESS_DB, "Customers_old") in found
    assert (DiffKind.EXCESS_CODE, "double_it") in found
    sync(shop, registry)
    assert relkind(shop, "Customers") == "v" and relkind(shop, "Customers_old") is None
    assert "double_it" in function_names(shop) and "double_it_old" not in function_names(shop)
    assert sync(shop, registry).plan.actions == ()


def test_scopes_are_isolated(engine: sa.Engine) -> None:
    run_sql(
        engine,
        "CREATE VIEW plain AS SELECT 1 AS x",
        "CREATE VIEW broken AS SELECT 1 AS x",
        """COMMENT ON VIEW broken IS '{"alembic_samizdat": broken'""",
        "CREATE VIEW weird_json AS SELECT 1 AS x",
        """COMMENT ON VIEW weird_json IS '{"alembic_samizdat":1,"scope":5}'""",
        "CREATE FUNCTION broken_fn() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        """COMMENT ON FUNCTION broken_fn() IS '{"alembic_samizdat":[]}'""",
    )
    va = view("va", "SELECT 1 AS x")
    shared_a = view("shared_name", "SELECT 'a' AS who", schema="sa")
    vb = view("vb", "SELECT 2 AS x")
    fb = function("fb", "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 2 $$")
    run_sql(engine, "CREATE SCHEMA sa")
    reg_a = make_registry(va, shared_a, scope="a")
    reg_b = make_registry(vb, fb, scope="b")
    sync(engine, reg_a)
    sync(engine, reg_b)
    assert {relkind(engine, "va"), relkind(engine, "vb")} == {"v"}
    assert diff_database(engine, reg_a).exit_code == 0
    assert diff_database(engine, reg_b).exit_code == 0
    assert sync(engine, reg_a).plan.actions == ()

    # the other scope's names are not ours to take
    steal = view("vb", "SELECT 3 AS x")
    with pytest.raises(NameClashError, match="scope 'b'"):
        sync(engine, make_registry(va, shared_a, steal, scope="a"))

    untouched = {n: relation_oid(engine, "public", n) for n in ("plain", "broken", "weird_json", "vb")}
    nuked = nuke(engine, scope="a")
    assert {a.key.name for a in nuked.applied} == {"va", "shared_name"}
    assert relkind(engine, "va") is None and relkind(engine, "shared_name", "sa") is None
    assert {n: relation_oid(engine, "public", n) for n in untouched} == untouched
    assert "fb" in function_names(engine) and "broken_fn" in function_names(engine)

    # an empty registry of scope b drops b's objects only
    result = sync(engine, make_registry(scope="b"))
    assert {a.key.name for a in result.applied} == {"vb", "fb"}
    assert relkind(engine, "vb") is None and "fb" not in function_names(engine)
    for name in ("plain", "broken", "weird_json"):
        assert relkind(engine, name) == "v"
    assert "broken_fn" in function_names(engine)
    assert scalar(engine, "SELECT obj_description('broken'::regclass, 'pg_class')") == '{"alembic_samizdat": broken'
    assert nuke(engine, scope="default").plan.actions == ()


# --- triggers -------------------------------------------------------------------------------------------------


def _trigger_def(engine: sa.Engine, name: str) -> str | None:
    return scalar(engine, "SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = :n", {"n": name})


def test_trigger_condition_change_is_detected_and_applied(shop: sa.Engine) -> None:
    sync(shop, make_registry(log_order, order_logger))
    assert "AFTER INSERT ON" in _trigger_def(shop, "order_logger")
    changed = trigger(
        "order_logger",
        order_logger.sql_template,
        on_table="orders",
        condition="AFTER INSERT OR UPDATE",
        deps_on={log_order},
    )
    registry = make_registry(log_order, changed)
    differences = diff_database(shop, registry).differences
    assert [(d.what, d.key.name) for d in differences] == [(DiffKind.CHANGED, "order_logger")]
    sync(shop, registry)
    assert "AFTER INSERT OR UPDATE ON" in _trigger_def(shop, "order_logger")
    assert sync(shop, registry).plan.actions == ()


ODD_NAMES = [
    "MixedCase",
    'qu"ote',
    "it's",
    "back\\slash",
    "100%s",
    "with space",
    "ünïcødé",
    "select",
    "a.b",
    "x; DROP TABLE orders; --",
]


def test_odd_names_are_created_changed_and_dropped(engine: sa.Engine) -> None:
    schema = 'Odd "Schema".x'
    table = 'Odd Table "T"'
    run_sql(
        engine,
        'CREATE SCHEMA "Odd ""Schema"".x"',
        'CREATE TABLE "Odd ""Schema"".x"."Odd Table ""T""" (v int)',
    )
    fn = function(
        'Fn "odd"',
        "${preamble} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        schema=schema,
    )
    call = 'EXECUTE FUNCTION "Odd ""Schema"".x"."Fn ""odd"""()'

    def make(condition: str) -> list[type]:
        classes: list[type] = [fn]
        for i, name in enumerate(ODD_NAMES):
            classes.append(
                trigger(
                    name,
                    "${preamble} FOR EACH ROW " + call,
                    on_table=(schema, table),
                    condition=condition,
                    deps_on={fn},
                )
            )
            classes.append(view(name, f"SELECT {i} AS n", schema=schema))
            classes.append(matview(name + "_m", f"SELECT {i} AS n", schema=schema))
        return classes

    first = make("AFTER INSERT")
    sync(engine, make_registry(*first))
    assert trigger_names(engine) == set(ODD_NAMES)
    names = {
        r[0]
        for r in rows(
            engine,
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace WHERE nspname = :s",
            {"s": schema},
        )
    }
    assert set(ODD_NAMES) <= names and {n + "_m" for n in ODD_NAMES} <= names
    assert sync(engine, make_registry(*first)).plan.actions == ()

    second = make("BEFORE UPDATE")
    result = sync(engine, make_registry(*second))
    assert {a.key.name for a in result.applied if a.verb is Verb.REPLACE} == set(ODD_NAMES)
    assert not any(a.verb is Verb.DROP for a in result.applied)
    for name in ODD_NAMES:
        assert "BEFORE UPDATE" in _trigger_def(engine, name)

    # drop half of them by leaving them out, then nuke the rest
    keep = [c for c in second if c.__name__ not in ODD_NAMES[:3] and c.__name__[:-2] not in ODD_NAMES[:3]]
    sync(engine, make_registry(*keep))
    assert trigger_names(engine) == set(ODD_NAMES[3:])
    nuke(engine, make_registry())
    assert trigger_names(engine) == set()
    assert (
        scalar(
            engine,
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = relnamespace WHERE nspname = :s AND relkind IN ('v', 'm')",
            {"s": schema},
        )
        == 0
    )
    assert relkind(engine, table, schema) == "r"


def test_string_and_tuple_deps_on_end_to_end(shop: sa.Engine) -> None:
    # names sort against dependency order, so only resolved deps_on gives a working order
    z_base = view("z_base", "SELECT customer, amount FROM orders", deps_on_unmanaged={"orders"})
    y_fn = function(
        "y_fn",
        "${preamble} RETURNS numeric LANGUAGE sql AS $$ SELECT $1 + 1 $$",
        function_arguments_signature="v numeric",
    )
    m_mid = view(
        "m_mid",
        "SELECT customer, y_fn(amount) AS a FROM z_base",
        deps_on={"z_base", ("public", "y_fn", " v  numeric ")},
    )
    a_top = matview("a_top", "SELECT customer, sum(a) AS s FROM m_mid GROUP BY 1", deps_on={("public", "m_mid")})
    registry = make_registry(a_top, m_mid, y_fn, z_base)
    sync(shop, registry)
    assert rows(shop, "SELECT customer, s FROM a_top ORDER BY 1") == [("ann", 19), ("bob", 6)]
    z_base2 = view("z_base", "SELECT customer, amount * 10 AS amount FROM orders", deps_on_unmanaged={"orders"})
    result = sync(shop, make_registry(a_top, m_mid, y_fn, z_base2))
    # Replaced in place; the materialized view above it is refreshed, nothing is recreated.
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.REPLACE, "z_base"), (Verb.REFRESH, "a_top")]
    assert rows(shop, "SELECT customer, s FROM a_top ORDER BY 1") == [("ann", 172), ("bob", 51)]


# --- failures and disciplines ---------------------------------------------------------------------------------


def _with_bad_view(bad_sql: str) -> tuple[list[type], list[type]]:
    a = view("a_ok", "SELECT customer FROM orders")
    b = view("b_ok", "SELECT 2 AS x")
    z = view("z_bad", bad_sql)
    return [a, b, z], [a, b]


@pytest.mark.parametrize("discipline", [Discipline.JUMBO, Discipline.DRYRUN])
def test_failed_statement_changes_nothing_in_jumbo_and_dryrun(shop: sa.Engine, discipline: Discipline) -> None:
    old_a = view("a_ok", "SELECT 1 AS customer")
    sync(shop, make_registry(old_a, Customers))
    before = catalog_snapshot(shop)
    classes, _ = _with_bad_view("SELECT * FROM no_such_table")
    with pytest.raises(ExecutionError) as info:
        sync(shop, make_registry(*classes), discipline=discipline)
    message = str(info.value)
    assert '"public"."z_bad"' in message and "no_such_table" in message
    assert "\n" not in message
    assert isinstance(info.value.__cause__, sa.exc.DBAPIError)
    assert catalog_snapshot(shop) == before
    assert rows(shop, "SELECT objid FROM pg_locks WHERE locktype = 'advisory'") == []


def test_failed_statement_in_checkpoint_keeps_completed_actions_and_converges(shop: sa.Engine) -> None:
    old_a = view("a_ok", "SELECT 1 AS customer")
    sync(shop, make_registry(old_a, Customers))
    classes, good = _with_bad_view("SELECT * FROM no_such_table")
    done: list[str] = []
    with pytest.raises(ExecutionError, match=r'"public"\."z_bad"'):
        sync(shop, make_registry(*classes), on_action=lambda a: done.append(f"{a.verb.value} {a.key.name}"))
    # the actions before the failure are committed: old a_ok and Customers dropped, new a_ok and b_ok created
    assert set(done) == {"drop Customers", "drop a_ok", "create a_ok", "create b_ok"}
    # Rebuilt a_ok is one unit: its drop and its create committed together.
    assert done.index("drop a_ok") + 1 == done.index("create a_ok")
    assert "orders" in view_definition(shop, "a_ok")
    assert relkind(shop, "b_ok") == "v" and relkind(shop, "z_bad") is None and relkind(shop, "Customers") is None
    assert rows(shop, "SELECT objid FROM pg_locks WHERE locktype = 'advisory'") == []
    fixed = view("z_bad", "SELECT 3 AS x")
    registry = make_registry(*good, fixed)
    result = sync(shop, registry)
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.CREATE, "z_bad")]
    assert sync(shop, registry).plan.actions == ()


def test_dryrun_reports_the_actions_and_changes_nothing(shop: sa.Engine) -> None:
    before = catalog_snapshot(shop)
    registry = make_registry(*FULL)
    result = sync(shop, registry, discipline="dryrun")
    assert not result.committed
    assert {a.key.name for a in result.applied if a.verb is Verb.CREATE} == {c.__name__ for c in FULL}
    assert len(result.applied) == len(result.plan.actions)
    assert "dry run" in result.summary()
    assert catalog_snapshot(shop) == before
    assert diff_database(shop, registry).exit_code == 102


BAD_SIGNATURE = "a int"  # PostgreSQL identifies it as (a integer, b integer)


@pytest.mark.parametrize("discipline", [Discipline.CHECKPOINT, Discipline.JUMBO])
def test_function_signature_mismatch_leaves_nothing(engine: sa.Engine, discipline: Discipline) -> None:
    ok = view("before_it", "SELECT 1 AS x")
    fn = function(
        "sum2",
        "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT a + b $$",
        function_arguments="a int, b int DEFAULT 1",
        function_arguments_signature=BAD_SIGNATURE,
    )
    before = catalog_snapshot(engine)
    with pytest.raises(FunctionSignatureMismatchError) as info:
        sync(engine, make_registry(ok, fn), discipline=discipline)
    message = str(info.value)
    assert "a integer, b integer" in message and f"({BAD_SIGNATURE})" in message and "sum2" in message
    assert "sum2" not in function_names(engine)
    if discipline is Discipline.JUMBO:
        assert catalog_snapshot(engine) == before
    assert rows(engine, "SELECT objid FROM pg_locks WHERE locktype = 'advisory'") == []
    good = function(
        "sum2",
        "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT a + b $$",
        function_arguments="a int, b int DEFAULT 1",
        function_arguments_signature="a int, b int",
    )
    registry = make_registry(ok, good)
    sync(engine, registry, discipline=discipline)
    assert scalar(engine, "SELECT sum2(2)") == 3
    assert sync(engine, registry).plan.actions == ()


def test_unpopulated_matview_is_refreshed_by_the_next_sync(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE nums (d int)", "INSERT INTO nums VALUES (1), (2)")
    inv = matview("inverse", "SELECT 10 / d AS q FROM nums", deps_on_unmanaged={"nums"})
    registry = make_registry(inv)
    sync(engine, registry)
    run_sql(engine, "INSERT INTO nums VALUES (0)")
    with pytest.raises(sa.exc.DBAPIError, match="division by zero"):
        run_sql(engine, 'REFRESH MATERIALIZED VIEW "inverse"')
    run_sql(engine, 'REFRESH MATERIALIZED VIEW "inverse" WITH NO DATA')
    assert scalar(engine, "SELECT relispopulated FROM pg_class WHERE relname = 'inverse'") is False
    found = diff_database(engine, registry)
    assert [(d.what, d.key.name) for d in found.differences] == [(DiffKind.UNPOPULATED, "inverse")]
    assert found.exit_code == 102
    run_sql(engine, "DELETE FROM nums WHERE d = 0")
    result = sync(engine, registry)
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.REFRESH, "inverse")]
    assert scalar(engine, "SELECT relispopulated FROM pg_class WHERE relname = 'inverse'") is True
    assert rows(engine, "SELECT q FROM inverse ORDER BY 1") == [(5,), (10,)]
    assert sync(engine, registry).plan.actions == ()


def test_autorefresh_refreshes_stacked_matviews_in_order_in_the_same_transaction(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE base (x int)", "INSERT INTO base VALUES (1)")
    # names chosen so that name order disagrees with dependency order
    lower = matview("z_lower", "SELECT x FROM base", deps_on_unmanaged={"base"}, refresh_triggers={"base"})
    upper = matview(
        "a_upper", "SELECT sum(x) AS s, count(*) AS n FROM z_lower", deps_on={lower}, refresh_triggers={"base"}
    )
    sync(engine, make_registry(lower, upper))
    assert scalar(engine, "SELECT s FROM a_upper") == 1
    with engine.connect() as conn:
        conn.exec_driver_sql("INSERT INTO base VALUES (10), (100)")
        # same transaction: both views already show the change, the upper one through the lower one
        assert conn.exec_driver_sql("SELECT count(*) FROM z_lower").scalar() == 3
        assert conn.exec_driver_sql("SELECT s FROM a_upper").scalar() == 111
        conn.rollback()
    assert scalar(engine, "SELECT s FROM a_upper") == 1
    run_sql(engine, "DELETE FROM base WHERE x = 1")
    assert scalar(engine, "SELECT n FROM a_upper") == 0
    run_sql(engine, "INSERT INTO base VALUES (5)")
    assert scalar(engine, "SELECT s FROM a_upper") == 5
    run_sql(engine, "TRUNCATE base")
    assert scalar(engine, "SELECT n FROM a_upper") == 0
    # the sidekicks are ours: no-op second sync, and nuke removes them but not the table
    registry = make_registry(lower, upper)
    assert sync(engine, registry).plan.actions == ()
    assert len(trigger_names(engine)) == 2
    nuke(engine, registry)
    assert trigger_names(engine) == set()
    assert not any(n.startswith("samizdat_") for n in function_names(engine))
    assert relkind(engine, "base") == "r"


def test_adding_an_unrelated_autorefreshed_matview_keeps_existing_triggers(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE base (x int)")
    mine = matview("mine", "SELECT x FROM base", refresh_triggers={"base"}, deps_on_unmanaged={"base"})
    sync(engine, make_registry(mine))
    oids = dict(rows(engine, "SELECT tgname, oid::bigint FROM pg_trigger WHERE NOT tgisinternal"))
    another = matview("aaa_another", "SELECT x FROM base", refresh_triggers={"base"}, deps_on_unmanaged={"base"})
    result = sync(engine, make_registry(another, mine))
    assert not any(a.verb is Verb.DROP for a in result.applied)
    now = dict(rows(engine, "SELECT tgname, oid::bigint FROM pg_trigger WHERE NOT tgisinternal"))
    assert {k: now[k] for k in oids} == oids and len(now) == 2


# --- concurrency ----------------------------------------------------------------------------------------------


def test_concurrent_syncs_serialize(engine: sa.Engine) -> None:
    versions = [view("contended", f"SELECT {i} AS version") for i in range(4)]
    above = [view("above", "SELECT version FROM contended", deps_on={v}) for v in versions]
    disciplines = [Discipline.CHECKPOINT, Discipline.JUMBO, Discipline.CHECKPOINT, Discipline.JUMBO]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
                conn.rollback()
                barrier.wait(timeout=10)
                for _ in range(3):
                    sync(conn, make_registry(versions[i], above[i]), discipline=disciplines[i])
                    if conn.in_transaction():
                        conn.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a sync hung (deadlock?)"
    assert errors == []
    # Whichever run came last, the catalog holds one whole version: "contended" as that version defines it,
    # and "above" (recreated over it) reading that same view.
    definition = view_definition(engine, "contended")
    found = re.fullmatch(r"\s*SELECT (\d) AS version;?\s*", definition or "")
    assert found is not None, definition
    final = int(found.group(1))
    assert scalar(engine, "SELECT version FROM above") == final
    assert scalar(engine, "SELECT count(*) FROM pg_class WHERE relname IN ('contended', 'above')") == 2
    assert sync(engine, make_registry(versions[final], above[final])).plan.actions == ()


# --- migration script -----------------------------------------------------------------------------------------


def test_plan_script_applied_with_psql_matches_a_real_sync(
    shop: sa.Engine, make_database: Callable[[], str], tmp_path
) -> None:
    autorefreshed = matview(
        "Fresh totals", "SELECT sum(amount) AS s FROM orders", refresh_triggers={"orders"}, deps_on_unmanaged={"orders"}
    )
    quoted = view('it\'s "quoted"', "SELECT 'it''s' AS s, E'back\\\\slash' AS b")
    classes = [*FULL, autorefreshed, quoted]
    sync(shop, make_registry(*classes))

    other_url = make_database()
    other = sa.create_engine(other_url)
    try:
        run_sql(other, *BASE_TABLES)
        script = plan(other, make_registry(*classes)).script()
        path = tmp_path / "plan.sql"
        path.write_text(script)
        done = subprocess.run(
            [
                psql_binary(),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-1",
                "-f",
                str(path),
                sa.make_url(other_url).set(drivername="postgresql").render_as_string(hide_password=False),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert catalog_snapshot(other) == catalog_snapshot(shop)
        assert sync(other, make_registry(*classes)).plan.actions == ()
        assert rows(other, 'SELECT s FROM "Fresh totals"') == [(22,)]
    finally:
        other.dispose()


def test_dbsamizdat_compat_module_with_indexes_after_the_postamble(engine: sa.Engine) -> None:
    """Written the way DBSamizdat's README shows: $$$$ bodies, an index right after ${postamble}."""
    from alembic_samizdat.compat.dbsamizdat import SamizdatFunction as F
    from alembic_samizdat.compat.dbsamizdat import SamizdatMaterializedView as M
    from alembic_samizdat.compat.dbsamizdat import SamizdatView as V

    class Greeting(V):
        sql_template = """
            ${preamble}
            SELECT 'hi' AS utterance
            ${postamble}
            """

    class shout(F):
        function_arguments_signature = "t text"
        sql_template = """
            ${preamble}
            RETURNS text LANGUAGE plpgsql AS $$$$ BEGIN RETURN upper($$1); END $$$$
            ${postamble}
            """

    class Stamped(M):
        deps_on = {Greeting, shout}
        sql_template = f"""
            ${{preamble}}
            SELECT public.shout(utterance) AS loud FROM {Greeting.db_object_identity}
            ${{postamble}}
            CREATE UNIQUE INDEX ON ${{samizdatname}} (loud)
            """

    registry = make_registry(Greeting, shout, Stamped)
    sync(engine, registry)
    with engine.connect() as conn:
        assert conn.exec_driver_sql('SELECT loud FROM "Stamped"').scalar() == "HI"
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_indexes WHERE tablename = 'Stamped'").scalar() == 1
    assert not sync(engine, registry).plan.actions

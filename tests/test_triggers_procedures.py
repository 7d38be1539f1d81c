"""Trigger names, constraint triggers and procedures on a real PostgreSQL: sync, diff, drift, adopt, Alembic."""

from __future__ import annotations

import io
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from helpers import alembic_project, make_registry, rows, run_sql, scalar, trigger_names
from test_adopt import CLI as DBSAMIZDAT_CLI
from test_adopt import needs_dbsamizdat

from alembic_samizdat import (
    DeclarationError,
    DuplicateIdentityError,
    ExecutionError,
    FunctionSignatureMismatchError,
    InvalidIdentifierError,
    SamizdatFunction,
    SamizdatProcedure,
    SamizdatTrigger,
    diff_database,
    plan,
    sync,
)
from alembic_samizdat.compat import dbsamizdat as compat
from alembic_samizdat.planner import DiffKind, Verb

TABLES = [f"t{i:02}" for i in range(15)]


def make_tables(engine: sa.Engine) -> None:
    run_sql(
        engine,
        *(f"CREATE TABLE {t} (id int PRIMARY KEY, note text, last_updated timestamptz)" for t in TABLES),
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.last_updated := '2001-02-03 04:05:06+00'; RETURN NEW; END $$",
    )


def last_updated_on(table: str, **attrs: Any) -> type[SamizdatTrigger]:
    """One class per table, all creating a trigger named ``last_updated``."""
    namespace: dict[str, Any] = {
        "__module__": "dyn",
        "__qualname__": f"LastUpdated_{table}",
        "trigger_name": "last_updated",
        "on_table": table,
        "condition": "BEFORE INSERT OR UPDATE",
        "sql_template": "${preamble} FOR EACH ROW EXECUTE FUNCTION public.touch() ${postamble}",
    }
    namespace.update(attrs)
    return type(f"LastUpdated_{table}", (SamizdatTrigger,), namespace)


def triggers_named(engine: sa.Engine, name: str) -> list[tuple[str, int]]:
    """(table, xmin) of every trigger called ``name``."""
    return rows(
        engine,
        "SELECT c.relname::text, t.xmin::text::bigint FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "WHERE t.tgname = :n ORDER BY 1",
        {"n": name},
    )


# --- trigger names ---------------------------------------------------------------------------------------------


def test_one_trigger_name_on_fifteen_tables(engine: sa.Engine) -> None:
    make_tables(engine)
    classes = [last_updated_on(t) for t in TABLES]
    registry = make_registry(*classes)
    sync(engine, registry)
    before = triggers_named(engine, "last_updated")
    assert [t for t, _ in before] == TABLES
    run_sql(engine, "INSERT INTO t07 (id) VALUES (1)")
    assert str(scalar(engine, "SELECT last_updated FROM t07")).startswith("2001-02-03")
    # No-op: nothing differs, nothing is planned.
    assert diff_database(engine, registry).differences == ()
    assert plan(engine, registry).actions == ()

    # Changing one of them recreates that one only.
    changed = last_updated_on("t03", condition="BEFORE UPDATE")
    registry = make_registry(*[changed if c.on_table == "t03" else c for c in classes])
    done = sync(engine, registry)
    # CREATE OR REPLACE TRIGGER takes the new condition: only that one trigger is replaced, in place.
    assert {(a.verb, a.key.extra) for a in done.plan.actions} == {(Verb.REPLACE, "t03")}
    after = dict(triggers_named(engine, "last_updated"))
    assert [t for t, xmin in before if after[t] != xmin] == ["t03"]

    # Dropping one class drops that table's trigger and no other.
    registry = make_registry(*[c for c in classes if c.on_table not in ("t03", "t11")])
    done = sync(engine, registry)
    assert {(a.verb, a.key.extra) for a in done.plan.actions} == {(Verb.DROP, "t03"), (Verb.DROP, "t11")}
    assert [t for t, _ in triggers_named(engine, "last_updated")] == [t for t in TABLES if t not in ("t03", "t11")]
    assert diff_database(engine, registry).differences == ()


def test_trigger_name_defaults_to_the_class_name(engine: sa.Engine) -> None:
    make_tables(engine)

    class stamp(SamizdatTrigger):
        on_table = "t00"
        condition = "BEFORE INSERT"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION public.touch() ${postamble}"

    sync(engine, make_registry(stamp))
    assert trigger_names(engine) == {"stamp"}
    assert stamp.db_object_identity == '"stamp" ON "public"."t00"'


def test_same_trigger_name_twice_on_one_table_names_both_classes(engine: sa.Engine) -> None:
    make_tables(engine)
    first = last_updated_on("t01")
    second = last_updated_on("t01", __qualname__="Another", condition="BEFORE UPDATE")
    with pytest.raises(DuplicateIdentityError) as caught:
        sync(engine, make_registry(first, second))
    message = str(caught.value)
    assert "dyn.LastUpdated_t01" in message and "dyn.Another" in message
    assert '"last_updated" ON "public"."t01"' in message and "trigger_name" in message
    assert trigger_names(engine) == set()


@pytest.mark.parametrize("name", ["", "x" * 64, "a\x00b", 7])
def test_bad_trigger_names_are_refused_before_any_sql(engine: sa.Engine, name: object) -> None:
    make_tables(engine)
    bad = last_updated_on("t02", trigger_name=name)
    with pytest.raises(InvalidIdentifierError, match="LastUpdated_t02"):
        sync(engine, make_registry(bad))
    assert trigger_names(engine) == set()


# --- constraint triggers ---------------------------------------------------------------------------------------

CHECK_FN = (
    "CREATE FUNCTION no_durian() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN IF EXISTS (SELECT 1 FROM fruit WHERE name = 'durian') THEN "
    "RAISE EXCEPTION 'too delicious: %', NEW.name; END IF; RETURN NULL; END $$"
)


class NoDurian(SamizdatTrigger):
    is_constraint = True
    trigger_name = "no durian"
    on_table = "fruit"
    condition = "AFTER INSERT OR UPDATE"
    sql_template = """
        ${preamble}
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION public.no_durian()
        ${postamble}
    """


def make_fruit(engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE fruit (name text)", CHECK_FN)


def constraint_rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    return rows(
        engine,
        "SELECT t.tgname::text, t.tgisinternal, t.tgconstraint <> 0, k.condeferrable, k.condeferred "
        "FROM pg_trigger t LEFT JOIN pg_constraint k ON k.oid = t.tgconstraint "
        "WHERE t.tgrelid = 'fruit'::regclass",
    )


def test_deferred_constraint_trigger_fires_at_commit(engine: sa.Engine, dsn: str) -> None:
    make_fruit(engine)
    registry = make_registry(NoDurian)
    sync(engine, registry)
    assert constraint_rows(engine) == [("no durian", False, True, True, True)]
    assert "CREATE CONSTRAINT TRIGGER" in str(scalar(engine, "SELECT pg_get_triggerdef(oid) FROM pg_trigger"))
    assert diff_database(engine, registry).differences == ()
    assert plan(engine, registry).actions == ()

    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO fruit VALUES ('durian')")
        # Deferred: the row is in, and the statement after it runs; the check comes at commit.
        assert conn.execute("SELECT count(*) FROM fruit").fetchone() == (1,)
        with pytest.raises(psycopg.errors.RaiseException, match="too delicious"):
            conn.commit()
    assert scalar(engine, "SELECT count(*) FROM fruit") == 0
    run_sql(engine, "INSERT INTO fruit VALUES ('apple')")
    assert scalar(engine, "SELECT count(*) FROM fruit") == 1


def test_constraint_trigger_drift_recreate_and_drop(engine: sa.Engine) -> None:
    make_fruit(engine)
    registry = make_registry(NoDurian)
    sync(engine, registry)
    # Disabled by hand: drift, and sync puts it back.
    run_sql(engine, 'ALTER TABLE fruit DISABLE TRIGGER "no durian"')
    assert [d.what for d in diff_database(engine, registry).differences] == [DiffKind.DRIFTED]
    sync(engine, registry)
    assert scalar(engine, "SELECT tgenabled::text FROM pg_trigger") == "O"
    assert diff_database(engine, registry).differences == ()

    # A plain trigger becoming a constraint trigger (and back) is a change.
    class Plain(NoDurian):
        is_constraint = False
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION public.no_durian() ${postamble}"

    plain = make_registry(Plain)
    assert [d.what for d in diff_database(engine, plain).differences] == [DiffKind.CHANGED]
    sync(engine, plain)
    assert constraint_rows(engine) == [("no durian", False, False, None, None)]
    sync(engine, registry)
    assert constraint_rows(engine) == [("no durian", False, True, True, True)]

    # No longer declared: DROP TRIGGER removes the trigger and its pg_constraint row.
    sync(engine, make_registry())
    assert constraint_rows(engine) == []
    assert scalar(engine, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'fruit'::regclass") == 0


def test_constraint_trigger_from_the_compat_import(engine: sa.Engine) -> None:
    """DBSamizdat's own shape (its sample app's FruitCensorConstraint), only the import line changed."""
    run_sql(engine, "CREATE TABLE fruit (name text)")

    class Raise(compat.SamizdatFunction):
        function_arguments_signature = ""
        sql_template = """
            ${preamble}
            RETURNS trigger AS $$$$
            BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END;
            $$$$ LANGUAGE plpgsql
            ${postamble}
        """

    class FruitCensorConstraint(compat.SamizdatTrigger):
        deps_on = {Raise}
        is_constraint = True
        on_table = "fruit"
        condition = "AFTER INSERT OR UPDATE"
        sql_template = """
            ${preamble}
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW
            WHEN (NEW.name ilike '%durian%')
            EXECUTE PROCEDURE "public"."Raise"('Too delicious.')
            ${postamble}
        """

    # DBSamizdat's preamble, exactly.
    assert FruitCensorConstraint.preamble() == (
        'CREATE CONSTRAINT TRIGGER "FruitCensorConstraint" AFTER INSERT OR UPDATE ON "public"."fruit"'
    )
    registry = make_registry(Raise, FruitCensorConstraint)
    sync(engine, registry)
    assert scalar(engine, "SELECT tgconstraint <> 0 FROM pg_trigger WHERE tgname = 'FruitCensorConstraint'")
    assert diff_database(engine, registry).differences == ()
    with engine.connect() as conn:
        conn.exec_driver_sql("INSERT INTO fruit VALUES ('Durian!')")
        with pytest.raises(sa.exc.DBAPIError, match="Too delicious"):
            conn.commit()


def test_adopt_an_unsigned_constraint_trigger(engine: sa.Engine) -> None:
    from alembic_samizdat.api import adopt

    make_fruit(engine)
    run_sql(engine, NoDurian.create())
    assert [d.what for d in diff_database(engine, make_registry(NoDurian)).differences] == [DiffKind.EXCESS_CODE]
    result = adopt(engine, make_registry(NoDurian))
    assert [k.name for k in result.adopted] == ["no durian"]
    assert diff_database(engine, make_registry(NoDurian)).differences == ()
    assert constraint_rows(engine) == [("no durian", False, True, True, True)]


def test_constraint_trigger_named_like_a_constraint_of_its_table(engine: sa.Engine) -> None:
    make_fruit(engine)
    run_sql(engine, 'ALTER TABLE fruit ADD CONSTRAINT "no durian" CHECK (true)')
    with pytest.raises(ExecutionError) as caught:
        sync(engine, make_registry(NoDurian))
    message = str(caught.value)
    assert "NoDurian" in message and "already has a constraint named 'no durian'" in message
    assert "trigger_name" in message
    assert trigger_names(engine) == set()


DBSAMIZDAT_MODULE = '''
from {package} import SamizdatFunction, SamizdatTrigger


class Raise(SamizdatFunction):
    sql_template = """
        ${{preamble}}
        RETURNS trigger AS $$$$ BEGIN RAISE EXCEPTION '%', TG_ARGV[0]; END; $$$$ LANGUAGE plpgsql
        ${{postamble}}
    """


class FruitCensorConstraint(SamizdatTrigger):
    deps_on = {{Raise}}
    is_constraint = True
    on_table = "fruit"
    condition = "AFTER INSERT OR UPDATE"
    sql_template = f"""
        ${{{{preamble}}}}
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW
        WHEN (NEW.name ilike '%durian%')
        EXECUTE PROCEDURE "{{Raise.schema}}"."Raise"('Too delicious.')
        ${{{{postamble}}}}
    """
'''


@needs_dbsamizdat
def test_constraint_trigger_same_as_dbsamizdat_and_adopted_in_place(
    engine: sa.Engine, make_database: Any, tmp_path: Path
) -> None:
    """DBSamizdat 0.11.2 and the compat import create the same constraint trigger; adoption keeps DBSamizdat's."""
    import subprocess

    from alembic_samizdat import SamizdatRegistry

    def triggerdef(eng: sa.Engine) -> list[tuple[Any, ...]]:
        return rows(
            eng,
            "SELECT t.oid::bigint, pg_get_triggerdef(t.oid), k.condeferred FROM pg_trigger t "
            "JOIN pg_constraint k ON k.oid = t.tgconstraint WHERE NOT t.tgisinternal",
        )

    theirs = tmp_path / "theirs.py"
    theirs.write_text(textwrap.dedent(DBSAMIZDAT_MODULE.format(package="dbsamizdat")))
    ours = tmp_path / "ours.py"
    ours.write_text(textwrap.dedent(DBSAMIZDAT_MODULE.format(package="alembic_samizdat.compat.dbsamizdat")))
    run_sql(engine, "CREATE TABLE fruit (name text)")
    url = sa.make_url(engine.url.render_as_string(hide_password=False)).set(drivername="postgresql")
    done = subprocess.run(
        [str(DBSAMIZDAT_CLI), "sync", url.render_as_string(hide_password=False), str(theirs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    other = sa.create_engine(make_database())
    try:
        run_sql(other, "CREATE TABLE fruit (name text)")
        registry = SamizdatRegistry()
        registry.load(str(ours))
        sync(other, registry)
        [(_, ours_def, ours_deferred)] = triggerdef(other)
    finally:
        other.dispose()
    [(oid, theirs_def, theirs_deferred)] = triggerdef(engine)
    assert ours_def == theirs_def and ours_deferred is theirs_deferred is True

    registry = SamizdatRegistry()
    registry.load(str(ours))
    result = sync(engine, registry, adopt="dbsamizdat")
    assert {a.verb for a in result.plan.actions} == {Verb.ADOPT}
    assert triggerdef(engine)[0][0] == oid
    assert diff_database(engine, registry).differences == ()


@needs_dbsamizdat
def test_native_class_with_trigger_name_adopts_the_dbsamizdat_trigger(engine: sa.Engine, tmp_path: Path) -> None:
    """A class renamed on the way over keeps DBSamizdat's trigger through trigger_name: adopted, not recreated."""
    import subprocess

    from alembic_samizdat import SamizdatRegistry

    theirs = tmp_path / "theirs_named.py"
    theirs.write_text(textwrap.dedent(DBSAMIZDAT_MODULE.format(package="dbsamizdat")))
    run_sql(engine, "CREATE TABLE fruit (name text)")
    url = sa.make_url(engine.url.render_as_string(hide_password=False)).set(drivername="postgresql")
    done = subprocess.run(
        [str(DBSAMIZDAT_CLI), "sync", url.render_as_string(hide_password=False), str(theirs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    oid = scalar(engine, "SELECT oid::bigint FROM pg_trigger WHERE NOT tgisinternal")
    source = textwrap.dedent(DBSAMIZDAT_MODULE.format(package="alembic_samizdat.compat.dbsamizdat"))
    source = source.replace(
        "class FruitCensorConstraint(SamizdatTrigger):",
        "from alembic_samizdat import SamizdatTrigger as Native\n\n\nclass NoDurianCheck(Native):\n"
        '    trigger_name = "FruitCensorConstraint"',
    )
    ours = tmp_path / "ours_named.py"
    ours.write_text(source)
    registry = SamizdatRegistry()
    registry.load(str(ours))
    result = sync(engine, registry, adopt="dbsamizdat")
    assert {a.verb for a in result.plan.actions} == {Verb.ADOPT}
    assert scalar(engine, "SELECT oid::bigint FROM pg_trigger WHERE NOT tgisinternal") == oid
    assert diff_database(engine, registry).differences == ()


@needs_dbsamizdat
def test_adopting_a_plain_trigger_declared_as_constraint_trigger_recreates_it(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """DBSamizdat's definition hash leaves is_constraint out; flipping it is still a change."""
    import subprocess

    from alembic_samizdat import SamizdatRegistry

    plain = DBSAMIZDAT_MODULE.replace("is_constraint = True", "is_constraint = False").replace(
        "DEFERRABLE INITIALLY DEFERRED", ""
    )
    theirs = tmp_path / "theirs_plain.py"
    theirs.write_text(textwrap.dedent(plain.format(package="dbsamizdat")))
    run_sql(engine, "CREATE TABLE fruit (name text)")
    url = sa.make_url(engine.url.render_as_string(hide_password=False)).set(drivername="postgresql")
    done = subprocess.run(
        [str(DBSAMIZDAT_CLI), "sync", url.render_as_string(hide_password=False), str(theirs)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert scalar(engine, "SELECT tgconstraint FROM pg_trigger WHERE NOT tgisinternal") == 0
    # Same template text but for the DEFERRABLE line: keep DBSamizdat's hash equal by declaring the same
    # template, and flip only is_constraint.
    ours = tmp_path / "ours_flipped.py"
    ours.write_text(
        textwrap.dedent(plain.replace("is_constraint = False", "is_constraint = True")).format(
            package="alembic_samizdat.compat.dbsamizdat"
        )
    )
    registry = SamizdatRegistry()
    registry.load(str(ours))
    result = sync(engine, registry, adopt="dbsamizdat")
    trigger_actions = {a.verb for a in result.plan.actions if a.key.namespace == "trigger"}
    assert trigger_actions == {Verb.DROP, Verb.CREATE}
    assert scalar(engine, "SELECT tgconstraint <> 0 FROM pg_trigger WHERE NOT tgisinternal") is True
    assert diff_database(engine, registry).differences == ()


@pytest.mark.parametrize(
    ("condition", "body", "says"),
    [
        ("BEFORE INSERT", "FOR EACH ROW EXECUTE FUNCTION public.no_durian()", "only AFTER"),
        ("AFTER INSERT", "FOR EACH STATEMENT EXECUTE FUNCTION public.no_durian()", "only FOR EACH ROW"),
    ],
)
def test_constraint_trigger_must_be_after_for_each_row(engine: sa.Engine, condition: str, body: str, says: str) -> None:
    make_fruit(engine)
    bad = type(
        "BadCheck",
        (SamizdatTrigger,),
        {
            "__module__": "dyn",
            "__qualname__": "BadCheck",
            "is_constraint": True,
            "on_table": "fruit",
            "condition": condition,
            "sql_template": f"${{preamble}} {body} ${{postamble}}",
        },
    )
    with pytest.raises(DeclarationError, match=says) as caught:
        sync(engine, make_registry(bad))
    assert "dyn.BadCheck" in str(caught.value) and "is_constraint" in str(caught.value)
    assert trigger_names(engine) == set()


# --- procedures ------------------------------------------------------------------------------------------------


class add_fruit(SamizdatProcedure):
    function_arguments_signature = "name text"
    grants = {"fruit_writer": {"EXECUTE"}}
    sql_template = """
        ${preamble}
        LANGUAGE sql AS $$ INSERT INTO public.fruit VALUES ($1) $$
        ${postamble}
    """


class add_fruits(SamizdatProcedure):
    """An overload of add_fruit: same name, another signature."""

    function_name = "add_fruit"
    function_arguments_signature = "name text, times integer"
    sql_template = """
        ${preamble}
        LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..$2 LOOP CALL public.add_fruit($1); END LOOP; END $$
        ${postamble}
    """


def procedures(engine: sa.Engine) -> list[tuple[Any, ...]]:
    return rows(
        engine,
        "SELECT p.oid::regprocedure::text, p.prokind::text FROM pg_proc p "
        "WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1",
    )


def test_procedure_create_call_grants_noop_change_drop(engine: sa.Engine, make_database: Any) -> None:
    run_sql(
        engine,
        "CREATE TABLE fruit (name text)",
        "DO $$ BEGIN CREATE ROLE fruit_writer; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
        "DO $$ BEGIN CREATE ROLE fruit_reader; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
    )
    registry = make_registry(add_fruit, add_fruits)
    sync(engine, registry)
    assert procedures(engine) == [("add_fruit(text)", "p"), ("add_fruit(text,integer)", "p")]
    run_sql(engine, "CALL add_fruit('apple')", "CALL add_fruit('pear', 3)")
    assert scalar(engine, "SELECT count(*) FROM fruit") == 4
    acl = scalar(engine, "SELECT proacl::text FROM pg_proc WHERE oid = 'add_fruit(text)'::regprocedure")
    assert "fruit_writer=X/" in acl
    comment = scalar(engine, "SELECT obj_description('add_fruit(text)'::regprocedure, 'pg_proc')")
    assert '"kind":"procedure"' in comment
    assert diff_database(engine, registry).differences == ()
    assert plan(engine, registry).actions == ()

    # A grant made by hand survives a recreate; the declared one is kept too.
    run_sql(engine, "GRANT EXECUTE ON PROCEDURE add_fruit(text) TO fruit_reader")
    changed = type(
        "add_fruit",
        (add_fruit,),
        {
            "__module__": __name__,
            "sql_template": (
                "${preamble} LANGUAGE sql AS $$ INSERT INTO public.fruit VALUES (upper($1)) $$ ${postamble}"
            ),
        },
    )
    done = sync(engine, make_registry(changed, add_fruits))
    assert (Verb.CREATE, "name text") in {(a.verb, a.key.extra) for a in done.plan.actions}
    run_sql(engine, "CALL add_fruit('fig')")
    assert scalar(engine, "SELECT count(*) FROM fruit WHERE name = 'FIG'") == 1
    acl = scalar(engine, "SELECT proacl::text FROM pg_proc WHERE oid = 'add_fruit(text)'::regprocedure")
    assert "fruit_writer=X/" in acl and "fruit_reader=X/" in acl

    # Replaced by hand: drift, put back by sync.
    run_sql(engine, "CREATE OR REPLACE PROCEDURE add_fruit(name text) LANGUAGE sql AS $$ SELECT 1 $$")
    drifted = diff_database(engine, make_registry(changed, add_fruits)).differences
    assert [(d.what, d.key.extra) for d in drifted] == [(DiffKind.DRIFTED, "name text")]
    sync(engine, make_registry(changed, add_fruits))
    assert "upper" in str(scalar(engine, "SELECT pg_get_functiondef('add_fruit(text)'::regprocedure)"))

    # Grants alone change: GRANT … ON PROCEDURE, nothing recreated.
    granted = type("add_fruits", (add_fruits,), {"__module__": __name__, "grants": {"fruit_reader": {"EXECUTE"}}})
    done = sync(engine, make_registry(changed, granted))
    assert [(a.verb, a.key.extra) for a in done.plan.actions] == [(Verb.GRANT, "name text, times integer")]
    assert "GRANT EXECUTE ON PROCEDURE" in done.plan.actions[0].sql
    acl = scalar(engine, "SELECT proacl::text FROM pg_proc WHERE oid = 'add_fruit(text, integer)'::regprocedure")
    assert "fruit_reader=X/" in acl
    assert diff_database(engine, make_registry(changed, granted)).differences == ()

    # No longer declared: dropped with DROP PROCEDURE.
    sync(engine, make_registry(changed))
    assert procedures(engine) == [("add_fruit(text)", "p")]
    sync(engine, make_registry())
    assert procedures(engine) == []


def test_procedure_signature_mismatch_names_the_class(engine: sa.Engine) -> None:
    class wrong(SamizdatProcedure):
        function_arguments_signature = "a text"
        function_arguments = "a integer"
        sql_template = "${preamble} LANGUAGE sql AS $$ SELECT 1 $$ ${postamble}"

    with pytest.raises(
        FunctionSignatureMismatchError, match=r"wrong: PostgreSQL created procedure .*\(IN a integer\).*says \(a text\)"
    ):
        sync(engine, make_registry(wrong))
    assert procedures(engine) == []


def test_function_and_procedure_share_a_name_space(engine: sa.Engine) -> None:
    class twin(SamizdatFunction):
        function_arguments_signature = "integer"
        sql_template = "${preamble} RETURNS integer LANGUAGE sql AS $$ SELECT $1 $$ ${postamble}"

    class twin_proc(SamizdatProcedure):
        function_name = "twin"
        function_arguments_signature = "integer"
        sql_template = "${preamble} LANGUAGE sql AS $$ SELECT $1 $$ ${postamble}"

    with pytest.raises(DuplicateIdentityError, match="twin_proc"):
        sync(engine, make_registry(twin, twin_proc))

    # A function turned into a procedure of the same identity is a change: DROP FUNCTION, CREATE PROCEDURE.
    sync(engine, make_registry(twin))
    sync(engine, make_registry(twin_proc))
    assert procedures(engine) == [("twin(integer)", "p")]
    sync(engine, make_registry(twin))
    assert procedures(engine) == [("twin(integer)", "f")]


def test_adopt_an_unsigned_procedure(engine: sa.Engine) -> None:
    from alembic_samizdat.api import adopt

    run_sql(engine, "CREATE TABLE fruit (name text)")
    run_sql(engine, add_fruits.create().replace("CALL public.add_fruit($1)", "INSERT INTO public.fruit VALUES ($1)"))

    class add_many(SamizdatProcedure):
        function_name = "add_fruit"
        function_arguments_signature = "name text, times integer"
        sql_template = """
        ${preamble}
        LANGUAGE plpgsql AS $$ BEGIN FOR i IN 1..$2 LOOP INSERT INTO public.fruit VALUES ($1); END LOOP; END $$
        ${postamble}
    """

    registry = make_registry(add_many)
    result = adopt(engine, registry)
    assert [k.extra for k in result.adopted] == ["name text, times integer"]
    assert diff_database(engine, registry).differences == ()


class count_fruit(SamizdatProcedure):
    """OUT arguments (PostgreSQL 14+): the signature lists the others, as for a function."""

    function_arguments_signature = "pattern text, INOUT total integer"
    function_arguments = "pattern text, INOUT total integer, OUT matched integer"
    sql_template = """
        ${preamble}
        LANGUAGE plpgsql AS $$
        BEGIN
            SELECT count(*) INTO matched FROM public.fruit WHERE name LIKE pattern;
            total := total + matched;
        END $$
        ${postamble}
    """


def test_procedure_with_out_arguments_synced_and_adopted(engine: sa.Engine, make_database: Any) -> None:
    from alembic_samizdat.api import adopt

    run_sql(engine, "CREATE TABLE fruit (name text)", "INSERT INTO fruit VALUES ('apple'), ('apricot'), ('fig')")
    registry = make_registry(count_fruit)
    sync(engine, registry)
    assert rows(engine, "CALL count_fruit('ap%', 10, NULL)") == [(12, 2)]
    assert diff_database(engine, registry).differences == ()

    # The same procedure made by hand is matched by its signature and adopted.
    other = sa.create_engine(make_database())
    try:
        run_sql(other, "CREATE TABLE fruit (name text)", count_fruit.create())
        assert [k.name for k in adopt(other, registry).adopted] == ["count_fruit"]
        assert diff_database(other, registry).differences == ()
    finally:
        other.dispose()


# --- Alembic ---------------------------------------------------------------------------------------------------

ALEMBIC_MODELS = '''
from sqlalchemy import Column, MetaData, Table, Text
from alembic_samizdat import SamizdatFunction, SamizdatProcedure, SamizdatRegistry, SamizdatTrigger

metadata = MetaData()
registry = SamizdatRegistry(metadata)
fruit = Table("fruit", metadata, Column("name", Text))


@registry.register
class add_fruit(SamizdatProcedure):
    function_arguments_signature = "name text"
    sql_template = """
        ${preamble}
        LANGUAGE sql AS $$ INSERT INTO public.fruit VALUES (BODY) $$
        ${postamble}
    """


@registry.register
class no_durian(SamizdatFunction):
    sql_template = """
        ${preamble}
        RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF NEW.name = 'durian' THEN RAISE EXCEPTION 'too delicious'; END IF; RETURN NULL; END $$
        ${postamble}
    """


@registry.register
class NoDurian(SamizdatTrigger):
    deps_on = {no_durian}
    is_constraint = True
    trigger_name = "no durian"
    on_table = "fruit"
    condition = "AFTER INSERT"
    sql_template = """
        ${preamble}
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.no_durian()
        ${postamble}
    """
'''


def test_alembic_autogenerate_upgrade_downgrade(
    tmp_path: Path, db_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = "triggers_procedures_models"
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = alembic_project(tmp_path, module)

    def write(body: str) -> None:
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(ALEMBIC_MODELS).replace("BODY", body))
        sys.modules.pop(module, None)

    def run(cmd: Any, *args: Any, **kwargs: Any) -> Any:
        sys.modules.pop(module, None)
        try:
            return cmd(cfg, *args, **kwargs)
        finally:
            sys.modules.pop(module, None)

    try:
        write("$1")
        first = Path(run(command.revision, message="one", autogenerate=True).path).read_text()
        assert "'procedure'" in first and "CREATE PROCEDURE" in first and "CREATE CONSTRAINT TRIGGER" in first
        buffer = io.StringIO()
        cfg.output_buffer = buffer
        run(command.upgrade, "head", sql=True)
        cfg.output_buffer = None
        sql = buffer.getvalue()
        assert "CREATE PROCEDURE" in sql and "COMMENT ON PROCEDURE" in sql and "CREATE CONSTRAINT TRIGGER" in sql

        run(command.upgrade, "head")
        run_sql(engine, "CALL add_fruit('apple')")
        assert scalar(engine, "SELECT tgconstraint <> 0 FROM pg_trigger WHERE tgname = 'no durian'")
        run(command.check)

        write("upper($1)")
        second = Path(run(command.revision, message="two", autogenerate=True).path).read_text()
        assert "upper($1)" in second
        run(command.upgrade, "head")
        run_sql(engine, "CALL add_fruit('pear')")
        assert scalar(engine, "SELECT count(*) FROM fruit WHERE name = 'PEAR'") == 1
        run(command.check)

        # Downgrade restores the procedure as it was, signed, in sync with the first revision's code.
        run(command.downgrade, "-1")
        run_sql(engine, "CALL add_fruit('fig')")
        assert scalar(engine, "SELECT count(*) FROM fruit WHERE name = 'fig'") == 1
        write("$1")
        sys.modules.pop(module, None)
        models = __import__(module)
        assert diff_database(engine, models.registry).differences == ()
        run(command.downgrade, "base")
        assert procedures(engine) == []
        assert trigger_names(engine) == set()
    finally:
        sys.modules.pop(module, None)


CLI_MODULE = """
from alembic_samizdat import SamizdatProcedure, SamizdatTrigger


class add_fruit(SamizdatProcedure):
    function_arguments_signature = "name text"
    sql_template = "${preamble} LANGUAGE sql AS $$ INSERT INTO public.fruit VALUES ($1) $$ ${postamble}"


class Stamp(SamizdatTrigger):
    trigger_name = "stamp"
    on_table = "fruit"
    condition = "BEFORE INSERT"
    sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION public.touch() ${postamble}"


class CheckFruit(SamizdatTrigger):
    is_constraint = True
    trigger_name = "check"
    on_table = "fruit"
    condition = "AFTER INSERT"
    sql_template = "${preamble} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION public.touch() ${postamble}"
"""


def test_cli_diff_sync_and_printdot(
    engine: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic_samizdat.cli import main

    run_sql(
        engine,
        "CREATE TABLE fruit (name text)",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
    )
    module = tmp_path / "cli_triggers_procedures.py"
    module.write_text(CLI_MODULE)
    assert main(["diff", db_url, str(module)]) == 102
    out = capsys.readouterr().out
    assert 'procedure "public"."add_fruit"(name text)' in out
    assert 'trigger "stamp" ON "public"."fruit"' in out and 'trigger "check" ON "public"."fruit"' in out
    assert main(["sync", "-q", db_url, str(module)]) == 0
    assert main(["diff", db_url, str(module)]) == 0
    capsys.readouterr()
    assert main(["printdot", str(module)]) == 0
    dot = capsys.readouterr().out
    assert 'label="public.add_fruit(name text)", shape=hexagon' in dot
    assert 'label="stamp\\\\non public.fruit"' in dot and 'label="check\\\\non public.fruit"' in dot

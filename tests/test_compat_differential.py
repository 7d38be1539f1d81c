"""Differential tests: the DBSamizdat compatibility import against DBSamizdat 0.11.2 itself.

The same modules are synced once by DBSamizdat (its own CLI, in its own venv: $SAMIZDAT_TEST_DBSAMIZDAT) and
once by us (the module text with only its ``dbsamizdat`` import lines changed, made at test time) into two
databases; PostgreSQL's own renderings of what each holds must be equal, and so must what the objects do.
Then ``samizdat sync --adopt dbsamizdat`` takes DBSamizdat's database over: afterwards both databases are equal
in every catalog detail (signatures included) and ``samizdat diff`` finds nothing.

Material: DBSamizdat's own sample app, read from the installed wheel (``dbsamizdat/tests/fruit_and_pets``), and
a package of our writing that uses what real modules use (``$BODY$``, ``$1``, ``cls.name``, ``str(cls)``,
metaclass properties, a star import of part of a package, OUT parameters, overloads, SECURITY DEFINER,
``RETURNS TABLE``, an index named in a template, a constraint trigger, refresh triggers).
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import catalog_snapshot

DBSAMIZDAT = os.environ.get("SAMIZDAT_TEST_DBSAMIZDAT")

pytestmark = pytest.mark.skipif(
    not DBSAMIZDAT,
    reason="SAMIZDAT_TEST_DBSAMIZDAT is not set: it names the `dbsamizdat` CLI of a venv holding DBSamizdat "
    "0.11.2 (.ci/run makes one); without it the differential tests cannot run",
)

COMPAT = "alembic_samizdat.compat.dbsamizdat"
#: Statements go to the server as written ('%' is PostgreSQL's, not a parameter).
VERBATIM = {"no_parameters": True}
_IMPORT = re.compile(r"^(\s*)(from|import)\s+dbsamizdat\b", re.MULTILINE)


def ported(source: str) -> str:
    """``source`` with its ``dbsamizdat`` imports pointed at the compatibility package, and nothing else changed."""
    out = _IMPORT.sub(lambda m: f"{m.group(1)}{m.group(2)} {COMPAT}", source)
    changed = [
        line
        for line in difflib.ndiff(source.splitlines(), out.splitlines())
        if line.startswith(("- ", "+ ")) and not re.match(r"[-+] \s*(from|import) ", line)
    ]
    assert not changed, changed
    return out


def dbsamizdat_package() -> Path:
    """Where the DBSamizdat venv installed the ``dbsamizdat`` package."""
    assert DBSAMIZDAT is not None
    python = Path(DBSAMIZDAT).parent / "python"
    done = subprocess.run(
        [str(python), "-c", "import dbsamizdat, pathlib; print(pathlib.Path(dbsamizdat.__file__).parent)"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return Path(done.stdout.strip())


def libpq_url(engine: sa.Engine) -> str:
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def run_dbsamizdat(engine: sa.Engine, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert DBSAMIZDAT is not None
    return subprocess.run(
        [DBSAMIZDAT, args[0], libpq_url(engine), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def run_ours(engine: sa.Engine, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic_samizdat.cli", args[0], *args[1:-1], libpq_url(engine), args[-1]],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


# Objects each tool generates for refresh_triggers, under names of its own: compared by what they do.
_GENERATED_FUNCTION = r"(samizdat_refresh_[0-9a-f]+|.*_refresh)"
_GENERATED_TRIGGER = r"(samizdat_r[0-9]+_[0-9a-f]+|t[0-9]{5}_[0-9]+_autorefresh)"
_USER_SCHEMA = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


def declared_snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """PostgreSQL's renderings of the declared objects (generated refresh machinery and comments aside)."""
    queries = {
        "relations": f"""
            SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated, pg_get_viewdef(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMA} AND c.relkind IN ('v', 'm') ORDER BY 1, 2""",
        "indexes": f"""
            SELECT n.nspname, c.relname, pg_get_indexdef(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {_USER_SCHEMA} AND c.relkind = 'i' ORDER BY 1, 2""",
        "functions": f"""
            SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), pg_get_functiondef(p.oid)
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE {_USER_SCHEMA} AND p.proname !~ '^{_GENERATED_FUNCTION}$' ORDER BY 1, 2, 3""",
        "triggers": f"""
            SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgconstraint <> 0
            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND t.tgname !~ '^{_GENERATED_TRIGGER}$' ORDER BY 1, 2, 3""",
        "refresh_trigger_tables": f"""
            SELECT DISTINCT n.nspname, c.relname, t.tgtype
            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal AND t.tgname ~ '^{_GENERATED_TRIGGER}$' ORDER BY 1, 2""",
    }
    with engine.connect() as conn:
        return {
            name: [tuple(r) for r in conn.exec_driver_sql(q, execution_options=VERBATIM)] for name, q in queries.items()
        }


def outcome(engine: sa.Engine, statement: str) -> Any:
    """What running ``statement`` in its own transaction gives: its rows, or the error's SQLSTATE and message."""
    try:
        with engine.begin() as conn:
            result = conn.exec_driver_sql(statement, execution_options=VERBATIM)
            return [tuple(r) for r in result] if result.returns_rows else result.rowcount
    except sa.exc.DBAPIError as exc:
        diag = getattr(exc.orig, "diag", None)
        return ("error", getattr(exc.orig, "sqlstate", None), getattr(diag, "message_primary", None))


@dataclass
class Case:
    """One body of material: its setup SQL and files, the module argument each tool syncs, what to run."""

    setup_sql: str
    files: dict[str, str]
    #: The module as given on the command line (a file path or a dotted path, relative to the directory).
    module: str
    #: Statements whose outcomes must be equal in both databases, run in order after the sync.
    probes: Sequence[str]
    #: Objects the sync must have created (relation or function names), checked to exist.
    expected: Sequence[str]
    #: Outcomes known in advance, checked in our database before the probes run.
    known: dict[str, Any] = field(default_factory=dict)


def differential(make_engine: Callable[[], sa.Engine], tmp_path: Path, case: Case) -> set[str]:
    """Run ``case`` through both tools and compare; returns the names of the relations and functions made."""
    theirs, ours = make_engine(), make_engine()
    for engine in (theirs, ours):
        with engine.begin() as conn:
            conn.exec_driver_sql(case.setup_sql, execution_options={"no_parameters": True})
    their_dir, our_dir = tmp_path / "dbsamizdat", tmp_path / "ours"
    for directory, port in ((their_dir, False), (our_dir, True)):
        for name, text in case.files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(ported(text) if port else text)

    done = run_dbsamizdat(theirs, their_dir, "sync", case.module)
    assert done.returncode == 0, done.stdout + done.stderr
    done = run_ours(ours, our_dir, "sync", case.module)
    assert done.returncode == 0, done.stdout + done.stderr

    theirs_now, ours_now = declared_snapshot(theirs), declared_snapshot(ours)
    assert ours_now == theirs_now
    names = {row[1] for row in ours_now["relations"]} | {row[1] for row in ours_now["functions"]}
    assert set(case.expected) <= names, set(case.expected) - names
    for statement, expected in case.known.items():
        assert outcome(ours, statement) == expected, statement
    for probe in case.probes:
        assert outcome(ours, probe) == outcome(theirs, probe), probe

    # Before adoption, DBSamizdat's objects are not ours: diff says whose they are and how to take them over.
    done = run_ours(theirs, our_dir, "diff", case.module)
    assert done.returncode == 102, done.stdout + done.stderr
    assert "sync --adopt dbsamizdat" in done.stdout + done.stderr

    done = run_ours(theirs, our_dir, "sync", "--adopt", "dbsamizdat", case.module)
    assert done.returncode == 0, done.stdout + done.stderr
    assert catalog_snapshot(theirs) == catalog_snapshot(ours)
    done = run_ours(theirs, our_dir, "diff", case.module)
    assert done.returncode == 0, done.stdout + done.stderr
    for probe in case.probes:
        assert outcome(ours, probe) == outcome(theirs, probe), probe
    theirs.dispose()
    ours.dispose()
    return names


@pytest.fixture
def make_engine(make_database: Callable[[], str]) -> Callable[[], sa.Engine]:
    return lambda: sa.create_engine(make_database())


def test_dbsamizdat_sample_app(make_engine: Callable[[], sa.Engine], tmp_path: Path) -> None:
    """DBSamizdat's own sample app, as its wheel ships it, synced by file path."""
    package = dbsamizdat_package() / "tests"
    files = {f"fruit_and_pets/{p.name}": p.read_text() for p in sorted((package / "fruit_and_pets").glob("*.py"))}
    case = Case(
        setup_sql=(package / "fruit_and_pets.sql").read_text(),
        files=files,
        module="fruit_and_pets/test_samizdats.py",
        probes=[
            'SELECT * FROM "PetUppercase" ORDER BY id',
            'SELECT count(*) FROM "Treat"',
            """SELECT "DealFruitFun"('Ada') LIKE 'Hey Ada! Have a piece of %'""",
            'SELECT count(*) FROM "DealFruitView"',
            """INSERT INTO "Fruit" VALUES (5, 'rock')""",  # FruitCensor refuses it
            """INSERT INTO "Fruit" VALUES (6, 'durian')""",  # FruitCensorConstraint refuses it at commit
            """INSERT INTO "Fruit" VALUES (7, 'lychee')""",
            """INSERT INTO "Pet" VALUES (5, 'axolotl')""",  # refreshes Treat through the refresh triggers
            'SELECT count(*) FROM "Treat"',
            'SELECT * FROM "Fruit" ORDER BY id',
        ],
        expected=["DealFruitView", "DealFruitFun", "Treat", "PetUppercase", "Raise"],
        known={
            'SELECT count(*) FROM "Treat"': [(4,)],
            """INSERT INTO "Fruit" VALUES (5, 'rock')""": ("error", "P0001", "That is not a fruit."),
            """INSERT INTO "Fruit" VALUES (6, 'durian')""": ("error", "P0001", "Too delicious."),
            "SELECT tgname FROM pg_trigger WHERE tgconstraint <> 0": [("FruitCensorConstraint",)],
        },
    )
    differential(make_engine, tmp_path, case)


OUR_SETUP = """
CREATE SCHEMA reports;
CREATE TABLE item (id integer PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
CREATE TABLE item_log (item_id integer, op text);
INSERT INTO item VALUES (1, 'tea', 3.50), (2, 'cake', 4.25), (3, 'bread', 2.10);
"""

BASE = '''
from dbsamizdat import SamizdatView, SamizdatFunction


class Items(SamizdatView):
    deps_on_unmanaged = {"item"}
    sql_template = """
        ${preamble}
        SELECT id, name, price FROM item
        ${postamble}
    """


class price_with_tax(SamizdatFunction):
    function_arguments_signature = "numeric"
    sql_template = """
        ${preamble}
        RETURNS numeric AS $BODY$
        BEGIN
            RETURN round($1 * 1.21, 2);
        END;
        $BODY$ LANGUAGE plpgsql IMMUTABLE
        ${postamble}
    """


class price_with_tax_rate(SamizdatFunction):
    function_name = "price_with_tax"
    function_arguments_signature = "numeric, numeric"
    sql_template = """
        ${preamble}
        RETURNS numeric AS $$$$ SELECT round($$1 * (1 + $$2), 2) $$$$ LANGUAGE sql IMMUTABLE
        ${postamble}
    """


class split_price(SamizdatFunction):
    function_arguments_signature = "p numeric"
    function_arguments = "p numeric, OUT net numeric, OUT tax numeric"
    sql_template = """
        ${preamble}
        AS $BODY$ SELECT p, round(p * 0.21, 2) $BODY$ LANGUAGE sql IMMUTABLE
        ${postamble}
    """


class Unused(SamizdatView):
    sql_template = """
        ${preamble}
        SELECT 'never loaded: nothing imports it and nothing depends on it' AS note
        ${postamble}
    """
'''

REPORTS = '''
from dbsamizdat import SamizdatMaterializedView, SamizdatFunction, SamizdatTrigger
from dbsamizdat.samizdat import SamizdatMeta

from .base import Items, price_with_tax

__all__ = ["top_items", "ItemAudit", "NoFreeItems"]


class PricedMeta(SamizdatMeta):
    @property
    def deps_on(cls):
        return {Items, price_with_tax}

    @property
    def sql_template(cls):
        return f"""
            ${{preamble}}
            SELECT id, "{price_with_tax.name}"(price) AS gross, '{cls}' AS src, '{price_with_tax}' AS fn
            FROM {Items.db_object_identity}
            ${{postamble}}
            CREATE UNIQUE INDEX {cls.name.lower()}_by_id ON ${{samizdatname}} (id)
        """


class Priced(SamizdatMaterializedView, metaclass=PricedMeta):
    refresh_concurrently = True
    refresh_triggers = {"item"}


class top_items(SamizdatFunction):
    schema = "reports"
    deps_on = {Priced}
    function_arguments_signature = "n integer"
    sql_template = f"""
        ${{preamble}}
        RETURNS TABLE (item integer, gross numeric) AS $BODY$
            SELECT id, gross FROM {Priced.db_object_identity} ORDER BY gross DESC, id LIMIT n
        $BODY$ LANGUAGE sql STABLE SECURITY DEFINER
        ${{postamble}}
    """


class audit(SamizdatFunction):
    schema = "reports"
    sql_template = """
        ${preamble}
        RETURNS trigger AS $BODY$
        BEGIN
            INSERT INTO public.item_log VALUES (NEW.id, TG_OP);
            RETURN NEW;
        END;
        $BODY$ LANGUAGE plpgsql
        ${postamble}
    """


class ItemAudit(SamizdatTrigger):
    on_table = "item"
    condition = "AFTER INSERT OR UPDATE"
    deps_on = {audit}
    sql_template = f"""
        ${{preamble}}
        FOR EACH ROW EXECUTE PROCEDURE {audit.creation_identity}
        ${{postamble}}
    """


class no_free_items(SamizdatFunction):
    sql_template = """
        ${preamble}
        RETURNS trigger AS $BODY$
        BEGIN
            IF NEW.price <= 0 THEN RAISE EXCEPTION 'item % is free', NEW.id; END IF;
            RETURN NULL;
        END;
        $BODY$ LANGUAGE plpgsql
        ${postamble}
    """


class NoFreeItems(SamizdatTrigger):
    on_table = "public.item"
    condition = "AFTER INSERT OR UPDATE"
    is_constraint = True
    deps_on = {no_free_items}
    sql_template = f"""
        ${{preamble}}
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE PROCEDURE "{no_free_items.name}"()
        ${{postamble}}
    """
'''

ENTRY = '''
from dbsamizdat import SamizdatView, SamizdatMaterializedView
from dbsamizdat.util import nodenamefmt

from .base import price_with_tax_rate, split_price
from .reports import *  # noqa: F403 - part of the package, as real entry modules do


class Names(SamizdatView):
    deps_on = {top_items, split_price}
    sql_template = f"""
        ${{preamble}}
        SELECT '{top_items}' AS fn, '{ItemAudit}' AS trg, '{split_price}' AS out_fn,
               '{nodenamefmt(("reports", "x"))}' AS node, {top_items.db_object_identity.count('"')} AS quotes,
               $$$$dollar $$1$$$$ AS quoted, 'costs $$5, $_ and $1' AS passthrough
        ${{postamble}}
    """


class Gross(SamizdatMaterializedView):
    deps_on = {price_with_tax_rate, split_price}
    deps_on_unmanaged = {"item"}
    sql_template = f"""
        ${{preamble}}
        SELECT id, "{price_with_tax_rate.name}"(price, 0.1) AS with_rate, (public.split_price(price)).*
        FROM item
        ${{postamble}};
        CREATE INDEX gross_by_rate ON ${{samizdatname}} (with_rate)
    """
'''


def test_modules_using_what_real_modules_use(make_engine: Callable[[], sa.Engine], tmp_path: Path) -> None:
    """Our own package, synced by dotted path from its entry module, which star-imports part of the package:
    both tools must follow deps_on to the classes it did not import."""
    case = Case(
        setup_sql=OUR_SETUP,
        files={
            "shopcompat/__init__.py": "",
            "shopcompat/base.py": BASE,
            "shopcompat/reports.py": REPORTS,
            "shopcompat/entry.py": ENTRY,
        },
        module="shopcompat.entry",
        probes=[
            'SELECT * FROM "Priced" ORDER BY id',
            "SELECT * FROM reports.top_items(2)",
            "SELECT price_with_tax(10.00), price_with_tax(10.00, 0.1), (split_price(100)).*",
            'SELECT * FROM "Names"',
            'SELECT * FROM "Gross" ORDER BY id',
            "INSERT INTO item VALUES (4, 'jam', 5.00)",  # audited, and Priced refreshed
            "INSERT INTO item VALUES (5, 'air', 0)",  # refused at commit by the constraint trigger
            "UPDATE item SET price = price + 1 WHERE id = 1",
            'SELECT * FROM "Priced" ORDER BY id',
            "SELECT * FROM item_log ORDER BY 1, 2",
            "SELECT * FROM reports.top_items(10)",
        ],
        expected=[
            "Items",
            "Priced",
            "top_items",
            "audit",
            "price_with_tax",
            "split_price",
            "Names",
            "Gross",
            "no_free_items",
        ],
    )
    names = differential(make_engine, tmp_path, case)
    assert "Unused" not in names  # in the package, but neither imported by the entry module nor depended on


#: DBSamizdat's Django integration has no counterpart (see docs/migrating.md).
DJANGO_ONLY = {"default_app_config"}

_LIST_NAMES = """
import importlib, json, sys
out = {}
for sub in sys.argv[1:]:
    module = importlib.import_module("dbsamizdat" + sub)
    out[sub] = sorted(
        name for name in dir(module)
        if not name.startswith("_")
        and (str(getattr(getattr(module, name), "__module__", "") or "").startswith("dbsamizdat")
             or isinstance(getattr(module, name), (int, str, set, frozenset)))
    )
print(json.dumps(out))
"""


def test_every_name_dbsamizdat_modules_define_exists_in_the_compat_package() -> None:
    import importlib
    import json

    assert DBSAMIZDAT is not None
    submodules = ["", ".samizdat", ".util", ".const", ".exceptions", ".api"]
    done = subprocess.run(
        [str(Path(DBSAMIZDAT).parent / "python"), "-c", _LIST_NAMES, *submodules],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    theirs: dict[str, list[str]] = json.loads(done.stdout)
    assert theirs[""] and "SamizdatFunctionMeta" in theirs[".samizdat"]
    missing = {
        sub: [n for n in names if n not in DJANGO_ONLY and not hasattr(importlib.import_module(COMPAT + sub), n)]
        for sub, names in theirs.items()
    }
    assert missing == {sub: [] for sub in theirs}

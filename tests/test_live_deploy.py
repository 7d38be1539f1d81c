"""Deploying under live traffic: readers of managed objects never get an error while a sync or an upgrade
replaces them, and a change PostgreSQL can make in place leaves everything above it untouched."""

from __future__ import annotations

import importlib
import io
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from conftest import libpq_dsn
from helpers import (
    alembic_project,
    function,
    make_registry,
    relation_oid,
    rows,
    run_sql,
    scalar,
    trigger,
    view,
    view_definition,
)

from alembic_samizdat import plan, sync
from alembic_samizdat.errors import ExecutionError, LockTimeoutError, UnmanagedDependentError
from alembic_samizdat.model import Samizdat
from alembic_samizdat.planner import Verb

DEPTH = 20
READERS = 8

ROOT_SELECT = "SELECT g AS id, g % 7 AS k FROM generate_series(1, 200) AS g WHERE g > {floor}"


def chain(root_select: str, depth: int = DEPTH, prefix: str = "v") -> list[type[Samizdat]]:
    """A root view and ``depth`` views stacked on it, each reading the one below."""
    classes = [view(f"{prefix}0", root_select)]
    for level in range(1, depth + 1):
        below = classes[-1]
        classes.append(view(f"{prefix}{level}", f"SELECT * FROM {prefix}{level - 1}", deps_on={below}))
    return classes


@dataclass
class Readers:
    """Threads that read one query in a loop on their own connections, counting reads and errors."""

    dsn: str
    query: str
    count: int = READERS
    reads: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self, index: int, started: threading.Barrier) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            first = True
            while not self._stop.is_set():
                try:
                    conn.execute(self.query).fetchall()
                    self.reads[index] += 1
                except psycopg.Error as exc:
                    with self._lock:
                        self.errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                if first:
                    first = False
                    started.wait()

    @contextmanager
    def running(self) -> Iterator[Readers]:
        """Readers loop while the block runs; every one has read at least once before it starts."""
        self.reads = [0] * self.count
        started = threading.Barrier(self.count + 1)
        threads = [threading.Thread(target=self._loop, args=(i, started), daemon=True) for i in range(self.count)]
        for thread in threads:
            thread.start()
        started.wait(timeout=60)
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(timeout=60)


def oids(engine: sa.Engine, names: list[str]) -> dict[str, int | None]:
    return {name: relation_oid(engine, "public", name) for name in names}


# --- the sync (API) --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_root_changed_columns_kept_is_replaced_in_place_and_readers_see_no_error(
    engine: sa.Engine, db_url: str, discipline: str
) -> None:
    sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=0))))
    names = [f"v{i}" for i in range(DEPTH + 1)]
    before = oids(engine, names)
    readers = Readers(libpq_dsn(db_url), f"SELECT count(*) FROM v{DEPTH}")
    with readers.running():
        result = sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=100))), discipline=discipline)
    assert readers.errors == []
    assert all(readers.reads)
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.REPLACE, "v0")]
    assert "replaced in place" in result.applied[0].describe()
    # Nothing above the root was touched: same objects, and they read the new root.
    assert oids(engine, names) == before
    assert scalar(engine, f"SELECT count(*) FROM v{DEPTH}") == 100
    # Signed in the same transaction as the replacement: in sync, and not taken for a change made by hand.
    again = sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=100))))
    assert again.plan.actions == ()
    assert again.differences == ()


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_root_losing_a_column_rebuilds_the_stack_and_readers_see_no_error(
    engine: sa.Engine, db_url: str, discipline: str
) -> None:
    sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=0))))
    readers = Readers(libpq_dsn(db_url), f"SELECT count(*) FROM v{DEPTH}")
    with readers.running():
        # PostgreSQL refuses to drop a view's column in place: the whole stack is dropped and recreated, as one
        # unit under either discipline.
        result = sync(
            engine,
            make_registry(*chain("SELECT g AS id FROM generate_series(1, 200) AS g WHERE g > 50")),
            discipline=discipline,
        )
    assert readers.errors == []
    assert all(readers.reads)
    verbs = [(a.verb, a.key.name) for a in result.applied]
    assert verbs.count((Verb.CREATE, "v0")) == 1 and (Verb.DROP, f"v{DEPTH}") in verbs
    assert (Verb.REPLACE, "v0") not in verbs
    root = next(a for a in result.applied if a.verb is Verb.CREATE and a.key.name == "v0")
    assert "refused to replace it in place" in root.reason and "cannot drop columns from view" in root.reason
    assert scalar(engine, f"SELECT count(*) FROM v{DEPTH}") == 150
    assert [
        r[0]
        for r in rows(engine, f"SELECT attname FROM pg_attribute WHERE attrelid = 'v{DEPTH}'::regclass AND attnum > 0")
    ] == ["id"]
    assert not sync(engine, make_registry(*chain("SELECT g AS id FROM generate_series(1, 200) AS g WHERE g > 50"))).plan


def test_a_rebuilt_stack_is_one_checkpoint_unit(engine: sa.Engine) -> None:
    # The unit of a rebuild is the whole stack: under checkpoint its drops and creates commit together.
    sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=0), depth=3)))
    seen: list[tuple[str, str]] = []
    sync(
        engine,
        make_registry(*chain("SELECT g AS id FROM generate_series(1, 9) AS g", depth=3)),
        on_action=lambda action: seen.append((action.verb.value, action.key.name)),
    )
    # on_action reports a unit's actions once it committed: all of them at once, the drops first.
    assert seen == [
        ("drop", "v3"),
        ("drop", "v2"),
        ("drop", "v1"),
        ("drop", "v0"),
        ("create", "v0"),
        ("create", "v1"),
        ("create", "v2"),
        ("create", "v3"),
    ]


def test_a_failure_in_the_middle_of_a_checkpoint_run_leaves_whole_units(engine: sa.Engine) -> None:
    g_old = chain("SELECT 1 AS id, 'x' AS k", depth=3, prefix="g")
    b_old = chain("SELECT 1 AS id, 'x' AS k", depth=3, prefix="b")
    sync(engine, make_registry(*g_old, *b_old))
    b_names = [f"b{i}" for i in range(4)]
    b_before = oids(engine, b_names)
    # Both roots lose a column, so each stack is rebuilt as one unit (g's runs first, dependents-first drop
    # order); the new b3 is broken, so b's unit fails whole.
    g_new = chain("SELECT 2 AS id", depth=3, prefix="g")
    b_new = chain("SELECT 2 AS id", depth=2, prefix="b")
    b3 = view("b3", "SELECT * FROM b2, no_such_table", deps_on={b_new[-1]})
    done: list[str] = []
    with pytest.raises(ExecutionError) as caught:
        sync(engine, make_registry(*g_new, *b_new, b3), on_action=lambda a: done.append(a.key.name))
    assert "no_such_table" in str(caught.value)
    assert "were rolled back" in str(caught.value)
    assert sorted(set(done)) == ["g0", "g1", "g2", "g3"]
    assert scalar(engine, "SELECT id FROM g3") == 2
    # Every object of the failed unit is there, as it was: none missing, none half-replaced.
    assert oids(engine, b_names) == b_before
    assert scalar(engine, "SELECT k FROM b3") == "x"


def test_a_reader_holding_a_lock_makes_the_replacement_time_out_naming_it(engine: sa.Engine, db_url: str) -> None:
    sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=0), depth=2)))
    definition = view_definition(engine, "v0")
    with psycopg.connect(libpq_dsn(db_url)) as reader:
        reader.execute("SELECT count(*) FROM v2").fetchall()  # its transaction stays open: it holds v0
        with pytest.raises(LockTimeoutError, match=r'replace view "public"."v0"'):
            sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=9), depth=2)), lock_timeout=0.2)
        reader.rollback()
    assert view_definition(engine, "v0") == definition


def test_a_users_view_on_top_does_not_stop_a_replacement_in_place(engine: sa.Engine) -> None:
    sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=0), depth=2)))
    run_sql(engine, 'CREATE VIEW "users view" AS SELECT id FROM v2')
    result = sync(engine, make_registry(*chain(ROOT_SELECT.format(floor=190), depth=2)))
    assert [a.verb for a in result.applied] == [Verb.REPLACE]
    assert scalar(engine, 'SELECT count(*) FROM "users view"') == 10
    # A change that needs a rebuild would drop it: refused before anything changes, naming it.
    with pytest.raises(UnmanagedDependentError, match="users view"):
        sync(engine, make_registry(*chain("SELECT g AS id FROM generate_series(1, 9) AS g", depth=2)))
    assert scalar(engine, 'SELECT count(*) FROM "users view"') == 10


# --- functions and triggers ----------------------------------------------------------------------------------


def _f(body: str, returns: str = "integer") -> type[Samizdat]:
    return function(
        "f",
        f"${{preamble}} RETURNS {returns} LANGUAGE sql AS $$ SELECT {body} $$",
        function_arguments_signature="x integer",
    )


def _function_oid(engine: sa.Engine) -> int:
    return int(scalar(engine, "SELECT 'public.f(integer)'::regprocedure::oid"))


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_function_body_changed_is_replaced_in_place(engine: sa.Engine, db_url: str, discipline: str) -> None:
    f1 = _f("x + 1")
    sync(engine, make_registry(f1, view("w", "SELECT public.f(g) AS y FROM generate_series(1, 3) g", deps_on={f1})))
    before = (_function_oid(engine), relation_oid(engine, "public", "w"))
    f2 = _f("x + 10")
    readers = Readers(libpq_dsn(db_url), "SELECT sum(y) FROM w")
    with readers.running():
        result = sync(
            engine,
            make_registry(f2, view("w", "SELECT public.f(g) AS y FROM generate_series(1, 3) g", deps_on={f2})),
            discipline=discipline,
        )
    assert readers.errors == []
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.REPLACE, "f")]
    assert (_function_oid(engine), relation_oid(engine, "public", "w")) == before
    assert scalar(engine, "SELECT sum(y) FROM w") == 36
    # Signed with the drift stamps of the new definition: in sync, not reported as changed by hand.
    assert not sync(
        engine, make_registry(f2, view("w", "SELECT public.f(g) AS y FROM generate_series(1, 3) g", deps_on={f2}))
    ).plan


def test_function_result_type_changed_falls_back_to_a_rebuild(engine: sa.Engine) -> None:
    f1 = _f("x + 1")
    sync(engine, make_registry(f1, view("w", "SELECT public.f(g) AS y FROM generate_series(1, 3) g", deps_on={f1})))
    f2 = _f("x::bigint * 2", returns="bigint")
    new = make_registry(f2, view("w", "SELECT public.f(g) AS y FROM generate_series(1, 3) g", deps_on={f2}))
    result = sync(engine, new, discipline="jumbo")
    verbs = [(a.verb, a.key.name) for a in result.applied]
    assert verbs == [(Verb.DROP, "w"), (Verb.DROP, "f"), (Verb.CREATE, "f"), (Verb.CREATE, "w")]
    assert "cannot change return type" in result.applied[2].reason
    assert scalar(engine, "SELECT sum(y) FROM w") == 12
    assert not sync(engine, new).plan


@pytest.mark.parametrize("discipline", ["checkpoint", "jumbo"])
def test_trigger_condition_changed_is_replaced_in_place(engine: sa.Engine, discipline: str) -> None:
    run_sql(
        engine,
        "CREATE TABLE t (id int)",
        "CREATE TABLE audit (n int)",
        "CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit VALUES (1); "
        "RETURN NULL; END $$",
    )
    template = "${preamble} FOR EACH ROW EXECUTE FUNCTION log_it()"
    sync(engine, make_registry(trigger("tg", template, on_table="t", condition="AFTER INSERT")))
    before = scalar(engine, "SELECT oid FROM pg_trigger WHERE tgname = 'tg'")
    result = sync(
        engine,
        make_registry(trigger("tg", template, on_table="t", condition="AFTER INSERT OR UPDATE")),
        discipline=discipline,
    )
    assert [(a.verb, a.key.name) for a in result.applied] == [(Verb.REPLACE, "tg")]
    assert scalar(engine, "SELECT oid FROM pg_trigger WHERE tgname = 'tg'") == before
    run_sql(engine, "INSERT INTO t VALUES (1)", "UPDATE t SET id = 2")
    assert scalar(engine, "SELECT count(*) FROM audit") == 2
    assert not sync(
        engine, make_registry(trigger("tg", template, on_table="t", condition="AFTER INSERT OR UPDATE"))
    ).plan


# --- alembic upgrade and downgrade -----------------------------------------------------------------------------

CHAIN_MODULE = """
from sqlalchemy import MetaData

from alembic_samizdat import SamizdatRegistry, SamizdatView

metadata = MetaData()
registry = SamizdatRegistry(metadata)
classes = [type("v0", (SamizdatView,), {"sql_template": "${preamble} ROOT ${postamble}", "__module__": __name__})]
for level in range(1, DEPTH + 1):
    body = "${preamble} SELECT * FROM v" + str(level - 1) + " ${postamble}"
    attrs = {"sql_template": body, "deps_on": {classes[-1]}, "__module__": __name__}
    classes.append(type(f"v{level}", (SamizdatView,), attrs))
registry.register_all(*classes)
"""


class ChainProject:
    """An Alembic project whose ``chainmod`` module declares the chain with a given root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = alembic_project(root, "chainmod")

    def write(self, root_select: str) -> None:
        source = CHAIN_MODULE.replace("ROOT", root_select).replace("DEPTH", str(DEPTH))
        (self.root / "chainmod.py").write_text(source)
        sys.modules.pop("chainmod", None)

    def revision(self, message: str) -> str:
        sys.modules.pop("chainmod", None)
        script = command.revision(self.config, message=message, autogenerate=True)
        assert script is not None and not isinstance(script, list)
        return Path(script.path).read_text()

    def run(self, verb: str, target: str) -> None:
        sys.modules.pop("chainmod", None)
        getattr(command, verb)(self.config, target)


@pytest.fixture
def chain_project(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChainProject]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield ChainProject(tmp_path)
    sys.modules.pop("chainmod", None)


def _upgrade_ops(script: str) -> list[str]:
    upgrade = script.split("def upgrade()")[1].split("def downgrade()")[0]
    return [line.strip().split("(")[0] for line in upgrade.splitlines() if line.strip().startswith("op.")]


@pytest.mark.parametrize(
    ("new_root", "in_place"),
    [
        (ROOT_SELECT.format(floor=100), True),
        ("SELECT g AS id FROM generate_series(1, 200) AS g WHERE g > 50", False),
    ],
    ids=["columns kept", "column dropped"],
)
def test_alembic_upgrade_and_downgrade_under_readers(
    chain_project: ChainProject, engine: sa.Engine, db_url: str, new_root: str, in_place: bool
) -> None:
    chain_project.write(ROOT_SELECT.format(floor=0))
    chain_project.revision("chain")
    chain_project.run("upgrade", "head")
    names = [f"v{i}" for i in range(DEPTH + 1)]
    before = oids(engine, names)
    chain_project.write(new_root)
    script = chain_project.revision("new root")
    ops = _upgrade_ops(script)
    if in_place:
        # Asked at autogenerate time: PostgreSQL replaces the root in place, there and back.
        assert ops == ["op.replace_samizdat"]
        assert "replaced in place" in script
    else:
        assert "op.replace_samizdat" not in ops
        assert ops.count("op.drop_samizdat") == DEPTH + 1 and ops.count("op.create_samizdat") == DEPTH + 1
        assert "cannot drop columns from view" in script
    readers = Readers(libpq_dsn(db_url), f"SELECT count(*) FROM v{DEPTH}")
    with readers.running():
        chain_project.run("upgrade", "head")
        expected = 100 if in_place else 150
        assert scalar(engine, f"SELECT count(*) FROM v{DEPTH}") == expected
        chain_project.run("downgrade", "-1")
    assert readers.errors == []
    assert all(readers.reads)
    assert scalar(engine, f"SELECT count(*) FROM v{DEPTH}") == 200
    if in_place:
        assert oids(engine, names) == before
    # Back where it started, signatures included: nothing to do.
    chain_project.write(ROOT_SELECT.format(floor=0))
    assert not plan(engine, importlib.import_module("chainmod").registry)


def test_alembic_offline_sql_replaces_in_place(chain_project: ChainProject, engine: sa.Engine) -> None:
    chain_project.write(ROOT_SELECT.format(floor=0))
    first = re.search(r"^revision: str = '(\w+)'", chain_project.revision("chain"), re.M)
    assert first is not None
    chain_project.run("upgrade", "head")
    before = oids(engine, [f"v{i}" for i in range(DEPTH + 1)])
    chain_project.write(ROOT_SELECT.format(floor=100))
    chain_project.revision("new root")
    buffer = io.StringIO()
    sys.modules.pop("chainmod", None)
    offline = Config(chain_project.config.config_file_name, output_buffer=buffer, stdout=io.StringIO())
    offline.set_main_option("script_location", chain_project.config.get_main_option("script_location") or "")
    command.upgrade(offline, f"{first.group(1)}:head", sql=True)
    sql = buffer.getvalue()
    assert 'CREATE OR REPLACE VIEW "public"."v0" AS' in sql and "DROP VIEW" not in sql
    # The offline script is what runs: applied as is, it gives the same result as online.
    with engine.begin() as conn:
        conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
    assert scalar(engine, f"SELECT count(*) FROM v{DEPTH}") == 100
    assert oids(engine, [f"v{i}" for i in range(DEPTH + 1)]) == before

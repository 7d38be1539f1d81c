"""Helpers shared by the engine tests: registries, dynamic samizdat classes, catalog snapshots, SQL counting."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event

from alembic_samizdat import (
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatRegistry,
    SamizdatTrigger,
    SamizdatView,
)
from alembic_samizdat.catalog import CatalogRow, DatabaseState, build_state
from alembic_samizdat.declared import Declared
from alembic_samizdat.model import Samizdat
from alembic_samizdat.signature import signature_text

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"

USER_SCHEMAS_FILTER = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"


def make_registry(*classes: type[Samizdat], scope: str = "default") -> SamizdatRegistry:
    """A registry holding ``classes`` under ``scope``."""
    registry = SamizdatRegistry(scope=scope)
    registry.register_all(*classes)
    return registry


def _make(base: type[Samizdat], name: str, template: str, **attrs: Any) -> type[Samizdat]:
    namespace: dict[str, Any] = {"sql_template": template, "__module__": "dyn", "__qualname__": name}
    namespace.update(attrs)
    return type(name, (base,), namespace)


def view(name: str, select: str, **attrs: Any) -> type[Samizdat]:
    """A ``SamizdatView`` named ``name`` whose template is ``${preamble} <select> ${postamble}``."""
    return _make(SamizdatView, name, f"${{preamble}}\n{select}\n${{postamble}}", **attrs)


def matview(name: str, select: str, *, after: str = "", **attrs: Any) -> type[Samizdat]:
    """A ``SamizdatMaterializedView``; ``after`` is SQL placed after the postamble (e.g. ``;CREATE INDEX``)."""
    return _make(SamizdatMaterializedView, name, f"${{preamble}}\n{select}\n${{postamble}}{after}", **attrs)


def function(name: str, template: str, **attrs: Any) -> type[Samizdat]:
    """A ``SamizdatFunction`` with a full template."""
    return _make(SamizdatFunction, name, template, **attrs)


def trigger(name: str, template: str = "${preamble} FOR EACH ROW EXECUTE FUNCTION noop()", **attrs: Any) -> type:
    """A ``SamizdatTrigger``."""
    return _make(SamizdatTrigger, name, template, **attrs)


def run_sql(engine: sa.Engine, *statements: str) -> None:
    """Run statements verbatim in one committed transaction (``%`` is PostgreSQL's, not psycopg's)."""
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def scalar(engine: sa.Engine, query: str, params: dict[str, Any] | None = None) -> Any:
    """The first column of the first row of ``query``."""
    with engine.connect() as conn:
        return conn.execute(sa.text(query), params or {}).scalar()


def rows(engine: sa.Engine, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Every row of ``query`` as tuples."""
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params or {})]


def relation_oid(engine: sa.Engine, schema: str, name: str) -> int | None:
    """The oid of relation ``schema.name`` (quoted exactly), or None."""
    return scalar(
        engine,
        "SELECT c.oid::bigint FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relname = :n",
        {"s": schema, "n": name},
    )


def relkind(engine: sa.Engine, name: str, schema: str = "public") -> str | None:
    """The relkind of ``schema.name`` or None."""
    return scalar(
        engine,
        "SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relname = :n",
        {"s": schema, "n": name},
    )


def view_definition(engine: sa.Engine, name: str, schema: str = "public") -> str | None:
    """``pg_get_viewdef`` of a view or matview, or None when it does not exist."""
    return scalar(
        engine,
        "SELECT pg_get_viewdef(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = :s AND c.relname = :n",
        {"s": schema, "n": name},
    )


def trigger_names(engine: sa.Engine) -> set[str]:
    """Names of every user trigger."""
    return {r[0] for r in rows(engine, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}


def function_names(engine: sa.Engine) -> set[str]:
    """Names of every function outside the system schemas."""
    return {
        r[0]
        for r in rows(
            engine,
            f"SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS_FILTER}",
        )
    }


#: An ACL as sorted text items (the order of aclitems is the order of the grants, which a recreate may change).
_ACL = "ARRAY(SELECT a::text FROM unnest({}) a ORDER BY 1)"


def catalog_snapshot(engine: sa.Engine, *, oids: bool = False) -> dict[str, list[tuple[Any, ...]]]:
    """Everything users can see of the schema objects, read from the catalog alone: relations (with view
    definitions, population, owners and privileges), functions (with ``procost``, ``prosecdef``, volatility,
    settings, owners and privileges), triggers (with ``tgenabled``), indexes, comments and schemas (owners,
    privileges) of every non-system schema. Two databases with the same objects give equal snapshots: the
    transaction id a signature records (``"dx"``) is masked, since an object created again gets a new one.

    With ``oids`` every relation, function and trigger row carries its oid too, so that an object dropped and
    created again (even identically) shows: what "nothing was done" means."""
    queries = {
        "relations": f"""
            SELECT n.nspname, c.relname, c.relkind::text, c.relispopulated,
                   CASE WHEN c.relkind IN ('v', 'm') THEN pg_get_viewdef(c.oid) END,
                   CASE WHEN c.relkind = 'i' THEN pg_get_indexdef(c.oid) END,
                   obj_description(c.oid, 'pg_class'), pg_get_userbyid(c.relowner), {_ACL.format("c.relacl")}
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {USER_SCHEMAS_FILTER} AND c.relkind IN ('r', 'v', 'm', 'i', 'S', 'p', 'f')
            ORDER BY 1, 2""",
        "columns": f"""
            SELECT n.nspname, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE {USER_SCHEMAS_FILTER} AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'v', 'm')
            ORDER BY 1, 2, 3""",
        "functions": f"""
            SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
                   pg_get_function_result(p.oid), p.prosrc, obj_description(p.oid, 'pg_proc'),
                   p.prokind::text, p.procost::float8, p.prosecdef, p.provolatile::text, p.proconfig::text,
                   pg_get_userbyid(p.proowner), {_ACL.format("p.proacl")}
            FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
            WHERE {USER_SCHEMAS_FILTER}
            ORDER BY 1, 2, 3""",
        "triggers": """
            SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled::text,
                   obj_description(t.oid, 'pg_trigger')
            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE NOT t.tgisinternal
            ORDER BY 1, 2, 3""",
        "schemas": f"""
            SELECT n.nspname, pg_get_userbyid(n.nspowner), {_ACL.format("n.nspacl")}
            FROM pg_namespace n WHERE {USER_SCHEMAS_FILTER} ORDER BY 1""",
        "descriptions": """
            SELECT classoid::regclass::text, objsubid, description FROM pg_description
            WHERE objoid >= 16384 ORDER BY 1, 2, 3""",
    }
    if oids:
        queries["oids"] = f"""
            SELECT 'pg_class', n.nspname, c.relname, c.oid::bigint FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {USER_SCHEMAS_FILTER}
            UNION ALL
            SELECT 'pg_proc', n.nspname, p.oid::regprocedure::text, p.oid::bigint FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {USER_SCHEMAS_FILTER}
            UNION ALL
            SELECT 'pg_trigger', t.tgrelid::regclass::text, t.tgname, t.oid::bigint FROM pg_trigger t
            WHERE NOT t.tgisinternal
            ORDER BY 1, 2, 3"""
    with engine.connect() as conn:
        return {name: [_mask_dx(tuple(r)) for r in conn.execute(sa.text(q))] for name, q in queries.items()}


_DX = re.compile(r',"dx":"[0-9]+"')


def _mask_dx(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(_DX.sub(',"dx":"?"', v) if isinstance(v, str) else v for v in row)


class StatementLog:
    """Records the statements an engine sends (through SQLAlchemy's ``before_cursor_execute`` event)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def __call__(self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool):
        self.statements.append(statement)

    def __len__(self) -> int:
        return len(self.statements)


@contextmanager
def statement_log(engine: sa.Engine) -> Iterator[StatementLog]:
    """Record every statement ``engine`` sends inside the block."""
    log = StatementLog()
    event.listen(engine, "before_cursor_execute", log)
    try:
        yield log
    finally:
        event.remove(engine, "before_cursor_execute", log)


class ProtocolLog:
    """The round trips one libpq connection made: simple queries, and extended-protocol statements."""

    def __init__(self) -> None:
        self.round_trips: list[str] = []

    def __len__(self) -> int:
        return len(self.round_trips)

    def without_transaction_control(self) -> list[str]:
        """Round trips other than BEGIN / COMMIT / ROLLBACK."""
        control = ("BEGIN", "COMMIT", "ROLLBACK")
        return [r for r in self.round_trips if not r.strip().upper().startswith(control)]


@contextmanager
def protocol_trace(conn: sa.Connection) -> Iterator[ProtocolLog]:
    """Trace what ``conn`` sends at the wire level (libpq ``PQtrace``): every round trip, whatever layer sent
    it (SQLAlchemy, raw DBAPI cursors, the dialect's own queries)."""
    from psycopg.pq import Trace

    pgconn = conn.connection.dbapi_connection.pgconn  # type: ignore[union-attr]
    log = ProtocolLog()
    with tempfile.TemporaryFile(mode="w+b") as out:
        pgconn.trace(out.fileno())
        pgconn.set_trace_flags(Trace.SUPPRESS_TIMESTAMPS | Trace.REGRESS_MODE)
        try:
            yield log
        finally:
            pgconn.untrace()
            out.seek(0)
            messages: list[list[str]] = []  # [direction, type, text]; continuation lines join the text
            for line in out.read().decode("utf-8", "replace").splitlines():
                parts = line.split("\t", 3)
                if len(parts) >= 3 and parts[0] in ("F", "B") and parts[1].isdigit():
                    messages.append([parts[0], parts[2], parts[3] if len(parts) > 3 else ""])
                elif messages:
                    messages[-1][2] += "\n" + line
            parse = ""
            for direction, kind, text in messages:
                if direction != "F":
                    continue
                if kind == "Query":
                    log.round_trips.append(text.strip().removeprefix('"').removesuffix('"'))
                elif kind == "Parse":
                    parse = text.strip().removeprefix('"" "').removesuffix('"')
                elif kind == "Sync":
                    log.round_trips.append(parse or "<extended>")
                    parse = ""


def psql_binary() -> str:
    """A psql binary: the one next to the test server's binaries, else the one on PATH."""
    try:
        from alembic_samizdat.pgserver import find_binaries

        candidate = Path(find_binaries(install=False)) / "psql"
        if candidate.exists():
            return str(candidate)
    except Exception:
        pass
    found = shutil.which("psql")
    if found is None:
        raise RuntimeError("no psql binary found")
    return found


def unique_role(stem: str) -> str:
    """A role name no other test (nor another run on the same server) uses: roles are server-wide."""
    return f"{stem}_{uuid.uuid4().hex[:10]}"


def dbsamizdat_cli() -> str | None:
    """The DBSamizdat CLI: $SAMIZDAT_TEST_DBSAMIZDAT (what CI installs), a local venv, or PATH."""
    for candidate in (
        os.environ.get("SAMIZDAT_TEST_DBSAMIZDAT"),
        "/tmp/dbsz/bin/dbsamizdat",
        shutil.which("dbsamizdat"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


needs_dbsamizdat = pytest.mark.skipif(
    dbsamizdat_cli() is None,
    reason="DBSamizdat 0.11.2 is not installed (CI installs it and sets SAMIZDAT_TEST_DBSAMIZDAT)",
)


class Project:
    """A copy of example_project's Alembic setup whose ``shop`` module the test rewrites."""

    def __init__(self, root: Path, url: str) -> None:
        self.root = root
        self.url = url
        shutil.copy(EXAMPLE / "alembic.ini", root / "alembic.ini")
        (root / "migrations" / "versions").mkdir(parents=True)
        for name in ("env.py", "script.py.mako"):
            shutil.copy(EXAMPLE / "migrations" / name, root / "migrations" / name)
        self.source = (EXAMPLE / "shop.py").read_text()
        self.write(self.source)

    def write(self, source: str) -> None:
        (self.root / "shop.py").write_text(source)
        sys.modules.pop("shop", None)

    def edit(self, old: str, new: str) -> None:
        assert old in self.source, old
        self.source = self.source.replace(old, new)
        self.write(self.source)

    def config(self, buffer: io.StringIO | None = None) -> Config:
        cfg = Config(str(self.root / "alembic.ini"), output_buffer=buffer, stdout=buffer or io.StringIO())
        cfg.set_main_option("script_location", str(self.root / "migrations"))
        return cfg

    def revision(self, message: str) -> str:
        sys.modules.pop("shop", None)
        script = command.revision(self.config(), message=message, autogenerate=True)
        assert script is not None and not isinstance(script, list)
        return Path(script.path).read_text()

    def upgrade(self, target: str = "head") -> None:
        sys.modules.pop("shop", None)
        command.upgrade(self.config(), target)

    def downgrade(self, target: str) -> None:
        sys.modules.pop("shop", None)
        command.downgrade(self.config(), target)

    def check(self) -> None:
        sys.modules.pop("shop", None)
        command.check(self.config())

    def sql(self, range_: str, *, downgrade: bool = False) -> str:
        """The SQL of an offline (``--sql``) upgrade or downgrade over ``range_`` (``"base:head"``, ``"2:1"``)."""
        sys.modules.pop("shop", None)
        buffer = io.StringIO()
        if downgrade:
            command.downgrade(self.config(buffer), range_, sql=True)
        else:
            command.upgrade(self.config(buffer), range_, sql=True)
        return buffer.getvalue()


def ops_in(script: str) -> list[str]:
    """The ``op.*`` calls of a revision script's ``upgrade()``, in order."""
    upgrade = script.split("def upgrade()")[1].split("def downgrade()")[0]
    return [line.strip().split("(")[0] for line in upgrade.splitlines() if line.strip().startswith("op.")]


def alembic_project(root: Path, module: str) -> Config:
    """example_project's Alembic environment in ``root``, its env.py taking the metadata from ``module``."""
    shutil.copy(EXAMPLE / "alembic.ini", root / "alembic.ini")
    (root / "migrations" / "versions").mkdir(parents=True)
    shutil.copy(EXAMPLE / "migrations" / "script.py.mako", root / "migrations" / "script.py.mako")
    env = (EXAMPLE / "migrations" / "env.py").read_text().replace("from shop import", f"from {module} import")
    (root / "migrations" / "env.py").write_text(env)
    cfg = Config(str(root / "alembic.ini"), stdout=io.StringIO())
    cfg.set_main_option("script_location", str(root / "migrations"))
    return cfg


# --- hand-built database states (for the pure planner tests) -------------------------------------------------


def obj_row(
    declared: Declared | None,
    *,
    oid: int,
    scope: str = "default",
    comment: str | None = None,
    kind: str | None = None,
    schema: str | None = None,
    name: str | None = None,
    extra: str | None = None,
    populated: bool = True,
) -> CatalogRow:
    """A catalog ``obj`` row as :data:`alembic_samizdat.catalog.CATALOG_SQL` returns it.

    By default the row is ``declared`` signed by ``scope``; ``comment`` overrides the signature.
    """
    if declared is not None:
        kind = kind or declared.kind.value
        schema = schema if schema is not None else declared.key.schema
        name = name if name is not None else declared.key.name
        if extra is None:
            extra = declared.key.extra if declared.kind.value in ("function", "trigger") else ""
        if comment is None:
            comment = signature_text(declared, scope)
    assert kind is not None and schema is not None and name is not None
    classid = {"function": "pg_proc", "trigger": "pg_trigger"}.get(kind, "pg_class")
    return CatalogRow("obj", classid, oid, kind, schema, name, extra or "", comment, populated)


def dep_row(ref_classid: str, ref_oid: int, dep_classid: str, dep_oid: int, description: str) -> CatalogRow:
    """A catalog ``dep`` row: ``dep_*`` depends on ``ref_*``."""
    return CatalogRow(
        "dep", ref_classid, ref_oid, dep_classid=dep_classid, dep_oid=dep_oid, dep_description=description
    )


def state_of(rows_: Iterable[tuple[Any, ...]], scope: str = "default") -> DatabaseState:
    """A :class:`DatabaseState` from hand-made rows."""
    return build_state(scope, list(rows_))

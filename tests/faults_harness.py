"""The harness of the fault tests (``test_faults``, ``test_convergence_alembic``): a family of registry versions
in schema ``app`` over a table and users' views, catalog reads that judge a database against a version, and a
killer that terminates a session before its n-th statement."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from helpers import catalog_snapshot, function, matview, trigger, view
from sqlalchemy import event

from alembic_samizdat import Discipline, SamizdatRegistry, diff_database, sync
from alembic_samizdat.planner import Action, Verb
from alembic_samizdat.signature import definition_hash

S = "app"
ALL_DISCIPLINES = [Discipline.CHECKPOINT, Discipline.JUMBO, Discipline.DRYRUN]
Ident = tuple[str, str, str, str]

RESET = f"""
DROP SCHEMA IF EXISTS {S} CASCADE;
CREATE SCHEMA {S};
CREATE TABLE {S}.src (id serial PRIMARY KEY, x int NOT NULL);
INSERT INTO {S}.src (x) VALUES (1), (2), (3);
CREATE TABLE {S}.audit (id serial PRIMARY KEY, note text);
CREATE VIEW {S}.user_view AS SELECT x FROM {S}.src
"""


def reset(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(RESET)


def family(v: int) -> SamizdatRegistry:
    """Version ``v`` of a registry: a function and an overload, a trigger function, a trigger on a table, a view,
    two stacked materialized views with indexes (one autorefreshed), a view on top with an INSTEAD OF trigger,
    and objects that only some versions have. Every template carries ``v``, so versions differ everywhere."""
    double_it = function(
        "double_it",
        f"${{preamble}} RETURNS integer LANGUAGE sql AS $$ SELECT $1 * 2 /* v{v} */ $$",
        schema=S,
        function_arguments_signature="integer",
    )
    log_src = function(
        "log_src",
        f"${{preamble}} RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"INSERT INTO {S}.audit (note) VALUES ('v{v}'); RETURN NEW; END $$",
        schema=S,
    )
    src_logger = trigger(
        "src_logger",
        f"${{preamble}} FOR EACH ROW EXECUTE FUNCTION {S}.log_src()",
        schema=S,
        on_table="src",
        condition="AFTER INSERT" if v % 2 else "AFTER INSERT OR UPDATE",
        deps_on={log_src},
    )
    base = view(
        "Base",
        f"SELECT id, {S}.double_it(x) AS y, 'v{v}'::text AS version FROM {S}.src",
        schema=S,
        deps_on={double_it},
        deps_on_unmanaged={"src"},
    )
    totals = matview(
        "Totals",
        f'SELECT sum(y) AS total, max(version) AS version FROM {S}."Base"',
        after=";\nCREATE UNIQUE INDEX ON ${samizdatname} (total)",
        schema=S,
        deps_on={base},
        refresh_concurrently=True,
    )
    high = matview(
        "High",
        f'SELECT total * 10 AS t, version FROM {S}."Totals"',
        after=";\nCREATE INDEX ON ${samizdatname} (t);\nCREATE INDEX ON ${samizdatname} (version)",
        schema=S,
        deps_on={totals},
        refresh_triggers={"src"},
    )
    top = view("Top", f'SELECT t, version FROM {S}."High"', schema=S, deps_on={high})
    top_insert = trigger(
        "top_insert",
        f"${{preamble}} FOR EACH ROW EXECUTE FUNCTION {S}.log_src()",
        schema=S,
        on_table=top,
        condition="INSTEAD OF INSERT",
        deps_on={log_src},
    )
    # The same in every version: users build their own views on these (see add_foreign_views).
    stable_fn = function(
        "stable_fn",
        "${preamble} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT $1 + 1 $$",
        schema=S,
        function_arguments_signature="integer",
    )
    stable = view("Stable", f"SELECT id, x FROM {S}.src", schema=S, deps_on_unmanaged={"src"})
    classes = [double_it, log_src, src_logger, base, totals, high, top, top_insert, stable_fn, stable]
    if v % 2 == 0:
        classes.append(
            function(
                "double_big",
                f"${{preamble}} RETURNS bigint LANGUAGE sql AS $$ SELECT $1 * 2 /* v{v} */ $$",
                schema=S,
                function_name="double_it",
                function_arguments_signature="bigint",
            )
        )
    if v % 3 == 0:
        classes.append(matview("Extra", f"SELECT 'v{v}'::text AS version", schema=S))
    classes.append(view(f"Only v{v}", f'SELECT count(*) AS n FROM {S}."Base"', schema=S, deps_on={base}))
    registry = SamizdatRegistry()
    registry.register_all(*classes)
    return registry


# --- reading the catalog ----------------------------------------------------------------------------------------

SIGNED_SQL = f"""
SELECT 'relation' AS ns, n.nspname AS schema, c.relname AS name, '' AS extra, c.relkind::text AS kind,
       obj_description(c.oid, 'pg_class') AS comment, c.relispopulated AS populated,
       (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) AS indexes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = '{S}' AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'function', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid), 'f',
       obj_description(p.oid, 'pg_proc'), true, 0
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = '{S}'
UNION ALL
SELECT 'trigger', n.nspname, t.tgname, c.relname, 't', obj_description(t.oid, 'pg_trigger'), true, 0
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = '{S}'
"""

#: Names of the family's objects that are the same in every version.
STABLE = ("Stable", "stable_fn")

#: Objects in the schema that are not ours and must stay as they are: a user's view on the table, and (once
#: add_foreign_views ran) a user's view on top of managed objects, which every sync must leave alone.
FOREIGN = {("relation", S, "user_view", ""), ("relation", S, "user_on_top", "")}

FOREIGN_VIEW = f'CREATE VIEW {S}.user_on_top AS SELECT id, {S}.stable_fn(x) AS y FROM {S}."Stable"'


def add_foreign_views(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """A user's view on top of the managed "Stable" and stable_fn (after a sync created them); returns
    :func:`foreign_views`."""
    with engine.begin() as conn:
        conn.exec_driver_sql(FOREIGN_VIEW)
    return foreign_views(engine)


def foreign_views(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """The users' views in the schema: name -> (oid, definition)."""
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT c.relname, c.oid::bigint, pg_get_viewdef(c.oid) FROM pg_class c "
            f"WHERE c.relnamespace = '{S}'::regnamespace AND starts_with(c.relname, 'user_')"
        ).all()
    return {name: (oid, definition) for name, oid, definition in found}


def foreign_problems(engine: sa.Engine, expected: dict[str, tuple[int, str]]) -> list[str]:
    """How the users' views differ from ``expected`` (same oids, same definitions), and whether they answer."""
    now = foreign_views(engine)
    problems = [
        f"user's view {n} changed or went: {expected[n]} -> {now.get(n)}" for n in expected if now.get(n) != expected[n]
    ]
    if not problems and "user_on_top" in expected:
        with engine.connect() as conn:
            got = conn.exec_driver_sql(f"SELECT sum(y) FROM {S}.user_on_top").scalar()
            truth = conn.exec_driver_sql(f"SELECT sum(x + 1) FROM {S}.src").scalar()
        if got != truth:
            problems.append(f"user_on_top answers {got}, not {truth}")
    return problems


#: Every view, materialized view (with its indexes), function and trigger (with tgenabled) of the schema, as the
#: catalog prints it, with the hash its signature claims.
DEFINITIONS_SQL = f"""
SELECT 'relation', n.nspname, c.relname, '',
       c.relkind::text || ':' || pg_get_viewdef(c.oid) || coalesce((
           SELECT string_agg(pg_get_indexdef(i.indexrelid), '; ' ORDER BY pg_get_indexdef(i.indexrelid))
           FROM pg_index i WHERE i.indrelid = c.oid), ''),
       obj_description(c.oid, 'pg_class')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = '{S}' AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'function', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
       pg_get_functiondef(p.oid) || ' cost ' || p.procost || ' secdef ' || p.prosecdef,
       obj_description(p.oid, 'pg_proc')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = '{S}'
UNION ALL
SELECT 'trigger', n.nspname, t.tgname, c.relname, pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text,
       obj_description(t.oid, 'pg_trigger')
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT t.tgisinternal AND n.nspname = '{S}'
"""


def definitions(engine: sa.Engine) -> dict[Ident, tuple[str, str | None]]:
    """Every object of the schema but the users' views: ident -> (definition, the hash its signature claims)."""
    out: dict[Ident, tuple[str, str | None]] = {}
    with engine.connect() as conn:
        for ns, schema, name, extra, definition, comment in conn.exec_driver_sql(DEFINITIONS_SQL):
            ident = (ns, schema, name, extra)
            if ident in FOREIGN:
                continue
            body = json.loads(comment) if comment and comment.startswith('{"alembic_samizdat":') else {}
            out[ident] = (definition, body.get("hash"))
    return out


def mixture_problems(engine: sa.Engine, references: list[dict[Ident, tuple[str, str | None]]]) -> list[str]:
    """Judged by the catalog alone: every object in the schema is exactly as a complete, uninterrupted sync of
    one of the versions left it (definition, indexes, cost, trigger state), and signed with the hash that
    version's clean sync wrote (``references`` are :func:`definitions` read after such syncs)."""
    problems = []
    for ident, (definition, claimed) in sorted(definitions(engine).items()):
        matching = [ref[ident] for ref in references if ident in ref and ref[ident][0] == definition]
        if not matching:
            problems.append(f"{ident} is in no version's clean state (incomplete or wrong): {definition[:120]!r}")
        elif claimed not in {h for _, h in matching}:
            problems.append(f"{ident} signed {claimed}, which no clean sync of that definition wrote")
    return problems


def read_signed(engine: sa.Engine) -> tuple[dict[Ident, dict[str, Any]], list[Ident]]:
    """Objects signed by scope "default" (with hash, stale mark, population, index count); and every other view,
    materialized view, function or trigger in the schema (there must be none but the user's view)."""
    signed: dict[Ident, dict[str, Any]] = {}
    unsigned: list[Ident] = []
    with engine.connect() as conn:
        for row in conn.exec_driver_sql(SIGNED_SQL):
            ident = (row.ns, row.schema, row.name, row.extra)
            comment = row.comment
            body = json.loads(comment) if comment and comment.startswith('{"alembic_samizdat":') else None
            if body is None or body.get("scope") != "default":
                if ident not in FOREIGN:
                    unsigned.append(ident)
                continue
            signed[ident] = {
                "hash": body["hash"],
                "stale": body.get("stale", False),
                "populated": row.populated,
                "indexes": row.indexes,
                "key": tuple(body["key"]),
            }
    return signed, unsigned


def declared_state(registry: SamizdatRegistry) -> dict[Ident, dict[str, Any]]:
    """What a complete sync of ``registry`` leaves: hash, index count (matviews) and population of each object."""
    out = {}
    for key, node in registry.graph().nodes.items():
        out[(key.namespace, key.schema, key.name, key.extra)] = {
            "hash": definition_hash(node),
            "indexes": node.sql.count("INDEX ON"),
            "matview": node.kind.value == "matview",
        }
    return out


def state_problems(expected: dict[Ident, dict[str, Any]], populated: dict[Ident, bool], engine: sa.Engine) -> list[str]:
    """Differences between the catalog and an expected state (hashes, indexes, population), and leftovers."""
    signed, unsigned = read_signed(engine)
    problems = [f"unsigned object left behind: {i}" for i in unsigned]
    for ident in sorted(set(expected) - set(signed)):
        problems.append(f"missing: {ident}")
    for ident in sorted(set(signed) - set(expected)):
        problems.append(f"unexpected: {ident}")
    for ident in sorted(set(signed) & set(expected)):
        got, want = signed[ident], expected[ident]
        if got["hash"] != want["hash"] or got["key"] != ident:
            problems.append(f"{ident} signed with another hash or key")
        if want["matview"] and got["indexes"] != want["indexes"]:
            problems.append(f"{ident} has {got['indexes']} indexes, not {want['indexes']}: incomplete")
        if want["matview"] and got["populated"] != populated.get(ident, True):
            problems.append(f"{ident} populated={got['populated']}, expected {populated.get(ident, True)}")
    return problems


def converged(engine: sa.Engine, registry: SamizdatRegistry) -> list[str]:
    """Problems left after a sync that should have completed: catalog vs declarations, second sync, diff."""
    problems = state_problems(declared_state(registry), {}, engine)
    signed, _ = read_signed(engine)
    problems += [f"{i} still marked stale" for i, row in signed.items() if row["stale"]]
    # Idempotence judged by the catalog (every oid, definition, privilege), not only by the second plan.
    before = catalog_snapshot(engine, oids=True)
    again = sync(engine, registry)
    problems += [f"second sync: {a.describe()}" for a in again.plan.actions]
    if catalog_snapshot(engine, oids=True) != before:
        problems.append("a second sync changed the catalog")
    if diff_database(engine, registry).exit_code != 0:
        problems.append("diff_database is not 0")
    return problems


# --- killing a session at a chosen statement --------------------------------------------------------------------


class Killer:
    """Counts the statements (and COMMITs) an engine sends; before the ``at``-th one, terminates the server process
    of the connection about to send it, from another connection, and waits until it is gone."""

    def __init__(self, admin: psycopg.Connection[Any], at: int | None) -> None:
        self.admin = admin
        self.at = at
        self.sent: list[str] = []
        self.killed: str | None = None
        self.lock = threading.Lock()

    def hit(self, conn: sa.Connection, what: str) -> None:
        with self.lock:
            if self.killed is not None:
                self.sent.append(what)
                return
            if self.at is not None and len(self.sent) + 1 == self.at:
                pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
                self.admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))
                self.killed = what
                return
            self.sent.append(what)

    def before_cursor_execute(self, conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        self.hit(conn, statement)

    def commit(self, conn: sa.Connection) -> None:
        self.hit(conn, "COMMIT")


@contextmanager
def killing(engine: sa.Engine, admin: psycopg.Connection[Any], at: int | None) -> Iterator[Killer]:
    killer = Killer(admin, at)
    event.listen(engine, "before_cursor_execute", killer.before_cursor_execute)
    event.listen(engine, "commit", killer.commit)
    try:
        yield killer
    finally:
        event.remove(engine, "before_cursor_execute", killer.before_cursor_execute)
        event.remove(engine, "commit", killer.commit)


def run(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, BaseException | None]:
    """Call, and return (result, None) or (None, the exception)."""
    try:
        return call(*args, **kwargs), None
    except BaseException as exc:
        return None, exc


def simulate(before: SamizdatRegistry, after: SamizdatRegistry, applied: list[Action]) -> tuple[dict, dict]:
    """The state the ``applied`` actions of a sync from ``before`` to ``after`` leave: expected objects and, for
    materialized views, whether they are populated."""
    old, new = declared_state(before), declared_state(after)
    expected = dict(old)
    populated = {i: True for i in old}
    for action in applied:
        k = action.key
        ident = (k.namespace, k.schema, k.name, k.extra)
        if action.verb is Verb.DROP:
            expected.pop(ident, None)
        elif action.verb is Verb.CREATE:
            expected[ident] = new[ident]
            populated[ident] = False
        elif action.verb is Verb.REPLACE:
            expected[ident] = new[ident]  # in place: a view stays populated, there is nothing else to populate
        else:
            populated[ident] = True
    return expected, populated


def data_problems(engine: sa.Engine, version: str) -> list[str]:
    with engine.connect() as conn:
        top = conn.exec_driver_sql(f'SELECT t, version FROM {S}."Top"').all()
        truth = conn.exec_driver_sql(f"SELECT sum(x) * 2 * 10 FROM {S}.src").scalar()
    return [] if top == [(truth, version)] else [f'"Top" holds {top}, expected {[(truth, version)]}']

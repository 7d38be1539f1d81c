"""Faults leave a stated state, on a real PostgreSQL.

- The server process of a sync is killed (``pg_terminate_backend`` from a second connection) before each of its
  statements in turn (and before its COMMIT), under every discipline: ``jumbo`` and ``dryrun`` leave the database
  exactly as it was; ``checkpoint`` leaves it at the last completed action, every object present complete and
  correctly signed; the next sync converges. One more case kills the process while a statement runs.
- The same for refresh runs, serial and parallel: a killed refresh leaves no view that a later sync would call
  fine (diff shows it; the next sync or refresh fixes it).
- A lock held by another session: ``lock_timeout`` makes the sync fail with ``LockTimeoutError`` naming the object,
  with nothing half done.
- Eight concurrent syncs of eight versions of a registry serialize: none deadlocks or fails, the database ends at
  the version of the run that completed last, and every run reports what it did.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from helpers import catalog_snapshot, function, matview, trigger, view
from sqlalchemy import event

from alembic_samizdat import (
    Discipline,
    LockTimeoutError,
    SamizdatError,
    SamizdatRegistry,
    diff_database,
    sync,
)
from alembic_samizdat.api import refresh
from alembic_samizdat.planner import Action, DiffKind, Plan, Verb
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
    classes = [double_it, log_src, src_logger, base, totals, high, top, top_insert]
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

#: Objects in the schema that are not ours and must stay as they are.
FOREIGN = {("relation", S, "user_view", "")}


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
    again = sync(engine, registry)
    problems += [f"second sync: {a.describe()}" for a in again.plan.actions]
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


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


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


# --- killed syncs -----------------------------------------------------------------------------------------------


def count_statements(engine: sa.Engine, admin: psycopg.Connection[Any], call: Callable[[], Any]) -> int:
    with killing(engine, admin, None) as counter:
        call()
    return len(counter.sent)


@pytest.mark.parametrize("discipline", ALL_DISCIPLINES)
def test_killed_sync_leaves_a_stated_state_and_the_next_sync_converges(
    engine: sa.Engine, admin: psycopg.Connection[Any], discipline: Discipline
) -> None:
    v1, v2 = family(1), family(2)
    reset(engine)
    sync(engine, v1)
    total = count_statements(engine, admin, lambda: sync(engine, v2, discipline=discipline))
    assert total >= 20, "the v1 -> v2 sync should drop, create and refresh a fair number of objects"
    problems: list[str] = []
    partial = 0  # kills that left a checkpoint run half done (the interesting case)
    for at in range(1, total + 1):
        reset(engine)
        sync(engine, v1)
        before = catalog_snapshot(engine)
        applied: list[Action] = []
        plans: list[Plan] = []
        with killing(engine, admin, at) as killer:
            _, error = run(sync, engine, v2, discipline=discipline, on_action=applied.append, on_plan=plans.append)
        where = f"{discipline.value}, killed before statement {at}/{total} ({(killer.killed or '?').strip()[:60]!r})"
        complete = bool(plans) and len(applied) == len(plans[0].actions)
        if error is None and not (discipline is Discipline.CHECKPOINT and complete):
            problems.append(f"{where}: the sync reported success")
        if error is not None and not isinstance(error, SamizdatError):
            problems.append(f"{where}: raised {type(error).__module__}.{type(error).__name__}, not a SamizdatError")
        if discipline is Discipline.CHECKPOINT:
            partial += len(applied) > 0 and not complete
            expected, populated = simulate(v1, v2, applied)
            problems += [f"{where}: {p}" for p in state_problems(expected, populated, engine)]
            if not complete and diff_database(engine, v2).exit_code == 0:
                problems.append(f"{where}: diff says equal after an incomplete sync")
        elif catalog_snapshot(engine) != before:
            problems.append(f"{where}: the database changed")
        # The next sync finishes the job.
        sync(engine, v2)
        problems += [f"{where}, then synced: {p}" for p in converged(engine, v2) + data_problems(engine, "v2")]
    assert problems == [], "\n".join(problems)
    # A kill in the middle of a unit (a rebuilt stack) or of the replacement tries leaves nothing partial.
    assert discipline is not Discipline.CHECKPOINT or partial >= total // 3


ATTACHED = (
    f'GRANT SELECT ON {S}."Top" TO PUBLIC',
    f'CREATE INDEX hand_made ON {S}."High" (version, t)',
)


def attachments(engine: sa.Engine) -> dict[str, bool]:
    """Whether the user's grant on "Top" and hand-made index on "High" are there."""
    with engine.connect() as conn:
        return {
            "grant": bool(
                conn.exec_driver_sql(f"SELECT has_table_privilege('public', '{S}.\"Top\"', 'SELECT')").scalar()
            ),
            "index": conn.exec_driver_sql(f"SELECT to_regclass('{S}.hand_made') IS NOT NULL").scalar() is True,
        }


@pytest.mark.parametrize("discipline", [Discipline.JUMBO, Discipline.CHECKPOINT])
def test_killed_sync_keeps_what_users_attached_to_recreated_objects(
    engine: sa.Engine, admin: psycopg.Connection[Any], discipline: Discipline
) -> None:
    """A grant and a hand-made index on recreated objects survive a sync (documented), also one that was killed
    half way and finished by the next sync: under checkpoint, the drop of an object whose attachments are
    captured commits together with its re-creation (planner.checkpoint_units)."""
    v1, v2 = family(1), family(2)

    def prepare() -> None:
        reset(engine)
        sync(engine, v1)
        with engine.begin() as conn:
            for statement in ATTACHED:
                conn.exec_driver_sql(statement)

    prepare()
    total = count_statements(engine, admin, lambda: sync(engine, v2, discipline=discipline))
    assert attachments(engine) == {"grant": True, "index": True}, "kept by an uninterrupted sync"
    problems = []
    for at in range(1, total + 1):
        prepare()
        with killing(engine, admin, at) as killer:
            run(sync, engine, v2, discipline=discipline)
        sync(engine, v2)
        kept = attachments(engine)
        if not all(kept.values()):
            lost = [what for what, ok in kept.items() if not ok]
            problems.append(
                f"killed before statement {at}/{total} ({(killer.killed or '?').strip()[:50]!r}): lost {lost}"
            )
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("discipline", ALL_DISCIPLINES)
def test_session_killed_while_a_statement_runs(
    engine: sa.Engine, admin: psycopg.Connection[Any], discipline: Discipline
) -> None:
    """Terminated in the middle of a (slow) refresh inside the sync, not between statements."""
    reset(engine)
    registry = family(1)
    slow = matview("Slow", "SELECT 1 AS one FROM pg_sleep(0.4)", schema=S)
    registry.register(slow)
    before = catalog_snapshot(engine)
    started = threading.Event()

    def watch(conn: sa.Connection, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith(f'REFRESH MATERIALIZED VIEW "{S}"."Slow"'):
            pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            threading.Timer(0.15, lambda: admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))).start()
            started.set()

    applied: list[Action] = []
    event.listen(engine, "before_cursor_execute", watch)
    try:
        _, error = run(sync, engine, registry, discipline=discipline, on_action=applied.append)
    finally:
        event.remove(engine, "before_cursor_execute", watch)
    assert started.is_set()
    assert isinstance(error, SamizdatError), repr(error)
    if discipline is Discipline.CHECKPOINT:
        expected, populated = simulate(SamizdatRegistry(), registry, applied)
        assert state_problems(expected, populated, engine) == []
        assert populated[("relation", S, "Slow", "")] is False
        assert any(d.what is DiffKind.UNPOPULATED for d in diff_database(engine, registry).differences)
    else:
        assert catalog_snapshot(engine) == before
    sync(engine, registry)
    assert converged(engine, registry) == []


# --- killed refreshes -------------------------------------------------------------------------------------------

#: Materialized views to refresh, and a query over the table that says what each must hold when fresh.
REFRESHED = {
    "Low": (f"SELECT x FROM {S}.src", "SELECT x FROM {src}"),
    "Mid": (f'SELECT sum(x) AS s FROM {S}."Low"', "SELECT sum(x) FROM {src}"),
    "High": (f'SELECT s * 10 AS t FROM {S}."Mid"', "SELECT sum(x) * 10 FROM {src}"),
    "Side": (f"SELECT count(*) AS n FROM {S}.src", "SELECT count(*) FROM {src}"),
    "Side2": (f"SELECT max(x) AS m FROM {S}.src", "SELECT max(x) FROM {src}"),
    "Top": (f'SELECT t + n AS u FROM {S}."High", {S}."Side"', "SELECT sum(x) * 10 + count(*) FROM {src}"),
}


def refresh_registry() -> SamizdatRegistry:
    classes: dict[str, type] = {}
    deps = {"Mid": ["Low"], "High": ["Mid"], "Top": ["High", "Side"]}
    for name, (select, _) in REFRESHED.items():
        after = ";\nCREATE UNIQUE INDEX ON ${samizdatname} (x)" if name == "Low" else ""
        classes[name] = matview(
            name,
            select,
            after=after,
            schema=S,
            deps_on={classes[d] for d in deps.get(name, [])},
            deps_on_unmanaged={"src"},
            refresh_concurrently=name == "Low",
        )
    registry = SamizdatRegistry()
    registry.register_all(*classes.values())
    return registry


def outdated(engine: sa.Engine) -> list[str]:
    out = []
    with engine.connect() as conn:
        for name, (_, truth) in REFRESHED.items():
            held = sorted(conn.exec_driver_sql(f'SELECT * FROM {S}."{name}"').all())
            want = sorted(conn.exec_driver_sql(truth.format(src=f"{S}.src")).all())
            if held != want:
                out.append(name)
    return out


def flagged(engine: sa.Engine, registry: SamizdatRegistry) -> set[str]:
    return {d.key.name for d in diff_database(engine, registry).differences}


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
def test_killed_refresh_leaves_no_view_a_sync_would_call_fine(
    engine: sa.Engine, admin: psycopg.Connection[Any], parallel: bool
) -> None:
    registry = refresh_registry()
    reset(engine)
    sync(engine, registry)

    def change_data() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO {S}.src (x) SELECT max(x) + 1 FROM {S}.src")

    change_data()
    total = count_statements(engine, admin, lambda: refresh(engine, registry, parallel=parallel, jobs=2))
    assert total >= len(REFRESHED)
    problems: list[str] = []
    for at in range(1, total + 1):
        reset(engine)
        sync(engine, registry)
        change_data()
        assert set(outdated(engine)) == set(REFRESHED)
        with killing(engine, admin, at) as killer:
            _, error = run(refresh, engine, registry, parallel=parallel, jobs=2)
        where = f"{'parallel' if parallel else 'serial'} refresh killed before statement {at}/{total}"
        where += f" ({(killer.killed or '?').strip()[:50]!r})"
        if error is None:
            problems.append(f"{where}: the refresh reported success")
        elif not isinstance(error, SamizdatError):
            problems.append(f"{where}: raised {type(error).__module__}.{type(error).__name__}, not a SamizdatError")
        began = any(s.lstrip().startswith("REFRESH") for s in killer.sent) or (killer.killed or "").lstrip().startswith(
            "REFRESH"
        )
        stale = outdated(engine)
        if began:
            unflagged = sorted(set(stale) - flagged(engine, registry))
            if unflagged:
                problems.append(f"{where}: not refreshed, yet diff calls them fine: {unflagged}")
        # The next sync refreshes what diff shows; a refresh then brings everything up to date.
        sync(engine, registry)
        left = sorted(set(outdated(engine)) & flagged(engine, registry))
        if left:
            problems.append(f"{where}: still out of date after the next sync: {left}")
        refresh(engine, registry, parallel=parallel, jobs=2)
        if outdated(engine) or diff_database(engine, registry).exit_code != 0:
            problems.append(f"{where}: not fixed by a refresh: {outdated(engine)}")
    assert problems == [], "\n".join(problems)


# --- locks held by other sessions -------------------------------------------------------------------------------


@contextmanager
def holding(engine: sa.Engine, statement: str) -> Iterator[None]:
    """Run ``statement`` in a transaction of another session, kept open for the block."""
    with engine.connect() as other:
        other.exec_driver_sql(statement)
        try:
            yield
        finally:
            other.rollback()


@pytest.mark.parametrize("discipline", [Discipline.CHECKPOINT, Discipline.JUMBO])
def test_lock_on_a_table_a_view_reads_times_out_naming_the_object(
    engine: sa.Engine, db_url: str, discipline: Discipline
) -> None:
    registry = family(1)
    reset(engine)
    before = catalog_snapshot(engine)
    applied: list[Action] = []
    other = sa.create_engine(db_url)
    try:
        with holding(other, f"LOCK TABLE {S}.src IN ACCESS EXCLUSIVE MODE"):
            started = time.monotonic()
            with pytest.raises(LockTimeoutError) as raised:
                sync(engine, registry, discipline=discipline, lock_timeout=0.5, on_action=applied.append)
            elapsed = time.monotonic() - started
    finally:
        other.dispose()
    snapshot = catalog_snapshot(engine)  # after the lock is gone: reading view definitions needs it too
    assert elapsed < 5, f"the sync waited {elapsed:.1f} s"
    message = str(raised.value)
    assert "lock" in message.lower()
    assert any(f'"{S}"."{name}"' in message for name in ("Base", "src")) or "src_logger" in message, message
    if discipline is Discipline.JUMBO:
        assert snapshot == before
    else:
        expected, populated = simulate(SamizdatRegistry(), registry, applied)
        assert state_problems(expected, populated, engine) == []
    # Once the lock is gone, the next sync converges.
    sync(engine, registry)
    assert converged(engine, registry) == []
    assert data_problems(engine, "v1") == []


@pytest.mark.parametrize("discipline", [Discipline.CHECKPOINT, Discipline.JUMBO])
def test_reader_of_a_view_to_drop_makes_the_sync_time_out_naming_it(
    engine: sa.Engine, db_url: str, discipline: Discipline
) -> None:
    reset(engine)
    sync(engine, family(1))
    before = catalog_snapshot(engine)
    applied: list[Action] = []
    other = sa.create_engine(db_url)
    try:
        # Reading "Top" holds a lock on it (and on what it reads) until that transaction ends.
        with holding(other, f'SELECT * FROM {S}."Top"'):
            started = time.monotonic()
            with pytest.raises(LockTimeoutError) as raised:
                sync(engine, family(2), discipline=discipline, lock_timeout=0.5, on_action=applied.append)
            elapsed = time.monotonic() - started
    finally:
        other.dispose()
    snapshot = catalog_snapshot(engine)
    assert elapsed < 5, f"the sync waited {elapsed:.1f} s"
    assert any(f'"{S}"."{name}"' in str(raised.value) for name in ("Top", "High", "Totals", "Base")), raised.value
    if discipline is Discipline.JUMBO:
        assert snapshot == before
    else:
        expected, populated = simulate(family(1), family(2), applied)
        assert state_problems(expected, populated, engine) == []
    sync(engine, family(2))
    assert converged(engine, family(2)) == []
    assert data_problems(engine, "v2") == []


# --- concurrent syncs -------------------------------------------------------------------------------------------


def expected_differences(before: SamizdatRegistry | None, after: SamizdatRegistry) -> dict[Ident, DiffKind]:
    old = {i: s["hash"] for i, s in declared_state(before).items()} if before is not None else {}
    new = {i: s["hash"] for i, s in declared_state(after).items()}
    out = {i: DiffKind.EXCESS_CODE for i in new if i not in old}
    out.update({i: DiffKind.EXCESS_DB for i in old if i not in new})
    out.update({i: DiffKind.CHANGED for i in new if i in old and old[i] != new[i]})
    return out


def run_together(db_url: str, count: int, call: Callable[[int, sa.Engine], Any]) -> dict[int, Any]:
    """Run ``call(i, engine_i)`` in ``count`` threads, each on an engine (and connection) of its own, started
    together once every one is connected; return the results by ``i``. Fails if any raised or hung."""
    engines = [sa.create_engine(db_url) for _ in range(count)]
    barrier = threading.Barrier(count)
    results: dict[int, Any] = {}
    errors: dict[int, BaseException] = {}

    def worker(i: int) -> None:
        try:
            with engines[i].connect() as conn:  # connect first, so the runs start together
                conn.exec_driver_sql("SELECT 1")
                conn.rollback()
            barrier.wait(timeout=30)
            results[i] = call(i, engines[i])
        except BaseException as exc:
            errors[i] = exc

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a sync hung (deadlock?)"
    finally:
        for e in engines:
            with suppress(Exception):
                e.dispose()
    assert errors == {}, {i: repr(e) for i, e in errors.items()}
    return results


@pytest.mark.parametrize("round_", range(3))
def test_eight_concurrent_syncs_serialize_and_the_last_one_wins(engine: sa.Engine, db_url: str, round_: int) -> None:
    reset(engine)
    versions = [family(10 * round_ + i) for i in range(8)]
    disciplines = [Discipline.CHECKPOINT, Discipline.JUMBO] * 4
    order_lock = threading.Lock()
    planned: list[int] = []  # order in which runs planned (under the advisory lock)
    completed: list[int] = []  # order in which runs completed their last action (still under the lock)

    def worker(i: int, engine_i: sa.Engine) -> Any:
        plan_of: list[Plan] = []
        done: list[Action] = []

        def on_plan(plan: Plan) -> None:
            with order_lock:
                planned.append(i)
            plan_of.append(plan)

        def on_action(action: Action) -> None:
            done.append(action)
            if len(done) == len(plan_of[0].actions):
                with order_lock:
                    completed.append(i)

        return sync(engine_i, versions[i], discipline=disciplines[i], on_plan=on_plan, on_action=on_action)

    results = run_together(db_url, len(versions), worker)
    assert sorted(planned) == list(range(len(versions))) and planned == completed
    last = completed[-1]
    assert converged(engine, versions[last]) == []
    assert data_problems(engine, f"v{10 * round_ + last}") == []
    # Every run reports what it did: the differences from the version of the run before it, all applied.
    previous: SamizdatRegistry | None = None
    for i in planned:
        result = results[i]
        assert result.committed and result.applied == result.plan.actions
        found = {(d.key.namespace, d.key.schema, d.key.name, d.key.extra): d.what for d in result.differences}
        assert found == expected_differences(previous, versions[i]), f"run {i}"
        assert not result.summary().startswith("nothing to do")
        previous = versions[i]


def test_eight_concurrent_syncs_of_the_same_version_do_the_work_once(engine: sa.Engine, db_url: str) -> None:
    """Eight instances of one application syncing the same new version at start-up: one creates everything, the
    others (planning under the lock, or finding nothing to do) create nothing twice, and nobody fails."""
    reset(engine)
    sync(engine, family(1))
    registry = family(2)
    results = run_together(
        db_url,
        8,
        lambda i, engine_i: sync(engine_i, registry, discipline=[Discipline.CHECKPOINT, Discipline.JUMBO][i % 2]),
    )
    workers = [i for i, r in results.items() if r.applied]
    assert len(workers) == 1, {i: r.summary() for i, r in results.items()}
    # Every object created or replaced once, by one worker.
    creates = [a.key for a in results[workers[0]].applied if a.verb in (Verb.CREATE, Verb.REPLACE)]
    assert sorted(creates) == sorted(set(creates))
    wanted = {d.key for d in results[workers[0]].differences if d.what.value != "excess in the database"}
    assert set(creates) == wanted and len(wanted) >= 6
    assert converged(engine, registry) == []
    assert data_problems(engine, "v2") == []

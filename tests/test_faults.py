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

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from faults_harness import (
    ALL_DISCIPLINES,
    STABLE,
    Ident,
    S,
    add_foreign_views,
    converged,
    data_problems,
    declared_state,
    definitions,
    family,
    foreign_problems,
    foreign_views,
    killing,
    mixture_problems,
    reset,
    run,
    simulate,
    state_problems,
)
from helpers import catalog_snapshot, matview
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


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


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
    clean = [definitions(engine)]
    total = count_statements(engine, admin, lambda: sync(engine, v2, discipline=discipline))
    assert total >= 20, "the v1 -> v2 sync should drop, create and refresh a fair number of objects"
    sync(engine, v2)  # complete and uninterrupted (the counted run may have been a dry run)
    clean.append(definitions(engine))
    assert clean[0] != clean[1]
    problems: list[str] = []
    partial = 0  # kills that left a checkpoint run half done (the interesting case)
    for at in range(1, total + 1):
        reset(engine)
        sync(engine, v1)
        users = add_foreign_views(engine)
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
        problems += [f"{where}: {p}" for p in foreign_problems(engine, users)]
        if discipline is Discipline.CHECKPOINT:
            partial += len(applied) > 0 and not complete
            # From the catalog alone: each object is a complete v1 or v2 one; then against what was reported.
            problems += [f"{where}: {p}" for p in mixture_problems(engine, clean)]
            expected, populated = simulate(v1, v2, applied)
            problems += [f"{where}: {p}" for p in state_problems(expected, populated, engine)]
            if not complete and diff_database(engine, v2).exit_code == 0:
                problems.append(f"{where}: diff says equal after an incomplete sync")
        elif catalog_snapshot(engine) != before:
            problems.append(f"{where}: the database changed")
        # The next sync finishes the job, around the user's view.
        sync(engine, v2)
        problems += [f"{where}, then synced: {p}" for p in converged(engine, v2) + data_problems(engine, "v2")]
        problems += [f"{where}, then synced: {p}" for p in foreign_problems(engine, users)]
        problems += [f"{where}, then synced: {p}" for p in mixture_problems(engine, clean[1:])]
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

    def prepare() -> dict[str, tuple[int, str]]:
        reset(engine)
        sync(engine, v1)
        with engine.begin() as conn:
            for statement in ATTACHED:
                conn.exec_driver_sql(statement)
        return add_foreign_views(engine)

    prepare()
    total = count_statements(engine, admin, lambda: sync(engine, v2, discipline=discipline))
    assert attachments(engine) == {"grant": True, "index": True}, "kept by an uninterrupted sync"
    problems = []
    for at in range(1, total + 1):
        users = prepare()
        with killing(engine, admin, at) as killer:
            run(sync, engine, v2, discipline=discipline)
        problems += [f"killed before statement {at}/{total}: {p}" for p in foreign_problems(engine, users)]
        sync(engine, v2)
        problems += [f"killed before statement {at}/{total}, then synced: {p}" for p in foreign_problems(engine, users)]
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
        # A user's view on top of the refreshed stack: refreshes never touch it.
        with engine.begin() as conn:
            conn.exec_driver_sql(f'CREATE VIEW {S}.user_over_top AS SELECT u FROM {S}."Top"')
        users = foreign_views(engine)
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
        problems += [f"{where}: {p}" for p in foreign_problems(engine, users)]
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
    # Every object created or replaced once, by one worker: all but those every version shares (STABLE).
    creates = [a.key for a in results[workers[0]].applied if a.verb in (Verb.CREATE, Verb.REPLACE)]
    assert sorted(creates) == sorted(set(creates))
    wanted = {d.key for d in results[workers[0]].differences if d.what.value != "excess in the database"}
    assert set(creates) == wanted and len(wanted) >= 6
    assert not any(k.name in STABLE for k in creates)
    assert converged(engine, registry) == []
    assert data_problems(engine, "v2") == []

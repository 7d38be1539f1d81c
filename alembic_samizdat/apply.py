"""Applying a plan: one path for every discipline, unit by unit.

A plan's actions come in units (:func:`~alembic_samizdat.planner.checkpoint_units`): a replacement in place, a
rebuilt stack whole (its builds, drops, creates and populates), a refresh, a grant. Under ``checkpoint`` each
unit is a transaction of its own; under ``jumbo`` and ``dryrun`` each is a savepoint of the run's one
transaction. Either way:

- a unit of one action is one batch (one round trip);
- a rebuilt stack takes its locks in a savepoint with a short ``lock_timeout``: should a reader hold one of
  them while waiting for another that the stack already took (a query reading two objects of the stack, in
  an order other than the drops'), the sync lets go of its locks, waits a moment and tries again, instead of
  leaving the reader to PostgreSQL's deadlock detector. The user's ``lock_timeout`` bounds the whole wait;
- a replacement that PostgreSQL refuses at run time (the database changed since planning) rolls its unit
  back, and what is left of the run is planned again from the database with that object rebuilt.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from . import pinned
from .errors import ExecutionError, LockTimeoutError, first_line
from .execute import (
    REFUSED_IN_PLACE,
    REPLACE_SAVEPOINT,
    Discipline,
    OnAction,
    refusal_reason,
    run_batch,
    send,
    sqlstate,
)
from .identifiers import quote_literal
from .keys import Key
from .planner import Action, Plan, Verb, checkpoint_units

#: How long one attempt at a rebuilt stack's locks may wait before letting go and trying again (ms).
LOCK_STEP_MS = 200
#: How many times a rebuilt stack lets go of its locks and tries again before it waits like any statement.
POLITE_ATTEMPTS = 8
#: lock_not_available (our short lock_timeout, or NOWAIT) and deadlock_detected: let go and try again.
_RETRY = frozenset({"55P03", "40P01"})

#: Plans the rest of a run again, from the database, with the given objects rebuilt rather than replaced.
Replan = Callable[[dict[Key, str]], Plan]


@dataclass(frozen=True)
class SwapTiming:
    """How long one materialized-view swap (see :mod:`alembic_samizdat.swap`) took, and kept readers waiting."""

    key: Key
    label: str
    #: Seconds to build and populate the new definition beside the old one; readers kept reading meanwhile.
    build_seconds: float
    #: Seconds from the end of the build to the end of its transaction: the longest any reader of the stack
    #: could wait for it (under ``jumbo``, until the whole run commits).
    locked_seconds: float

    def describe(self) -> str:
        """One line for ``sync``'s output."""
        return (
            f"swapped materialized view {self.key.display()} ({self.label}) in: built in {self.build_seconds:.3f} s "
            f"while readers read the old one, then locks held for {self.locked_seconds * 1000:.0f} ms"
        )


@dataclass
class _SwapClock:
    """Times the swaps of a run: each build as it runs, then the locks until its transaction ends."""

    done: list[SwapTiming] = field(default_factory=list)
    _open: list[tuple[Action, float, float]] = field(default_factory=list)

    @contextmanager
    def timing(self, action: Action) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if action.verb is Verb.BUILD:
            end = time.perf_counter()
            self._open.append((action, end - start, end))

    def ended(self, *, kept: bool) -> None:
        now = time.perf_counter()
        if kept:
            self.done.extend(SwapTiming(a.key, a.label, took, now - built) for a, took, built in self._open)
        self._open.clear()


class _UnitFailed(Exception):
    def __init__(self, action: Action, error: ExecutionError) -> None:
        super().__init__(str(error))
        self.action, self.error = action, error


@dataclass
class Applier:
    """Applies plans on one connection under one discipline.

    Under ``checkpoint`` the connection is in autocommit mode; otherwise it is inside the run's transaction,
    which the caller commits (then calls :meth:`ended`) or rolls back.
    """

    connection: Connection
    discipline: Discipline
    #: The user's bound on waiting for locks (seconds); ``None``: the server's own ``lock_timeout``.
    lock_timeout: float | None = None
    on_action: OnAction | None = None
    #: Actions that completed, in order.
    applied: list[Action] = field(default_factory=list)
    #: Objects whose in-place replacement PostgreSQL refused at run time, with its reason.
    refused: dict[Key, str] = field(default_factory=dict)
    #: The action whose failure stopped the run, if one did.
    failed: Action | None = None
    _clock: _SwapClock = field(default_factory=_SwapClock)
    _session_timeout: str | None = None

    @property
    def swaps(self) -> tuple[SwapTiming, ...]:
        """The swaps whose transaction committed."""
        return tuple(self._clock.done)

    def ended(self, *, kept: bool) -> None:
        """The run's transaction (``jumbo``, ``dryrun``) ended: committed when ``kept``."""
        self._clock.ended(kept=kept)

    def apply(self, plan: Plan, replan: Replan | None = None) -> Plan:
        """Apply ``plan`` unit by unit; returns the plan as it ran (see :func:`as_run`).

        Raises :class:`~alembic_samizdat.errors.ExecutionError` for the first unit that fails (rolled back
        whole); the units before it stay applied under ``checkpoint``.
        """
        first = plan
        pending = checkpoint_units(plan.actions)
        while pending:
            unit = pending.pop(0)
            try:
                self._unit(unit)
            except _UnitFailed as failed:
                why = refused_in_place(failed.action, failed.error)
                if why is None or replan is None or failed.action.key in self.refused:
                    self.failed = failed.action
                    raise failed.error from failed.error.__cause__
                self.refused[failed.action.key] = why
                pending = checkpoint_units(replan(dict(self.refused)).actions)
                continue
            self.applied.extend(unit)
            if self.on_action is not None:
                for action in unit:
                    self.on_action(action)
        return as_run(first, self.applied, self.refused)

    # --- one unit ---------------------------------------------------------------------------------------------

    @property
    def _own_transactions(self) -> bool:
        return self.discipline is Discipline.CHECKPOINT

    def _unit(self, unit: tuple[Action, ...]) -> None:
        if len(unit) == 1 and unit[0].verb is not Verb.BUILD:
            self._single(unit[0])
            return
        builds = [a for a in unit if a.verb is Verb.BUILD]
        rest = [a for a in unit if a.verb is not Verb.BUILD]
        opening = "BEGIN" if self._own_transactions else "SAVEPOINT samizdat_unit"
        bound = self._bound_ms(unit[0])
        step = LOCK_STEP_MS if bound is None else max(1, min(LOCK_STEP_MS, int(bound)))
        # Without builds, the first attempt's savepoint travels with the opening: no extra round trip.
        self._send(unit[0], opening if builds else f"{opening}; {self._attempt(step)}")
        try:
            for action in builds:
                with self._clock.timing(action):
                    self._run(action, unit)
            self._take_locks_and_run(rest, unit, step, bound, opened=not builds)
            if self._own_transactions:
                self._commit(unit)
                self._clock.ended(kept=True)
            else:
                self._send(
                    unit[-1], f"RELEASE SAVEPOINT samizdat_locks; {self._restore()}; RELEASE SAVEPOINT samizdat_unit"
                )
        except BaseException:
            with suppress(Exception):
                send(
                    self.connection,
                    "ROLLBACK"
                    if self._own_transactions
                    else "ROLLBACK TO SAVEPOINT samizdat_unit; RELEASE SAVEPOINT samizdat_unit",
                )
            if self._own_transactions:
                self._clock.ended(kept=False)
            raise

    def _single(self, action: Action) -> None:
        """One action, one batch: an implicit transaction under ``checkpoint``; a replacement inside the run's
        transaction carries a savepoint, so a refusal can fall back."""
        sql = action.sql
        if action.verb is Verb.REPLACE and not self._own_transactions:
            sql = f"SAVEPOINT {REPLACE_SAVEPOINT};\n{sql}\nRELEASE SAVEPOINT {REPLACE_SAVEPOINT};"
        try:
            run_batch(self.connection, action, sql)
        except ExecutionError as exc:
            if action.verb is Verb.REPLACE and not self._own_transactions:
                with suppress(Exception):
                    send(
                        self.connection,
                        f"ROLLBACK TO SAVEPOINT {REPLACE_SAVEPOINT}; RELEASE SAVEPOINT {REPLACE_SAVEPOINT}",
                    )
            raise _UnitFailed(action, exc) from exc.__cause__

    def _run(self, action: Action, unit: tuple[Action, ...]) -> None:
        try:
            run_batch(self.connection, action, action.sql)
        except ExecutionError as exc:
            if len(unit) > 1:
                exc.args = (f"{exc.args[0]}; the {len(unit)} actions of its transaction were rolled back",)
            raise _UnitFailed(action, exc) from exc.__cause__

    @staticmethod
    def _attempt(step: int) -> str:
        return f"SAVEPOINT samizdat_locks; SET LOCAL lock_timeout = {step}"

    def _restore(self) -> str:
        """Put the run's ``lock_timeout`` back after a stack (inside the run's transaction)."""
        value = str(int(self.lock_timeout * 1000)) if self.lock_timeout is not None else self._session_timeout
        return f"SET LOCAL lock_timeout = {quote_literal(value or '0')}"

    def _take_locks_and_run(
        self, actions: list[Action], unit: tuple[Action, ...], step: int, bound: float | None, *, opened: bool
    ) -> None:
        """Run ``actions`` in a savepoint with a short ``lock_timeout``; on a lock wait that times out (or a
        deadlock), roll back to it, let readers through, and try again. After :data:`POLITE_ATTEMPTS` tries the
        stack waits for its locks as any statement does (until the run's own bound): readers that keep taking
        the stack's objects in another order than its drops would otherwise hold it off for ever, and then
        PostgreSQL's deadlock detector picks who gives way."""
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            if attempt > POLITE_ATTEMPTS:
                # The rest of the bound, or the run's own setting when it has none.
                left = "0" if bound is None else str(max(1, int(bound - waited)))
                self._send(actions[0], f"SAVEPOINT samizdat_locks; SET LOCAL lock_timeout = {quote_literal(left)}")
            elif not opened:
                self._send(actions[0], self._attempt(step))
            opened = False
            started = time.perf_counter()
            try:
                for action in actions:
                    self._run(action, unit)
            except _UnitFailed as failed:
                cause = failed.error.__cause__
                waited += (time.perf_counter() - started) * 1000
                if cause is None or sqlstate(cause) not in _RETRY or (bound is not None and waited >= bound):
                    if cause is not None and sqlstate(cause) == "40P01":
                        raise _UnitFailed(failed.action, self._deadlock(failed)) from cause
                    raise
                self._send(failed.action, "ROLLBACK TO SAVEPOINT samizdat_locks")
                # Readers queued behind our locks run now; back off a little, more after each try.
                pause = random.uniform(0.01, min(0.05 * attempt, 0.5))
                time.sleep(pause)
                waited += pause * 1000
                continue
            return

    def _send(self, action: Action, sql: str) -> None:
        """A statement of the unit's own (savepoints, settings); its failure fails the unit, naming ``action``."""
        try:
            run_batch(self.connection, action, sql)
        except ExecutionError as exc:
            raise _UnitFailed(action, exc) from exc.__cause__

    def _deadlock(self, failed: _UnitFailed) -> ExecutionError:
        return LockTimeoutError(
            f"{failed.error.args[0]} (a deadlock with another session, repeatedly, until lock_timeout; retry "
            "later, or raise --lock-timeout)",
            sql=failed.error.sql,
            action=failed.error.action,
        )

    def _bound_ms(self, action: Action) -> float | None:
        """How long a stack may wait for its locks in all: the user's ``lock_timeout``, else the session's."""
        if self.lock_timeout is not None:
            return self.lock_timeout * 1000
        if self._session_timeout is None:
            sql = "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'lock_timeout'"
            try:
                rows = pinned.query(self.connection, sql)
            except DBAPIError as exc:
                error = ExecutionError(f"reading lock_timeout failed: {first_line(exc)}", sql=sql)
                raise _UnitFailed(action, error) from exc
            self._session_timeout = str(rows[0][0])
        session = int(self._session_timeout)
        return float(session) if session > 0 else None

    def _commit(self, unit: tuple[Action, ...]) -> None:
        try:
            send(self.connection, "COMMIT")
        except DBAPIError as exc:
            error = ExecutionError(
                f"committing {len(unit)} actions ({unit[0].describe()} … {unit[-1].describe()}) failed: "
                f"{first_line(exc)}. None of them were kept; the next sync does them again",
                sql="COMMIT",
                action=unit[-1].describe(),
            )
            raise _UnitFailed(unit[-1], error) from exc


def refused_in_place(action: Action, exc: BaseException) -> str | None:
    """Why PostgreSQL refused to replace ``action``'s object in place, when that is what ``exc`` says."""
    if action.verb is not Verb.REPLACE:
        return None
    cause = exc.__cause__ if isinstance(exc, ExecutionError) else exc
    if cause is None or sqlstate(cause) not in REFUSED_IN_PLACE:
        return None
    return refusal_reason(cause)


def as_run(first: Plan, applied: list[Action], refused: dict[Key, str]) -> Plan:
    """The plan as it ran: the first one, or, after a refused in-place replacement, the actions that ran."""
    return Plan(first.differences, tuple(applied), first.warnings) if refused else first

"""Random workloads converge through Alembic, and a killed ``alembic upgrade`` changes nothing.

The property reuses ``test_convergence``'s generator (random registries and edit sequences over awkward names,
schemas and every kind of object) and its catalog checks, but every step goes through a real Alembic project
(example_project's env.py, run in-process, handed one engine for all commands): the registry is written into the project's models module,
``alembic revision --autogenerate`` writes a revision, and ``alembic upgrade head`` applies it. Then the catalog
is read and compared with the declarations, ``alembic check`` must find nothing left to do, ``alembic downgrade
-1`` must give back exactly the catalog of before the upgrade (compared by reading the catalog, comments and
index names included), and a second ``upgrade`` the catalog of after it. Objects that are not ours (tables, a
user's view and trigger, another scope's samizdats, users' views on top of ours) are never touched; when a user's
view stands on something the step must drop, autogenerate refuses with ``UnmanagedDependentError`` and changes
nothing.

Fault injection (with example_project's env.py unchanged: a new engine per command, as the ``alembic`` command
line has): the server process of ``alembic upgrade head`` is terminated (``pg_terminate_backend`` from a
second connection, with ``test_faults``' ``Killer``) before chosen statements of a revision that drops, recreates
and refreshes a stack of objects. Alembic runs the whole upgrade in one transaction on PostgreSQL, so afterwards
``alembic_version`` and the catalog must be exactly as before, and the next ``upgrade head`` must converge.

Cost: each step runs five Alembic commands, so the ``ci`` profile (200 examples) makes at most one edit per
example where ``test_convergence`` makes up to five; ``HYPOTHESIS_PROFILE=long`` runs 2,000 examples of up to
five edits, and checks that the chain of revisions ends where one revision from empty gets to. Failing examples
go to the same ``.hypothesis/examples`` database as ``test_convergence``'s.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import Script
from convergence_harness import (
    PROFILE,
    SCHEMAS,
    Model,
    World,
    build,
    check_catalog,
    describe_foreign_change,
    draw_edit,
    draw_model,
    exercise,
    normalized,
)
from faults_harness import converged, data_problems, family, killing, run
from faults_harness import reset as reset_app_schema
from helpers import alembic_project, catalog_snapshot
from hypothesis import event, given, note
from hypothesis import strategies as st

from alembic_samizdat import SamizdatError, SamizdatRegistry, UnmanagedDependentError, diff_database

#: The models module env.py imports ``metadata`` from (unique, so no other test's module is picked up).
MODULE = "convergence_alembic_models"

#: Each step runs five Alembic commands, two of them autogenerate (about 70 ms each here with a shared engine).
#: Under ``ci`` an example makes at most one edit and skips the closing "same state from empty" check, so that
#: 200 examples take about 90 s on a 2-core machine; ``long`` does it all.
LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
MAX_EDITS = 5 if LONG else 1

#: The models module: the model's data, built into classes on every import, like a real project's models.
MODELS_SOURCE = """\
from sqlalchemy import MetaData
from convergence_harness import Model, Obj, build

from alembic_samizdat import SamizdatRegistry

metadata = MetaData()
registry = SamizdatRegistry(metadata)
registry.register_all(*build({model}))
"""


#: example_project's env.py line that creates the engine, and the same taking a shared one when the caller
#: passes it (Alembic's documented way for programmatic use: ``Config.attributes``).
ENGINE_LINE = "connectable = create_engine(database_url(), poolclass=pool.NullPool)"
SHARED_ENGINE_LINE = 'connectable = config.attributes.get("engine") or ' + ENGINE_LINE.removeprefix("connectable = ")


class AlembicProject:
    """example_project's Alembic environment in ``root``; its models module is rewritten for every step.

    With ``engine``, env.py uses that engine instead of creating one per command: still a new connection per
    command (it must use ``NullPool``), but SQLAlchemy's compiled-statement cache survives, which halves the
    cost of an autogenerate (Alembic's table reflection compiles a dozen queries each time).
    """

    def __init__(self, root: Path, module: str, engine: sa.Engine | None = None) -> None:
        self.root = root
        self.module = module
        self.cfg = alembic_project(root, module)
        self.versions = root / "migrations" / "versions"
        if engine is not None:
            assert isinstance(engine.pool, sa.pool.NullPool), "a pooled connection would carry session state over"
            env = root / "migrations" / "env.py"
            source = env.read_text()
            assert source.count(ENGINE_LINE) == 1, "example_project's env.py changed: update ENGINE_LINE"
            env.write_text(source.replace(ENGINE_LINE, SHARED_ENGINE_LINE))
            self.cfg.attributes["engine"] = engine

    def write(self, source: str) -> None:
        (self.root / f"{self.module}.py").write_text(source)
        sys.modules.pop(self.module, None)

    def run(self, cmd: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # env.py imports the models module: a fresh import each time, as a new `alembic` process would do.
        sys.modules.pop(self.module, None)
        try:
            return cmd(self.cfg, *args, **kwargs)
        finally:
            sys.modules.pop(self.module, None)

    def revision(self, message: str) -> Script:
        script = self.run(command.revision, message=message, autogenerate=True)
        assert isinstance(script, Script)
        return script

    def revision_files(self) -> set[str]:
        return {p.name for p in self.versions.glob("*.py")}

    def clear(self) -> None:
        """Forget every revision (the database's ``alembic_version`` is dropped by the caller)."""
        shutil.rmtree(self.versions)
        self.versions.mkdir()


def upgrade_ops(script: Script) -> list[str]:
    """The ``op.…`` lines of a revision's ``upgrade()``, shortened (for Hypothesis notes)."""
    assert script.path is not None
    body = Path(script.path).read_text().split("def upgrade()")[1].split("def downgrade()")[0]
    return [line.strip()[:90] for line in body.splitlines() if line.strip().startswith("op.")]


def alembic_version(engine: sa.Engine) -> str | None:
    """The revision ``alembic_version`` records, or None (no table, or no row)."""
    with engine.connect() as conn:
        if conn.exec_driver_sql("SELECT to_regclass('public.alembic_version')").scalar() is None:
            return None
        return conn.exec_driver_sql("SELECT version_num FROM public.alembic_version").scalar()


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """``catalog_snapshot`` without Alembic's own table, which the first upgrade creates and no downgrade drops
    (its content is compared on its own, with :func:`alembic_version`)."""
    return {
        part: [r for r in found if not (len(r) > 1 and r[0] == "public" and str(r[1]).startswith("alembic_version"))]
        for part, found in catalog_snapshot(engine).items()
    }


def snapshot_difference(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> str:
    lines = []
    for part in before:
        gone = sorted(set(map(repr, before[part])) - set(map(repr, after[part])))
        new = sorted(set(map(repr, after[part])) - set(map(repr, before[part])))
        lines += [f"{part}: - {r}" for r in gone] + [f"{part}: + {r}" for r in new]
    return "\n".join(lines)


# --- the property -----------------------------------------------------------------------------------------------


class AlembicWorld(World):
    """``test_convergence``'s world (schemas, tables, foreign objects, users' views), synced through Alembic."""

    def __init__(self, engine: sa.Engine, project: AlembicProject) -> None:
        super().__init__(engine)
        self.project = project
        self.steps = 0

    def reset(self) -> None:
        self.project.clear()
        with self.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS public.alembic_version")
        super().reset()

    def migrate(self, old: Model, new: Model) -> None:
        """One step: autogenerate a revision from ``old``'s database to ``new``, upgrade, check, downgrade,
        upgrade again."""
        self.steps += 1
        registry = build(new)
        self.project.write(MODELS_SOURCE.format(model=repr(new)))
        blockers = self.blockers(old, new)
        note(f"blockers: {blockers}")
        if blockers:
            event("a user's view stopped an autogenerate")
            before, files = snapshot(self.engine), self.project.revision_files()
            with pytest.raises(UnmanagedDependentError) as raised:
                self.project.revision(f"step {self.steps}, refused")
            assert snapshot(self.engine) == before, "a refused autogenerate changed the database"
            assert self.project.revision_files() == files, "a refused autogenerate wrote a revision"
            for name in blockers:
                assert name in str(raised.value)
            # The user gets out of the way (the documented fix), and the step goes on.
            for name in blockers:
                self.drop_user_view(name)
        script = self.project.revision(f"step {self.steps}")
        note("revision:\n  " + "\n  ".join(upgrade_ops(script)))
        before, version_before = snapshot(self.engine), alembic_version(self.engine)
        self.project.run(command.upgrade, "head")
        assert alembic_version(self.engine) == script.revision
        self.verify(new, registry)
        after = snapshot(self.engine)
        self.project.run(command.downgrade, "-1")
        assert alembic_version(self.engine) == version_before
        restored = snapshot(self.engine)
        assert restored == before, "downgrade did not restore the catalog:\n" + snapshot_difference(before, restored)
        self.project.run(command.upgrade, "head")
        again = snapshot(self.engine)
        assert again == after, "upgrade after downgrade differs:\n" + snapshot_difference(after, again)

    def verify(self, model: Model, registry: SamizdatRegistry) -> None:
        catalog = self.catalog()
        assert catalog.foreign == self.foreign, describe_foreign_change(self.foreign, catalog.foreign)
        check_catalog(model, registry, catalog)
        # Nothing left to do: `alembic check` runs autogenerate and raises AutogenerateDiffsDetected otherwise.
        self.project.run(command.check)
        assert diff_database(self.engine, registry).exit_code == 0


@pytest.fixture
def alembic_world(
    engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[AlembicWorld]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    alembic_engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    yield AlembicWorld(engine, AlembicProject(tmp_path, MODULE, alembic_engine))
    alembic_engine.dispose()
    sys.modules.pop(MODULE, None)


@PROFILE
@given(data=st.data())
def test_random_registries_and_edits_converge_through_alembic(alembic_world: AlembicWorld, data: st.DataObject) -> None:
    """From empty, through random edits, each one an autogenerated revision: after every upgrade the catalog is
    the declared state, `alembic check` passes, nothing that is not ours moved, downgrade -1 restores the
    catalog exactly and upgrade reaches the same state again."""
    world = alembic_world
    world.reset()
    model = draw_model(data.draw)
    note(f"initial registry:\n{model.describe()}")
    world.migrate(Model(), model)
    if data.draw(st.integers(0, 2), label="user view on top") == 0:
        target = data.draw(st.sampled_from([o for o in model.objs.values() if o.relation or o.callable] or [None]))
        if target is not None:
            world.add_user_view(model, target, data.draw(st.sampled_from(SCHEMAS)))
    edits = data.draw(st.integers(0, MAX_EDITS), label="edits")
    for _ in range(edits):
        new = model.copy()
        what = draw_edit(data.draw, new, world)
        note(f"edit: {what}\n{new.describe()}")
        world.migrate(model, new)
        model = new
    exercise(world.engine, model)
    if edits and LONG:
        # The chain of revisions ends where one revision from empty gets to.
        reached = normalized(world.catalog())
        world.reset()
        world.migrate(Model(), model)
        assert normalized(world.catalog()) == reached


# --- a killed upgrade -------------------------------------------------------------------------------------------

FAULT_MODULE = "faults_alembic_models"

FAULT_SOURCE = """\
from sqlalchemy import MetaData
from faults_harness import family

from alembic_samizdat import SamizdatRegistry

metadata = MetaData()
registry = SamizdatRegistry(metadata)
registry.register_all(*family({version}))
"""


def kill_points(statements: list[str]) -> dict[str, int]:
    """1-based positions in the upgrade's statements: the first one (an Alembic read), the first, middle and last
    statement of the revision's operations (between Alembic's read of ``alembic_version`` and its update), the
    update of ``alembic_version``, and the COMMIT."""
    upper = [s.lstrip().upper() for s in statements]
    (read,) = [i for i, s in enumerate(upper, 1) if s.startswith("SELECT ALEMBIC_VERSION.VERSION_NUM")]
    (version,) = [i for i, s in enumerate(upper, 1) if s.startswith("UPDATE ALEMBIC_VERSION")]
    assert upper[-1] == "COMMIT" and upper.count("COMMIT") == 1, "the upgrade is not one transaction"
    ops = list(range(read + 1, version))
    assert len(ops) >= 8, "v1 -> v2 should replace, drop, create and refresh objects"
    return {
        "first": 1,
        "first op": ops[0],
        "middle op": ops[len(ops) // 2],
        "last op": ops[-1],
        "version update": version,
        "commit": len(statements),
    }


@pytest.fixture
def admin(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def fault_project(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AlembicProject]:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield AlembicProject(tmp_path, FAULT_MODULE)
    sys.modules.pop(FAULT_MODULE, None)


@pytest.mark.parametrize("point", ["first", "first op", "middle op", "last op", "version update", "commit"])
def test_killed_upgrade_changes_nothing_and_the_next_upgrade_converges(
    engine: sa.Engine, admin: psycopg.Connection[Any], fault_project: AlembicProject, point: str
) -> None:
    """v1 -> v2 of test_faults' family (drops, creates and refreshes through a stack of views), its server
    process terminated before one statement: alembic_version and the catalog stay as they were, and the next
    upgrade reaches v2 (data included) with nothing left for `alembic check`."""
    project = fault_project
    reset_app_schema(engine)
    project.write(FAULT_SOURCE.format(version=1))
    first = project.revision("v1")
    project.run(command.upgrade, "head")
    project.write(FAULT_SOURCE.format(version=2))
    second = project.revision("v2")

    # Count the statements of a complete upgrade, then go back. The listeners go on the Engine class: env.py
    # creates an engine of its own for every command.
    with killing(sa.Engine, admin, None) as counter:  # type: ignore[arg-type]
        project.run(command.upgrade, "head")
    statements = [s.strip() for s in counter.sent]
    at = kill_points(statements)[point]
    project.run(command.downgrade, first.revision)
    assert alembic_version(engine) == first.revision

    before = snapshot(engine)
    with killing(sa.Engine, admin, at) as killer:  # type: ignore[arg-type]
        _, error = run(project.run, command.upgrade, "head")
    where = f"killed before statement {at}/{len(statements)} ({(killer.killed or '?').strip()[:80]!r})"
    assert killer.killed is not None, where
    # The lost connection surfaces as the driver's error (Alembic does not wrap what operations raise).
    assert isinstance(error, sa.exc.DBAPIError | SamizdatError), f"{where}: the upgrade raised {error!r}"
    assert alembic_version(engine) == first.revision, f"{where}: alembic_version moved"
    after = snapshot(engine)
    assert after == before, f"{where}: the database changed:\n" + snapshot_difference(before, after)

    # The next upgrade does the whole job.
    project.run(command.upgrade, "head")
    assert alembic_version(engine) == second.revision
    assert converged(engine, family(2)) + data_problems(engine, "v2") == []
    project.run(command.check)

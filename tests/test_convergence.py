"""Random workloads converge: property-based tests of ``sync`` on a real PostgreSQL.

Hypothesis generates registries (views, materialized views with indexes after the postamble, functions with
overloads, trigger functions, triggers on tables and ``INSTEAD OF`` triggers on managed views, autorefresh through
``refresh_triggers``) whose SQL really reads what ``deps_on`` declares, with mixed-case, quoted, unicode and
63-byte names spread over several schemas, and then random edit sequences. After every step the catalog itself is
read and compared with the declarations (never the plan): the set of signed objects, their definitions (a token in
every template shows up in the catalog), their signature hashes, indexes, population, triggers and the generated
autorefresh sidekicks. A second sync must have nothing to do and ``diff_database`` must exit 0.

Every database also holds objects that are not ours: tables, a user's view on a table, a user's trigger, another
scope's samizdats and sometimes a user's view on top of one of ours. They are never dropped or altered (compared
by oid and definition); a step that must drop something under a user's view raises ``UnmanagedDependentError`` and
changes nothing.

Profiles: ``HYPOTHESIS_PROFILE=ci`` (default, 200 examples per property) or ``long`` (2,000). Failing examples are
kept under ``.hypothesis/examples`` at the repository root and replayed first on the next run.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from convergence_harness import (
    PROFILE,
    SCHEMAS,
    Model,
    World,
    build,
    draw_edit,
    draw_model,
    exercise,
    normalized,
)
from hypothesis import event, given, note
from hypothesis import strategies as st

from alembic_samizdat import Discipline, sync

# --- the properties ---------------------------------------------------------------------------------------------

DISCIPLINES = st.sampled_from((Discipline.CHECKPOINT, Discipline.CHECKPOINT, Discipline.JUMBO))
#: Sometimes a dry run first, which must change nothing.
DRY_FIRST = st.integers(0, 3).map(lambda n: n == 3)


@pytest.fixture
def world(engine: sa.Engine) -> World:
    return World(engine)


@PROFILE
@given(data=st.data())
def test_random_registries_and_edits_converge(world: World, data: st.DataObject) -> None:
    """From empty, through random edits: after each sync the catalog is the declared state, a second sync does
    nothing, diff says equal, and nothing that is not ours moved; a user's view on top of something that must
    be dropped stops the sync with nothing changed."""
    world.reset()
    model = draw_model(data.draw)
    note(f"initial registry:\n{model.describe()}")
    world.step(Model(), model, data.draw(DISCIPLINES, label="discipline"), data.draw(DRY_FIRST, label="dry"))
    if data.draw(st.integers(0, 2), label="user view on top") == 0:
        target = data.draw(st.sampled_from([o for o in model.objs.values() if o.relation or o.callable] or [None]))
        if target is not None:
            world.add_user_view(model, target, data.draw(st.sampled_from(SCHEMAS)))
    edits = data.draw(st.integers(0, 5), label="edits")
    for _ in range(edits):
        # Views, functions and triggers on tables (ALTER TABLE … DISABLE TRIGGER does not take a view).
        editable = [o for o in model.objs.values() if o.kind != "matview" and not isinstance(o.target, int)]
        if editable and data.draw(st.integers(0, 3), label="hand edit") == 0:
            target = data.draw(st.sampled_from(editable), label="hand-edited")
            event("an object was changed by hand")
            note(f"hand edit of {model.ident(target)}")
            world.hand_edit(model, target)
        new = model.copy()
        what = draw_edit(data.draw, new, world)
        note(f"edit: {what}\n{new.describe()}")
        world.step(model, new, data.draw(DISCIPLINES, label="discipline"), data.draw(DRY_FIRST, label="dry"))
        model = new
    # What was created works: DML fires every trigger, every view can be read.
    exercise(world.engine, model)
    if edits:
        # Where we got to does not depend on the way: a fresh database synced to the final registry is the same.
        reached = normalized(world.catalog())
        world.reset()
        sync(world.engine, build(model))
        assert normalized(world.catalog()) == reached

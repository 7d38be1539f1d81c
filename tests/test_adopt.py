"""Taking over objects created by the real DBSamizdat 0.11.2 (from PyPI), without dropping unchanged ones."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa

from alembic_samizdat import NameClashError, SamizdatRegistry, sync


def dbsamizdat_cli() -> str | None:
    """The DBSamizdat CLI: $SAMIZDAT_TEST_DBSAMIZDAT (what .ci/run installs), a local venv, or PATH."""
    for candidate in (
        os.environ.get("SAMIZDAT_TEST_DBSAMIZDAT"),
        "/tmp/dbsz/bin/dbsamizdat",
        shutil.which("dbsamizdat"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


CLI = dbsamizdat_cli()
needs_dbsamizdat = pytest.mark.skipif(
    CLI is None,
    reason="DBSamizdat 0.11.2 is not installed (.ci/run installs it and sets SAMIZDAT_TEST_DBSAMIZDAT)",
)

# Written the way DBSamizdat's README shows it: string.Template templates ($$$$ for $$), every documented attribute.
MODULE = '''
from {package} import SamizdatView, SamizdatMaterializedView, SamizdatFunction, SamizdatTrigger


class Salutation(SamizdatView):
    deps_on_unmanaged = {{"people"}}
    sql_template = """
        ${{preamble}}
        SELECT format('Hi %s!', name) AS utterance FROM people
        ${{postamble}}
        """


class shout(SamizdatFunction):
    function_arguments_signature = "t text"
    sql_template = """
        ${{preamble}}
        RETURNS text LANGUAGE plpgsql AS $$$$ BEGIN RETURN upper($$1) || '{bang}'; END $$$$
        ${{postamble}}
        """


class Loud(SamizdatMaterializedView):
    deps_on = {{Salutation, shout}}
    refresh_concurrently = True
    sql_template = """
        ${{preamble}}
        SELECT public.shout(utterance) AS loud FROM "Salutation"
        ${{postamble}}
        CREATE UNIQUE INDEX ON ${{samizdatname}} (loud)
        """


class noop(SamizdatFunction):
    sql_template = """
        ${{preamble}}
        RETURNS trigger LANGUAGE plpgsql AS $$$$ BEGIN RETURN NEW; END $$$$
        ${{postamble}}
        """


class PeopleNoop(SamizdatTrigger):
    on_table = "people"
    condition = "BEFORE INSERT"
    deps_on = {{noop}}
    sql_template = """
        ${{preamble}}
        FOR EACH ROW EXECUTE FUNCTION public.noop()
        ${{postamble}}
        """
'''


def oids(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT relname, oid::bigint FROM pg_class WHERE relname IN ('Salutation', 'Loud') "
            "UNION ALL SELECT proname, oid::bigint FROM pg_proc WHERE proname IN ('shout', 'noop') "
            "UNION ALL SELECT tgname, oid::bigint FROM pg_trigger WHERE tgname = 'PeopleNoop'"
        ).all()
    return {str(r[0]): int(r[1]) for r in rows}


def comments(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return [str(r[0]) for r in conn.exec_driver_sql("SELECT description FROM pg_description").all()]


@pytest.fixture
def created_by_dbsamizdat(engine: sa.Engine, dsn: str, tmp_path: Path) -> Path:
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (name text); INSERT INTO people VALUES ('ada')")
    module = tmp_path / "legacy.py"
    module.write_text(textwrap.dedent(MODULE.format(package="dbsamizdat", bang="!")))
    url = engine.url.set(drivername="postgresql")
    done = subprocess.run(
        [str(CLI), "sync", url.render_as_string(hide_password=False), str(module)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(c.startswith('{"dbsamizdat"') for c in comments(engine))
    return tmp_path


def registry_for(tmp_path: Path, bang: str) -> SamizdatRegistry:
    module = tmp_path / f"ours_{bang == '!'}.py"
    module.write_text(textwrap.dedent(MODULE.format(package="alembic_samizdat.compat.dbsamizdat", bang=bang)))
    registry = SamizdatRegistry()
    registry.load(str(module))
    return registry


@needs_dbsamizdat
def test_without_adopt_dbsamizdat_objects_are_foreign(engine: sa.Engine, created_by_dbsamizdat: Path) -> None:
    before = oids(engine)
    with pytest.raises(NameClashError, match="--adopt dbsamizdat"):
        sync(engine, registry_for(created_by_dbsamizdat, "!"))
    assert oids(engine) == before


@needs_dbsamizdat
def test_diff_before_adoption_names_dbsamizdats_objects(
    engine: sa.Engine, created_by_dbsamizdat: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from alembic_samizdat.cli import main

    module = created_by_dbsamizdat / "ours_diff.py"
    module.write_text(textwrap.dedent(MODULE.format(package="alembic_samizdat.compat.dbsamizdat", bang="!")))
    url = engine.url.render_as_string(hide_password=False)
    assert main(["diff", url, str(module)]) == 102
    lines = capsys.readouterr().out.splitlines()
    taken = [line for line in lines if "DBSamizdat's object of this name" in line]
    assert len(taken) == 5 and all("`samizdat sync --adopt dbsamizdat` takes it over" in line for line in taken)
    assert main(["sync", "-q", "--adopt", "dbsamizdat", url, str(module)]) == 0
    assert main(["diff", url, str(module)]) == 0


@needs_dbsamizdat
def test_adopt_resigns_unchanged_objects_in_place(engine: sa.Engine, created_by_dbsamizdat: Path) -> None:
    before = oids(engine)
    result = sync(engine, registry_for(created_by_dbsamizdat, "!"), adopt="dbsamizdat")
    adopted = {a.key.name for a in result.applied if a.verb.value == "adopt"}
    assert {"Salutation", "shout", "Loud", "noop", "PeopleNoop"} <= adopted
    assert not [a for a in result.applied if a.verb.value == "drop" and a.key.name in adopted]
    assert {k: v for k, v in oids(engine).items() if k in before} == before  # nothing was recreated
    assert not any(c.startswith('{"dbsamizdat"') for c in comments(engine))
    assert not sync(engine, registry_for(created_by_dbsamizdat, "!")).plan.actions
    with engine.connect() as conn:
        assert conn.exec_driver_sql('SELECT loud FROM "Loud"').scalar() == "HI ADA!!"


@needs_dbsamizdat
def test_adopt_replaces_changed_objects(engine: sa.Engine, created_by_dbsamizdat: Path) -> None:
    before = oids(engine)
    result = sync(engine, registry_for(created_by_dbsamizdat, "?"), adopt="dbsamizdat")
    done = {(a.verb.value, a.key.name) for a in result.applied}
    # The function changed: replaced in place; Loud reads it, so it is refreshed.
    assert {("replace", "shout"), ("refresh", "Loud")} <= done
    after = oids(engine)
    assert after["Salutation"] == before["Salutation"] and after["shout"] == before["shout"]
    with engine.connect() as conn:
        assert conn.exec_driver_sql('SELECT loud FROM "Loud"').scalar() == "HI ADA!?"


# --- objects created without a signature, as alembic_utils does (it runs the definition it is given) ---

UNSIGNED_SQL = """
CREATE TABLE people (name text);
CREATE FUNCTION public.shout(t text) RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN upper(t) || '!'; END $$;
CREATE VIEW public."Salutation" AS SELECT format('Hi %s!', name) AS utterance FROM people;
CREATE MATERIALIZED VIEW public."Loud" AS SELECT public.shout(utterance) AS loud FROM "Salutation";
"""

NATIVE = '''
from alembic_samizdat import SamizdatFunction, SamizdatMaterializedView, SamizdatView


class shout(SamizdatFunction):
    function_arguments_signature = "t text"
    sql_template = """${preamble} RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN upper(t) || 'BANG'; END $$"""


class Salutation(SamizdatView):
    deps_on_unmanaged = {"people"}
    sql_template = """${preamble} SELECT format('Hi %s!', name) AS utterance FROM people ${postamble}"""


class Loud(SamizdatMaterializedView):
    deps_on = {Salutation, shout}
    sql_template = """${preamble} SELECT public.shout(utterance) AS loud FROM "Salutation" ${postamble}"""
'''


@pytest.mark.parametrize("bang", ["!", "?"])
def test_adopt_unsigned_objects_when_they_match(engine: sa.Engine, db_url: str, tmp_path: Path, bang: str) -> None:
    from alembic_samizdat.adopt import AdoptionRefusedError
    from alembic_samizdat.api import adopt
    from alembic_samizdat.cli import main

    with engine.begin() as conn:
        conn.exec_driver_sql(UNSIGNED_SQL, execution_options={"no_parameters": True})
    module = tmp_path / f"native_{bang == '!'}.py"
    module.write_text(NATIVE.replace("BANG", bang))
    registry = SamizdatRegistry()
    registry.load(str(module))
    before = oids(engine)
    with pytest.raises(NameClashError):
        sync(engine, registry)
    if bang == "?":
        with pytest.raises(AdoptionRefusedError) as caught:
            adopt(engine, registry)
        diff = next(iter(caught.value.differences.values()))
        assert "'!'" in diff and "'?'" in diff
        assert main(["adopt", db_url, str(module)]) == 1
        assert not any(c.startswith('{"alembic_samizdat"') for c in comments(engine))  # nothing signed
        return
    assert main(["adopt", "-q", db_url, str(module)]) == 0
    assert oids(engine) == before
    result = sync(engine, registry)
    assert [a.verb.value for a in result.applied] == []  # the matview is populated, everything is ours
    assert not sync(engine, registry).plan.actions


def alembic_utils_python() -> str | None:
    """A Python with alembic_utils 0.8.8: $SAMIZDAT_TEST_ALEMBIC_UTILS (what .ci/run installs) or a local venv."""
    for candidate in (os.environ.get("SAMIZDAT_TEST_ALEMBIC_UTILS"), "/tmp/autils/bin/python"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


# The same objects, declared the alembic_utils way and created by alembic_utils' own create statements.
ALEMBIC_UTILS_SCRIPT = """
import sys
import sqlalchemy as sa
from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_view import PGView
from alembic_utils.pg_materialized_view import PGMaterializedView

entities = [
    PGFunction(schema="public", signature="shout(t text)",
               definition="RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN upper(t) || '!'; END $$"),
    PGView(schema="public", signature='"Salutation"',
           definition="SELECT format('Hi %s!', name) AS utterance FROM people"),
    PGMaterializedView(schema="public", signature='"Loud"',
                       definition='SELECT public.shout(utterance) AS loud FROM "Salutation"', with_data=True),
]
engine = sa.create_engine(sys.argv[1])
with engine.begin() as conn:
    for entity in entities:
        conn.execute(entity.to_sql_statement_create())
"""


@pytest.mark.skipif(
    alembic_utils_python() is None,
    reason="alembic_utils 0.8.8 is not installed (.ci/run installs it and sets SAMIZDAT_TEST_ALEMBIC_UTILS)",
)
def test_adopt_objects_created_by_alembic_utils(engine: sa.Engine, db_url: str, tmp_path: Path) -> None:
    from alembic_samizdat.cli import main

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (name text); INSERT INTO people VALUES ('ada')")
    script = tmp_path / "create_with_alembic_utils.py"
    script.write_text(ALEMBIC_UTILS_SCRIPT)
    done = subprocess.run(
        [str(alembic_utils_python()), str(script), db_url], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    module = tmp_path / "ours_after_alembic_utils.py"
    module.write_text(NATIVE.replace("BANG", "!"))
    before = oids(engine)
    assert {"shout", "Salutation", "Loud"} <= set(before)
    assert main(["adopt", "-q", db_url, str(module)]) == 0
    assert oids(engine) == before  # signed in place
    assert main(["diff", db_url, str(module)]) == 0


# --- adoption on real schemas: indexes named in templates, OUT parameters ---

REAL_SQL = """
CREATE TABLE rental (id integer PRIMARY KEY, category text NOT NULL, amount numeric NOT NULL);
INSERT INTO rental VALUES (1, 'drama', 2.5), (2, 'comedy', 3), (3, 'drama', 4);
CREATE MATERIALIZED VIEW public.rental_by_category AS
    SELECT category, sum(amount) AS total FROM rental GROUP BY category;
CREATE UNIQUE INDEX rental_category ON public.rental_by_category (category);
CREATE INDEX rental_total_by_hand ON public.rental_by_category (total);
CREATE FUNCTION public.category_total(p_category text, OUT p_total numeric, OUT p_count bigint)
    LANGUAGE sql STABLE AS $$ SELECT sum(amount), count(*) FROM rental WHERE category = p_category $$;
"""

REAL_MODULE = '''
from alembic_samizdat import SamizdatFunction, SamizdatMaterializedView


class rental_by_category(SamizdatMaterializedView):
    deps_on_unmanaged = {"rental"}
    refresh_concurrently = True
    sql_template = """
        ${preamble}
        SELECT category, sum(amount) AS total FROM rental GROUP BY category
        ${postamble}
        CREATE UNIQUE INDEX rental_category ON ${samizdatname} (category)
    """


class category_total(SamizdatFunction):
    # As DBSamizdat documents it: the IN arguments identify the function, the full list creates it.
    function_arguments_signature = "p_category text"
    function_arguments = "p_category text, OUT p_total numeric, OUT p_count bigint"
    sql_template = """
        ${preamble}
        LANGUAGE sql STABLE AS $$ SELECT sum(amount), count(*) FROM rental WHERE category = p_category $$
        ${postamble}
    """
'''


def test_adopt_a_real_schema_with_a_named_index_and_out_parameters(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    from alembic_samizdat.cli import main

    with engine.begin() as conn:
        conn.exec_driver_sql(REAL_SQL, execution_options={"no_parameters": True})
    module = tmp_path / "real.py"
    module.write_text(REAL_MODULE)
    with engine.connect() as conn:
        before = dict(
            conn.exec_driver_sql(
                "SELECT relname, oid::bigint FROM pg_class WHERE relname IN ('rental_by_category', 'rental_category') "
                "UNION ALL SELECT proname, oid::bigint FROM pg_proc WHERE proname = 'category_total'"
            ).all()
        )
    assert len(before) == 3
    assert main(["adopt", "-q", db_url, str(module)]) == 0
    with engine.connect() as conn:
        signed = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_description WHERE starts_with(description, '{\"alembic_samizdat\"') AND objoid IN "
            "(SELECT oid FROM pg_class WHERE relname = 'rental_by_category' "
            "UNION ALL SELECT oid FROM pg_proc WHERE proname = 'category_total')"
        ).scalar()
    assert signed == 2
    assert main(["diff", db_url, str(module)]) == 0
    registry = SamizdatRegistry()
    registry.load(str(module))
    assert not sync(engine, registry).plan.actions
    with engine.connect() as conn:
        after = dict(
            conn.exec_driver_sql(
                "SELECT relname, oid::bigint FROM pg_class WHERE relname IN ('rental_by_category', 'rental_category') "
                "UNION ALL SELECT proname, oid::bigint FROM pg_proc WHERE proname = 'category_total'"
            ).all()
        )
        assert conn.exec_driver_sql("SELECT * FROM category_total('drama')").one() == (6.5, 2)
    assert after == before  # signed in place: nothing recreated
    with engine.connect() as conn:  # the index made by hand is still there
        assert conn.exec_driver_sql("SELECT to_regclass('rental_total_by_hand') IS NOT NULL").scalar()


def test_adopt_compares_what_the_template_creates_after_the_postamble(
    engine: sa.Engine, db_url: str, tmp_path: Path
) -> None:
    from alembic_samizdat.adopt import AdoptionRefusedError
    from alembic_samizdat.api import adopt

    with engine.begin() as conn:
        conn.exec_driver_sql(REAL_SQL, execution_options={"no_parameters": True})
        conn.exec_driver_sql("DROP INDEX rental_category")
    module = tmp_path / "real_no_index.py"
    module.write_text(REAL_MODULE)
    registry = SamizdatRegistry()
    registry.load(str(module))
    with pytest.raises(AdoptionRefusedError) as caught:
        adopt(engine, registry)
    (name, diff), *_ = caught.value.differences.items()
    assert "rental_by_category" in name
    assert "+CREATE UNIQUE INDEX rental_category ON public.rental_by_category" in diff
    assert not any(c.startswith('{"alembic_samizdat"') for c in comments(engine))  # nothing signed

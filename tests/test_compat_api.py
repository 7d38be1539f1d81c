"""DBSamizdat's Python API and helpers under the compatibility import: what deployment scripts and templates
call (``dbsamizdat.api.sync(dburl, modules)``, ``dbsamizdat.util``), on a real server."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from helpers import rows, scalar

from alembic_samizdat import SamizdatFunction, SamizdatTrigger, SamizdatView
from alembic_samizdat.compat.dbsamizdat import api as compat_api
from alembic_samizdat.compat.dbsamizdat import util
from alembic_samizdat.compat.dbsamizdat.const import txstyle
from alembic_samizdat.compat.dbsamizdat.exceptions import WrongTransactionStyleForParallelRefresh
from alembic_samizdat.compat.dbsamizdat_format import dbsamizdat_hash

MODULE = '''
from alembic_samizdat.compat.dbsamizdat import SamizdatMaterializedView, SamizdatView


class Base(SamizdatView):
    sql_template = """
        ${preamble}
        SELECT n FROM generate_series(1, 3) AS n
        ${postamble}
    """


class Total(SamizdatMaterializedView):
    deps_on = {Base}
    sql_template = """
        ${preamble}
        SELECT sum(n) AS total FROM "Base"
        ${postamble}
    """
'''


@pytest.fixture
def module(tmp_path: Path) -> str:
    path = tmp_path / f"legacy_{uuid.uuid4().hex[:8]}.py"
    path.write_text(MODULE)
    return str(path)


def relations(engine: sa.Engine) -> list[str]:
    return [
        r[0]
        for r in rows(
            engine,
            "SELECT relname FROM pg_class WHERE relkind IN ('v', 'm') AND relnamespace = 'public'::regnamespace ORDER BY 1",
        )
    ]


def test_sync_refresh_and_nuke_with_dbsamizdats_arguments(engine: sa.Engine, db_url: str, module: str) -> None:
    plain = sa.make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    compat_api.sync(plain, [module], txstyle.CHECKPOINT)
    assert relations(engine) == ["Base", "Total"]
    assert scalar(engine, 'SELECT total FROM "Total"') == 6
    compat_api.refresh(plain, [module], belownodes=["Base"], parallel=True)
    compat_api.refresh(plain, [module], transaction_style=txstyle.CHECKPOINT)
    with pytest.raises(WrongTransactionStyleForParallelRefresh):
        compat_api.refresh(plain, [module], transaction_style=txstyle.JUMBO, parallel=True)
    with pytest.raises(WrongTransactionStyleForParallelRefresh):
        compat_api.sync(plain, [module], txstyle.JUMBO, parallel=True)
    assert relations(engine) == ["Base", "Total"]
    compat_api.nuke(plain)
    assert relations(engine) == []


def test_util_helpers_behave_as_dbsamizdats(dsn: str) -> None:
    assert util.fqify_node("name") == ("public", "name")
    assert util.fqify_node("s.name") == ("s", "name")
    assert util.fqify_node(("s", "n", "int")) == ("s", "n", "int")
    assert util.nodenamefmt("x") == "x"
    assert util.nodenamefmt(("public", "f", "integer")) == "f(integer)"
    assert util.nodenamefmt(("s", "v")) == "s.v"
    assert util.db_object_identity("s.v") == '"s"."v"'
    assert util.db_object_identity(("s", "f", "integer")) == '"s"."f"(integer)'
    tidy = util.sqlfmt("\n    SELECT 1\n\n    FROM x\n")
    numbered = util.sqlfmt("\n    SELECT 1\n    FROM x\n", indent_with="  ", number_lines=True)
    assert tidy.endswith("\n")
    assert numbered.splitlines()[0].startswith("1:  ") and "FROM x" in numbered.splitlines()[-1]
    with psycopg.connect(dsn) as conn:
        cursor = conn.cursor()

        class Wrapper:
            def __init__(self, inner: object) -> None:
                self.cursor = inner

        assert util.honest_cursor(cursor) is cursor
        assert util.honest_cursor(Wrapper(Wrapper(cursor))) is cursor
        with pytest.raises(ValueError, match="unfruitful"):
            util.honest_cursor(object())


def test_dbsamizdat_hash_of_native_classes_is_dbsamizdats() -> None:
    """For a class declared the same way in both imports (no ``$`` to escape), the hash we compute for the
    native class is the one DBSamizdat computes, which the compatibility class computes itself."""
    from alembic_samizdat.compat import dbsamizdat as compat

    template_f = "${preamble} RETURNS int LANGUAGE sql AS 'SELECT 1' ${postamble}"
    template_t = "${preamble} FOR EACH ROW EXECUTE FUNCTION public.noop() ${postamble}"
    template_v = "${preamble} SELECT 1 AS one ${postamble}"
    native = [
        type("f1", (SamizdatFunction,), {"sql_template": template_f, "function_arguments_signature": "x integer"}),
        type("t1", (SamizdatTrigger,), {"sql_template": template_t, "on_table": "tab", "condition": "AFTER INSERT"}),
        type("v1", (SamizdatView,), {"sql_template": template_v}),
    ]
    theirs = [
        type(
            "f1", (compat.SamizdatFunction,), {"sql_template": template_f, "function_arguments_signature": "x integer"}
        ),
        type(
            "t1",
            (compat.SamizdatTrigger,),
            {"sql_template": template_t, "on_table": "tab", "condition": "AFTER INSERT"},
        ),
        type("v1", (compat.SamizdatView,), {"sql_template": template_v}),
    ]
    for ours, dbsamizdats in zip(native, theirs, strict=True):
        assert dbsamizdat_hash(ours) == dbsamizdats.definition_hash(), ours.__name__
    assert dbsamizdat_hash(None) is None


def test_dbsamizdats_class_methods_give_its_sql() -> None:
    """The statements a module can ask a class for, as DBSamizdat builds them (without its CASCADE)."""
    from alembic_samizdat.compat import dbsamizdat as compat
    from alembic_samizdat.errors import DeclarationError

    class Nums(compat.SamizdatView):
        schema = "rep"
        sql_template = "${preamble} SELECT 1 AS n ${postamble}"

    class Tot(compat.SamizdatMaterializedView):
        schema = "rep"
        deps_on = {Nums, "other", ("s", "t")}
        deps_on_unmanaged = {"tab"}
        refresh_triggers = {"tab"}
        refresh_concurrently = True
        sql_template = '${preamble} SELECT sum(n) AS t FROM "rep"."Nums" ${postamble}'

    assert Nums.create().startswith('CREATE VIEW "rep"."Nums" AS') and Nums.create().rstrip().endswith(";")
    assert Nums.drop() == 'DROP VIEW "rep"."Nums"'
    assert Tot.drop(if_exists=True) == 'DROP MATERIALIZED VIEW IF EXISTS "rep"."Tot"'
    assert Nums.get_preamble() == Nums.preamble() and Nums.get_postamble() == Nums.postamble()
    assert Tot.fqdeps_on() == {("rep", "Nums"), ("rep", "other"), ("s", "t")}
    assert Tot.fqdeps_on_unmanaged() == {("rep", "tab")} == Tot.fqrefresh_triggers()
    assert Tot.refresh() == 'REFRESH MATERIALIZED VIEW CONCURRENTLY "rep"."Tot";\n'
    assert "CONCURRENTLY" not in Tot.refresh(concurrent_allowed=False)
    with pytest.raises(ValueError, match="Not a string, tuple, or Samizdat"):
        Tot.fqify(42)
    with pytest.raises(DeclarationError, match="base class"):
        compat.SamizdatView.create()

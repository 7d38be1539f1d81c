"""The DBSamizdat compatibility import behaves as DBSamizdat 0.11.2 where a module can observe it.

These run without DBSamizdat; tests/test_compat_differential.py compares against DBSamizdat itself.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from helpers import make_registry, rows

from alembic_samizdat import SamizdatRegistry, sync
from alembic_samizdat.compat.dbsamizdat import (
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatTrigger,
    SamizdatView,
)
from alembic_samizdat.compat.dbsamizdat.samizdat import SamizdatFunctionMeta, SamizdatMeta, SamizdatTriggerMeta
from alembic_samizdat.errors import DeclarationError, TemplateError

#: The names DBSamizdat 0.11.2's modules define (what a module can import from them), Django's aside.
DBSAMIZDAT_NAMES = {
    "": ["entitypes", "SamizdatView", "SamizdatMaterializedView", "SamizdatFunction", "SamizdatTrigger"],
    ".samizdat": [
        "entitypes",
        "Samizdat",
        "SamizdatMeta",
        "SamizdatFunctionMeta",
        "SamizdatTriggerMeta",
        "SamizdatView",
        "SamizdatMaterializedView",
        "SamizdatFunction",
        "SamizdatTrigger",
        "PG_IDENTIFIER_MAXLEN",
        "TRIGGER_DEPCOUNTER_PADDED_WIDTH",
        "db_object_identity",
        "fqify_node",
        "nodenamefmt",
        "sqlfmt",
    ],
    ".util": ["db_object_identity", "fqify_node", "nodenamefmt", "sqlfmt"],
    ".const": ["txstyle", "env"],
    ".api": ["sync", "refresh", "nuke"],
    ".exceptions": [
        "SamizdatException",
        "InvocationError",
        "WrongTransactionStyleForParallelRefresh",
        "NameClashError",
        "UnsuitableNameError",
        "DanglingReferenceError",
        "TypeConfusionError",
        "DatabaseError",
        "DependencyCycleError",
        "FunctionSignatureError",
        "SQLTemplateException",
        "UnqualifiedModulePathException",
    ],
}


@pytest.mark.parametrize("submodule", sorted(DBSAMIZDAT_NAMES))
def test_every_name_a_module_imports_from_dbsamizdat_exists(submodule: str) -> None:
    module = importlib.import_module("alembic_samizdat.compat.dbsamizdat" + submodule)
    missing = [name for name in DBSAMIZDAT_NAMES[submodule] if not hasattr(module, name)]
    assert not missing


class Totals(SamizdatView):
    sql_template = """
        ${preamble}
        SELECT 1 AS n
        ${postamble}
    """


class Elsewhere(SamizdatView):
    schema = "reports"
    sql_template = "${preamble} SELECT 1 AS n ${postamble}"


class greet(SamizdatFunction):
    function_arguments_signature = "who text"
    sql_template = "${preamble} RETURNS text AS $BODY$ SELECT 'hi ' || $1 $BODY$ LANGUAGE sql ${postamble}"


class greet_twice(SamizdatFunction):
    schema = "reports"
    function_name = "greet"
    function_arguments_signature = "who text, n int"
    function_arguments = "who text, n int DEFAULT 2"
    sql_template = "${preamble} RETURNS text AS $$$$ SELECT repeat($$1, $$2) $$$$ LANGUAGE sql ${postamble}"


class noargs(SamizdatFunction):
    sql_template = "${preamble} RETURNS int AS $$$$ SELECT 1 $$$$ LANGUAGE sql ${postamble}"


class Audit(SamizdatTrigger):
    on_table = "sales.orders"
    condition = "AFTER INSERT"
    sql_template = "${preamble} FOR EACH ROW EXECUTE PROCEDURE noop() ${postamble}"


def test_metaclass_properties_are_dbsamizdats() -> None:
    assert (Totals.name, Totals.fq, Totals.db_object_identity) == ("Totals", ("public", "Totals"), '"public"."Totals"')
    assert type(Totals.fq) is tuple and len(Totals.fq) == 2  # unpackable as (schema, name)
    assert Elsewhere.fq == ("reports", "Elsewhere")
    assert greet_twice.name == "greet"
    assert greet_twice.fq == ("reports", "greet", "who text, n int")
    assert greet_twice.db_object_identity == '"reports"."greet"(who text, n int)'
    assert greet_twice.creation_identity == '"reports"."greet"(who text, n int DEFAULT 2)'
    assert noargs.fq == ("public", "noargs", "")
    assert Audit.fq == ("sales.orders", "Audit")
    assert Audit.table() == ("sales", "orders")
    assert isinstance(Totals, SamizdatMeta) and isinstance(greet, SamizdatFunctionMeta)
    assert isinstance(Audit, SamizdatTriggerMeta)


def test_str_of_a_class_is_dbsamizdats_node_name() -> None:
    assert [str(c) for c in (Totals, Elsewhere, greet, greet_twice, noargs, Audit)] == [
        "Totals",
        "reports.Elsewhere",
        "greet(who text)",
        "reports.greet(who text, n int)",
        "noargs",
        "sales.orders.Audit",
    ]
    assert f"{greet}" == "greet(who text)"


def test_classes_are_static_and_drop_without_cascade() -> None:
    with pytest.raises(RuntimeError, match="Don't instantiate"):
        Totals()
    assert Totals.drop() == 'DROP VIEW "public"."Totals"'
    assert greet_twice.drop(if_exists=True) == 'DROP FUNCTION IF EXISTS "reports"."greet"(who text, n int)'
    assert Audit.drop() == 'DROP TRIGGER "Audit" ON "sales"."orders"'


def test_templates_are_read_with_safe_substitute_and_tidied() -> None:
    assert Totals.create() == 'CREATE VIEW "public"."Totals" AS\nSELECT 1 AS n\n;\n'
    assert greet.create() == (
        'CREATE FUNCTION "public"."greet"(who text) RETURNS text AS $BODY$ SELECT \'hi \' || $1 $BODY$ LANGUAGE sql ;\n'
    )
    assert "AS $$ SELECT repeat($1, $2) $$ LANGUAGE sql ;" in greet_twice.create()


def test_every_subclass_declares_an_object_as_in_dbsamizdat() -> None:
    class Forgotten(SamizdatView):
        deps_on = {Totals}

    # DBSamizdat's loader takes every subclass; its default template has no placeholders, so it fails, named.
    assert not Forgotten.is_abstract()
    with pytest.raises(TemplateError, match=r"Forgotten\.sql_template must hold \$\{postamble\} and \$\{preamble\}"):
        Forgotten.create()
    for base in (SamizdatView, SamizdatMaterializedView, SamizdatFunction, SamizdatTrigger):
        assert base.is_abstract()
        with pytest.raises(DeclarationError, match="abstract"):
            SamizdatRegistry().register(base)


def test_metaclass_properties_define_template_and_dependencies(engine: sa.Engine) -> None:
    class CountingMeta(SamizdatFunctionMeta):
        @property
        def sql_template(cls) -> str:
            return f"""
                ${{preamble}}
                RETURNS bigint AS $BODY$ SELECT count(*) FROM {Totals.db_object_identity} $BODY$ LANGUAGE sql
                ${{postamble}}
            """

        @property
        def deps_on(cls) -> set[type]:
            return {Totals}

    class count_totals(SamizdatFunction, metaclass=CountingMeta):
        pass

    assert count_totals.deps_on == {Totals}
    sync(engine, make_registry(Totals, count_totals))
    assert rows(engine, "SELECT count_totals()") == [(1,)]


PACKAGE = {
    "__init__.py": "",
    "base.py": """
from alembic_samizdat.compat.dbsamizdat import SamizdatView


class Root(SamizdatView):
    sql_template = "${preamble} SELECT 1 AS n ${postamble}"


class Middle(SamizdatView):
    deps_on = {Root}
    sql_template = "${preamble} SELECT n + 1 AS n FROM \\"Root\\" ${postamble}"


class NotWanted(SamizdatView):
    sql_template = "${preamble} SELECT 0 AS n ${postamble}"
""",
    "top.py": """
from alembic_samizdat.compat.dbsamizdat import SamizdatView
from .base import Middle

__all__ = ["Top"]


class Top(SamizdatView):
    deps_on = {Middle}
    sql_template = "${preamble} SELECT n + 1 AS n FROM \\"Middle\\" ${postamble}"
""",
    "entry.py": "from .top import *  # noqa: F403\n",
}


@pytest.mark.parametrize("flavour", ["alembic_samizdat.compat.dbsamizdat", "alembic_samizdat"])
def test_loading_follows_deps_on_like_dbsamizdats_loader(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavour: str
) -> None:
    package = f"compat_pkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    for name, text in PACKAGE.items():
        (tmp_path / package / name).write_text(text.replace("alembic_samizdat.compat.dbsamizdat", flavour))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = SamizdatRegistry()
        registry.load(f"{package}.entry")  # holds only Top; Middle and Root come through deps_on
        assert sorted(c.__name__ for c in registry) == ["Middle", "Root", "Top"]
        sync(engine, registry)
        assert rows(engine, 'SELECT n FROM "Top"') == [(3,)]
        # A file inside a package loads as a package module, so its relative imports work (as DBSamizdat's do).
        by_path = SamizdatRegistry()
        by_path.load(str(tmp_path / package / "entry.py"))
        assert sorted(c.__name__ for c in by_path) == ["Middle", "Root", "Top"]
    finally:
        for name in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[name]


def test_a_file_using_relative_imports_outside_a_package_loads_as_dbsamizdat_loads_it(tmp_path: Path) -> None:
    # DBSamizdat imports `dir/file.py` as module `dir.file` (a namespace package), so such files may import
    # their neighbours relatively without any __init__.py.
    directory = tmp_path / f"defs_{uuid.uuid4().hex[:8]}"
    directory.mkdir()
    (directory / "base.py").write_text(PACKAGE["base.py"])
    (directory / "top.py").write_text(PACKAGE["top.py"])
    try:
        registry = SamizdatRegistry()
        registry.load(str(directory / "top.py"))
        assert sorted(c.__name__ for c in registry) == ["Middle", "Root", "Top"]
    finally:
        for name in [m for m in sys.modules if m.startswith(directory.name)]:
            del sys.modules[name]

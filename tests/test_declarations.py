"""Declarations without a database: templates, identifiers, fq/db_object_identity, registries and loading."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from helpers import make_registry
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import MetaData

from alembic_samizdat import (
    DeclarationError,
    FQTuple,
    InvalidIdentifierError,
    ModuleLoadError,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatRegistry,
    SamizdatTrigger,
    SamizdatView,
    TemplateError,
)
from alembic_samizdat.identifiers import check_identifier, quote_ident
from alembic_samizdat.template import TemplateDialect

# --- templates ------------------------------------------------------------------------------------------------


def test_view_template_substitutes_the_three_placeholders() -> None:
    class Totals(SamizdatView):
        sql_template = "${preamble} SELECT 1 AS one, '${samizdatname}' AS me ${postamble}"

    assert Totals.create() == 'CREATE VIEW "public"."Totals" AS SELECT 1 AS one, \'"public"."Totals"\' AS me ;'


def test_matview_postamble_is_with_no_data_and_ends_the_statement() -> None:
    class Stock(SamizdatMaterializedView):
        schema = "inventory"
        sql_template = "${preamble}\nSELECT 1 AS x\n${postamble}\nCREATE UNIQUE INDEX ON ${samizdatname} (x)"

    assert Stock.create() == (
        'CREATE MATERIALIZED VIEW "inventory"."Stock" AS\nSELECT 1 AS x\nWITH NO DATA;\n'
        'CREATE UNIQUE INDEX ON "inventory"."Stock" (x)'
    )

    class OwnSemicolon(SamizdatMaterializedView):
        sql_template = "${preamble}\nSELECT 1 AS x\n${postamble};\nCREATE UNIQUE INDEX ON ${samizdatname} (x)"

    # The template's own ';' after the postamble makes an empty statement, which PostgreSQL ignores.
    assert 'WITH NO DATA;;\nCREATE UNIQUE INDEX ON "public"."OwnSemicolon" (x)' in OwnSemicolon.create()


def test_dollar_quotes_and_positional_parameters_pass_through_unchanged() -> None:
    body = (
        "${preamble} RETURNS integer LANGUAGE plpgsql AS $$\n"
        "DECLARE s text := '$1 and $$ and $name and ${not_braced_ok';\n"
        "BEGIN RETURN $1 + $2; END;\n$$"
    )

    class add_two(SamizdatFunction):
        function_arguments_signature = "integer, integer"
        sql_template = body

    rendered = add_two.create()
    assert rendered == body.replace("${preamble}", 'CREATE FUNCTION "public"."add_two"(integer, integer)')
    assert "$$\nDECLARE" in rendered and "RETURN $1 + $2" in rendered and rendered.endswith("$$")


def test_tagged_dollar_quotes_pass_through() -> None:
    class tagged(SamizdatFunction):
        sql_template = "${preamble} RETURNS text LANGUAGE sql AS $body$ SELECT '$$' || '$5' $body$"

    assert tagged.create().endswith("AS $body$ SELECT '$$' || '$5' $body$")


def test_view_literal_with_dollars_passes_through() -> None:
    class Prices(SamizdatView):
        sql_template = "${preamble} SELECT '$1 costs $$5' AS s ${postamble}"

    assert "'$1 costs $$5'" in Prices.create()


def test_missing_preamble_names_the_class() -> None:
    class NoHead(SamizdatView):
        sql_template = "SELECT 1 ${postamble}"

    with pytest.raises(TemplateError, match=r"NoHead\.sql_template must hold \$\{preamble\}"):
        NoHead.create()


def test_preamble_twice_is_refused() -> None:
    class TwoHeads(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble} ${preamble}"

    with pytest.raises(TemplateError, match="TwoHeads"):
        TwoHeads.create()


def test_missing_postamble_names_the_class_for_views_and_matviews() -> None:
    class NoTailView(SamizdatView):
        sql_template = "${preamble} SELECT 1"

    class NoTailMat(SamizdatMaterializedView):
        sql_template = "${preamble} SELECT 1"

    with pytest.raises(TemplateError, match=r"NoTailView\.sql_template must hold \$\{postamble\}"):
        NoTailView.create()
    with pytest.raises(TemplateError, match=r"NoTailMat\.sql_template must hold \$\{postamble\}"):
        NoTailMat.create()


def test_functions_and_triggers_need_no_postamble() -> None:
    class f(SamizdatFunction):
        sql_template = "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$"

    class tg(SamizdatTrigger):
        on_table = "t"
        condition = "AFTER INSERT"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"

    assert f.create().startswith('CREATE FUNCTION "public"."f"() RETURNS')
    assert tg.create() == 'CREATE TRIGGER "tg" AFTER INSERT ON "public"."t" FOR EACH ROW EXECUTE FUNCTION f()'


def test_unknown_placeholder_names_the_class_and_the_placeholder() -> None:
    class Strange(SamizdatView):
        sql_template = "${preamble} SELECT ${foo} ${postamble}"

    with pytest.raises(TemplateError) as info:
        Strange.create()
    message = str(info.value)
    assert "Strange.sql_template" in message and "${foo}" in message


def test_template_errors_surface_when_building_the_graph() -> None:
    class Broken(SamizdatView):
        sql_template = "${preamble} SELECT ${bar} ${postamble}"

    with pytest.raises(TemplateError, match="Broken"):
        make_registry(Broken).graph()


def test_non_string_template_is_a_template_error() -> None:
    class Weird(SamizdatView):
        sql_template = 42  # type: ignore[assignment]

    with pytest.raises(TemplateError, match="Weird"):
        Weird.create()


def test_string_template_dialect_reads_like_dbsamizdat() -> None:
    class Compat(SamizdatFunction):
        template_dialect = TemplateDialect.STRING_TEMPLATE
        sql_template = """
            ${preamble} RETURNS int LANGUAGE sql AS $$$$ SELECT $1 + $_x $$$$
              -- $BODY$ and ${unknown} pass through
            ${postamble}
        """

    # safe_substitute: $$$$ is $$, $1, $_x, $BODY$ and unknown names stay; then DBSamizdat's tidying (common
    # indentation and blank end lines removed, trailing newline).
    assert Compat.create() == (
        'CREATE FUNCTION "public"."Compat"() RETURNS int LANGUAGE sql AS $$ SELECT $1 + $_x $$\n'
        "  -- $BODY$ and ${unknown} pass through\n;\n"
    )

    class NoPostamble(SamizdatFunction):
        template_dialect = TemplateDialect.STRING_TEMPLATE
        sql_template = "${preamble} RETURNS int LANGUAGE sql AS $$$$ SELECT 1 $$$$"

    # DBSamizdat requires both placeholders in every template.
    with pytest.raises(TemplateError, match=r"NoPostamble\.sql_template must hold \$\{postamble\}"):
        NoPostamble.create()


# --- identifiers ----------------------------------------------------------------------------------------------


def test_name_of_63_bytes_is_accepted_and_64_refused() -> None:
    ok = type("v" * 63, (SamizdatView,), {"sql_template": "${preamble} SELECT 1 ${postamble}"})
    assert ok.fq == FQTuple("public", "v" * 63)
    too_long = type("v" * 64, (SamizdatView,), {"sql_template": "${preamble} SELECT 1 ${postamble}"})
    with pytest.raises(InvalidIdentifierError, match="64 bytes"):
        too_long.create()
    with pytest.raises(InvalidIdentifierError):
        _ = too_long.fq
    with pytest.raises(InvalidIdentifierError):
        make_registry(too_long).graph()


def test_length_is_counted_in_bytes_not_characters() -> None:
    # 32 two-byte characters: 32 characters but 64 bytes.
    name = "é" * 32
    cls = type(name, (SamizdatView,), {"sql_template": "${preamble} SELECT 1 ${postamble}"})
    with pytest.raises(InvalidIdentifierError, match="64 bytes"):
        cls.create()
    fits = type("é" * 31 + "a", (SamizdatView,), {"sql_template": "${preamble} SELECT 1 ${postamble}"})
    assert fits.db_object_identity == f'"public"."{"é" * 31}a"'


def test_empty_and_nul_names_are_refused() -> None:
    class EmptySchema(SamizdatView):
        schema = ""
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class NulSchema(SamizdatView):
        schema = "a\x00b"
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class EmptyFunction(SamizdatFunction):
        function_name = ""
        sql_template = "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$"

    class NulFunction(SamizdatFunction):
        function_name = "f\x00"
        sql_template = "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$"

    class LongTable(SamizdatTrigger):
        on_table = "t" * 64
        condition = "AFTER INSERT"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"

    for cls, pattern in [
        (EmptySchema, "empty"),
        (NulSchema, "NUL"),
        (EmptyFunction, "empty"),
        (NulFunction, "NUL"),
        (LongTable, "64 bytes"),
    ]:
        with pytest.raises(InvalidIdentifierError, match=pattern):
            cls.create()
        with pytest.raises(InvalidIdentifierError):
            make_registry(cls).graph()


def test_non_string_schema_is_refused() -> None:
    class NumSchema(SamizdatView):
        schema = 5  # type: ignore[assignment]
        sql_template = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(InvalidIdentifierError, match="expected a string"):
        NumSchema.create()


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("MixedCase", '"MixedCase"'),
        ('a"b', '"a""b"'),
        ('""', '""""""'),
        ("with space", '"with space"'),
        ("a.b", '"a.b"'),
        ("ünïcødé", '"ünïcødé"'),
        ("select", '"select"'),
        ("x; DROP TABLE t; --", '"x; DROP TABLE t; --"'),
    ],
)
def test_odd_names_are_quoted(name: str, quoted: str) -> None:
    cls = type(name, (SamizdatView,), {"sql_template": "${preamble} SELECT 1 ${postamble}"})
    assert cls.db_object_identity == f'"public".{quoted}'
    assert cls.create() == f'CREATE VIEW "public".{quoted} AS SELECT 1 ;'
    odd_schema = type("v", (SamizdatView,), {"schema": name, "sql_template": "${preamble} SELECT 1 ${postamble}"})
    assert odd_schema.db_object_identity == f'{quoted}."v"'
    assert odd_schema.fq == FQTuple(name, "v")


def test_odd_trigger_and_table_names_are_quoted() -> None:
    tg = type(
        'Tr"ig ger',
        (SamizdatTrigger,),
        {
            "on_table": ('Sch"ema', "select"),
            "condition": "  BEFORE UPDATE  ",
            "sql_template": "${preamble} FOR EACH ROW EXECUTE FUNCTION f()",
        },
    )
    assert (
        tg.create()
        == 'CREATE TRIGGER "Tr""ig ger" BEFORE UPDATE ON "Sch""ema"."select" FOR EACH ROW EXECUTE FUNCTION f()'
    )
    assert tg.db_object_identity == '"Tr""ig ger" ON "Sch""ema"."select"'


def test_quote_ident_round_trips() -> None:
    @given(st.text(min_size=1).filter(lambda s: "\x00" not in s))
    def check(name: str) -> None:
        quoted = quote_ident(name)
        assert quoted[0] == quoted[-1] == '"'
        inner = quoted[1:-1]
        assert '"' not in inner.replace('""', "")
        assert inner.replace('""', '"') == name

    check()


def test_check_identifier_accepts_exactly_the_storable_names() -> None:
    @given(st.text(max_size=70))
    def check(name: str) -> None:
        storable = bool(name) and "\x00" not in name and len(name.encode()) <= 63
        if storable:
            assert check_identifier(name, "x") == name
        else:
            with pytest.raises(InvalidIdentifierError):
                check_identifier(name, "x")

    check()


# --- fq and db_object_identity ---------------------------------------------------------------------------------


def test_fq_and_identity_are_properties_and_callables() -> None:
    class Sales(SamizdatView):
        schema = "Reporting"
        sql_template = "${preamble} SELECT 1 ${postamble}"

    assert Sales.fq == FQTuple("Reporting", "Sales", None)
    assert Sales.fq() == ("Reporting", "Sales", None)
    assert Sales.db_object_identity == '"Reporting"."Sales"'
    assert Sales.db_object_identity() == '"Reporting"."Sales"'
    assert isinstance(Sales.db_object_identity(), str)


def test_function_fq_and_identity_include_the_normalised_signature() -> None:
    class lookup(SamizdatFunction):
        function_name = "Lookup"
        function_arguments_signature = "  username  text,\n userid int "
        sql_template = "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$"

    assert lookup.fq == FQTuple("public", "Lookup", "username text, userid int")
    assert lookup.fq() == lookup.fq
    assert lookup.db_object_identity == '"public"."Lookup"(username text, userid int)'
    assert lookup.db_object_identity() == '"public"."Lookup"(username text, userid int)'


def test_function_arguments_override_the_preamble_only() -> None:
    class defaults(SamizdatFunction):
        function_arguments_signature = "a int, b int"
        function_arguments = "a int, b int DEFAULT 1"
        sql_template = "${preamble} RETURNS int LANGUAGE sql AS $$ SELECT a + b $$"

    assert defaults.create().startswith('CREATE FUNCTION "public"."defaults"(a int, b int DEFAULT 1) RETURNS')
    assert defaults.db_object_identity == '"public"."defaults"(a int, b int)'


def test_trigger_fq_is_in_its_tables_schema() -> None:
    class Target(SamizdatView):
        schema = "app"
        sql_template = "${preamble} SELECT 1 AS x ${postamble}"

    class on_view(SamizdatTrigger):
        schema = "elsewhere"
        on_table = Target
        condition = "INSTEAD OF INSERT"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"

    class bare(SamizdatTrigger):
        schema = "own"
        on_table = "tbl"
        condition = "AFTER INSERT"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"

    assert on_view.fq == FQTuple("app", "on_view")
    assert on_view.db_object_identity == '"on_view" ON "app"."Target"'
    # a bare on_table resolves in the trigger's own schema
    assert bare.db_object_identity == '"bare" ON "own"."tbl"'


def test_trigger_without_condition_or_table_is_a_declaration_error() -> None:
    class nocond(SamizdatTrigger):
        on_table = "t"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"

    class notable(SamizdatTrigger):
        condition = "AFTER INSERT"
        sql_template = "${preamble} FOR EACH ROW EXECUTE FUNCTION f()"

    with pytest.raises(DeclarationError, match=r"nocond\.condition"):
        nocond.create()
    with pytest.raises(DeclarationError, match=r"notable\.on_table"):
        notable.create()


# --- registry -------------------------------------------------------------------------------------------------


def test_register_works_as_a_decorator() -> None:
    registry = SamizdatRegistry()

    @registry.register
    class Decorated(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble}"

    assert isinstance(Decorated, type) and issubclass(Decorated, SamizdatView)
    assert Decorated in registry and list(registry) == [Decorated] and len(registry) == 1
    assert registry.lookup("Decorated") is Decorated


def test_register_refuses_abstract_and_non_samizdat_classes() -> None:
    registry = SamizdatRegistry()

    class Base(SamizdatView):
        __abstract__ = True

    with pytest.raises(DeclarationError, match="abstract"):
        registry.register(Base)
    with pytest.raises(DeclarationError, match="abstract"):
        registry.register(SamizdatView)
    with pytest.raises(DeclarationError):
        registry.register(int)  # type: ignore[arg-type]
    assert len(registry) == 0


def test_concrete_class_without_template_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Typo(SamizdatView):
        sql_templte = "${preamble} SELECT 1 ${postamble}"

    with pytest.raises(DeclarationError, match=r"Typo has no sql_template.*__abstract__ = True"):
        SamizdatRegistry().register(Typo)
    with pytest.raises(DeclarationError, match="Typo has no sql_template"):
        Typo.create()
    # Loading a module holding one fails the same way instead of syncing nothing.
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _write_module(
        tmp_path,
        "from alembic_samizdat import SamizdatView\n\nclass Typo(SamizdatView):\n"
        "    sql_templte = '${preamble} SELECT 1 ${postamble}'\n",
    )
    with pytest.raises(DeclarationError, match=r"\.Typo has no sql_template"):
        SamizdatRegistry().load(name)
    sys.modules.pop(name, None)


def test_registering_invalidates_the_cached_graph() -> None:
    registry = SamizdatRegistry()

    class A(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble}"

    class B(SamizdatView):
        sql_template = "${preamble} SELECT 2 ${postamble}"

    registry.register(A)
    assert len(registry.graph()) == 1
    registry.register(B)
    assert len(registry.graph()) == 2


def test_scope_must_be_a_non_empty_string() -> None:
    assert SamizdatRegistry().scope == "default"
    assert SamizdatRegistry(scope="tenant").scope == "tenant"
    with pytest.raises(DeclarationError):
        SamizdatRegistry(scope="")


def test_registry_attaches_to_metadata() -> None:
    md = MetaData()
    assert SamizdatRegistry.from_metadata(md) is None
    reg = SamizdatRegistry(md, scope="x")
    assert SamizdatRegistry.from_metadata(md) is reg
    assert reg.metadata is md


MODULE_SOURCE = """
from alembic_samizdat import SamizdatView, SamizdatMaterializedView


class Intermediate(SamizdatView):
    '''An intermediate base: abstract because it says so.'''
    __abstract__ = True


class MarkedAbstract(SamizdatView):
    __abstract__ = True
    sql_template = "${preamble} SELECT 0 ${postamble}"


class First(Intermediate):
    sql_template = "${preamble} SELECT 1 AS x ${postamble}"


class Second(MarkedAbstract):
    deps_on = {First}
    sql_template = "${preamble} SELECT x FROM ${samizdatname} ${postamble}"


class Mat(SamizdatMaterializedView):
    deps_on = {"Second"}
    sql_template = "${preamble} SELECT x FROM \\"Second\\" ${postamble}"
"""


def _write_module(directory: Path, source: str) -> str:
    name = f"samizdat_mod_{uuid.uuid4().hex}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_load_dotted_module_registers_concrete_classes_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _write_module(tmp_path, MODULE_SOURCE)
    registry = SamizdatRegistry()
    registry.load(name)
    assert sorted(c.__name__ for c in registry) == ["First", "Mat", "Second"]
    graph = registry.graph()
    assert [k.name for k in graph.order] == ["First", "Second", "Mat"]
    sys.modules.pop(name, None)


def test_load_py_file_path(tmp_path: Path) -> None:
    path = tmp_path / "decls.py"
    path.write_text(MODULE_SOURCE)
    registry = SamizdatRegistry()
    registry.load(str(path))
    assert sorted(c.__name__ for c in registry) == ["First", "Mat", "Second"]
    # Loading the same file again is harmless (same classes, no duplicates).
    registry.load(str(path))
    assert len(registry) == 3


def test_load_package_submodule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = f"samizdat_pkg_{uuid.uuid4().hex}"
    (tmp_path / pkg).mkdir()
    (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / pkg / "views.py").write_text(MODULE_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = SamizdatRegistry()
    registry.load(f"{pkg}.views")
    assert len(registry) == 3


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message, message
    assert "Traceback" not in message
    return message


def test_load_missing_module_is_a_one_line_module_load_error() -> None:
    with pytest.raises(ModuleLoadError) as info:
        SamizdatRegistry().load("no_such_module_samizdat_xyz")
    assert "no_such_module_samizdat_xyz" in _one_line(info.value)


def test_load_missing_file_is_a_module_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModuleLoadError) as info:
        SamizdatRegistry().load(str(tmp_path / "nope.py"))
    assert "nope.py" in _one_line(info.value)


def test_load_module_raising_is_a_one_line_module_load_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _write_module(tmp_path, "x = 1\nraise RuntimeError('boom at import')\n")
    with pytest.raises(ModuleLoadError) as info:
        SamizdatRegistry().load(name)
    message = _one_line(info.value)
    assert name in message and "RuntimeError" in message and "boom at import" in message
    assert name not in sys.modules


def test_load_file_raising_multiline_error_stays_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.py"
    path.write_text("raise ValueError('first line\\nsecond line')\n")
    with pytest.raises(ModuleLoadError) as info:
        SamizdatRegistry().load(str(path))
    assert "first line" in _one_line(info.value)


def test_load_module_with_syntax_error(tmp_path: Path) -> None:
    path = tmp_path / "syntax.py"
    path.write_text("class (:\n")
    with pytest.raises(ModuleLoadError) as info:
        SamizdatRegistry().load(str(path))
    assert "syntax error" in _one_line(info.value)


def test_load_module_importing_a_missing_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    name = _write_module(tmp_path, "import missing_dependency_samizdat_abc\n")
    with pytest.raises(ModuleLoadError) as info:
        SamizdatRegistry().load(name)
    assert "missing_dependency_samizdat_abc" in _one_line(info.value)

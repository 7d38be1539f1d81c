"""A corpus of bad input: each case gets its own exception class and one message naming the object and the fix,
and the database catalog is exactly the same before and after."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from helpers import catalog_snapshot, run_sql

from alembic_samizdat import (
    CycleError,
    DanglingReferenceError,
    DeclarationError,
    DuplicateIdentityError,
    ExecutionError,
    FunctionSignatureMismatchError,
    InvalidIdentifierError,
    ManagedListedAsUnmanagedError,
    ModuleLoadError,
    NameClashError,
    SamizdatError,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatRegistry,
    SamizdatTrigger,
    SamizdatView,
    SelfDependencyError,
    TemplateError,
    TriggerTargetError,
    sync,
)


def cls(name: str, base: type = SamizdatView, **attrs: Any) -> type:
    attrs.setdefault("sql_template", "${preamble} SELECT 1 AS one ${postamble}")
    return type(name, (base,), {"__module__": "corpus", "__qualname__": name, **attrs})


@dataclass
class Case:
    """Declarations, SQL set up first, the expected exception and words the message must hold."""

    id: str
    classes: Callable[[], list[type]]
    error: type[SamizdatError]
    words: tuple[str, ...]
    setup: str = ""
    discipline: str = "jumbo"


def _cycle() -> list[type]:
    a = cls("A", deps_on={"B"})
    b = cls("B", deps_on={"A"})
    return [a, b]


def _long_cycle() -> list[type]:
    out = [cls("C0", deps_on={"C2"}), cls("C1", deps_on={"C0"}), cls("C2", deps_on={"C1"})]
    return out


CASES = [
    Case(
        "missing preamble",
        lambda: [cls("NoPre", sql_template="SELECT 1 ${postamble}")],
        TemplateError,
        ("NoPre", "${preamble}"),
    ),
    Case(
        "doubled preamble",
        lambda: [cls("TwoPre", sql_template="${preamble} ${preamble} SELECT 1 ${postamble}")],
        TemplateError,
        ("TwoPre", "exactly once"),
    ),
    Case(
        "missing postamble in a view",
        lambda: [cls("NoPost", sql_template="${preamble} SELECT 1")],
        TemplateError,
        ("NoPost", "${postamble}"),
    ),
    Case(
        "missing postamble in a matview",
        lambda: [cls("NoPostM", SamizdatMaterializedView, sql_template="${preamble} SELECT 1")],
        TemplateError,
        ("NoPostM", "${postamble}"),
    ),
    Case(
        "unknown placeholder",
        lambda: [cls("Unknown", sql_template="${preamble} SELECT ${colour} ${postamble}")],
        TemplateError,
        ("Unknown", "${colour}"),
    ),
    Case("template not a string", lambda: [cls("NotStr", sql_template=42)], TemplateError, ("NotStr", "string")),
    Case(
        "unbalanced $$ rejected by PostgreSQL",
        lambda: [
            cls("Unbalanced", SamizdatFunction, sql_template="${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1")
        ],
        ExecutionError,
        ("Unbalanced", "failed"),
    ),
    Case(
        "SQL PostgreSQL rejects",
        lambda: [cls("BadSql", sql_template="${preamble} SELEKT 1 ${postamble}")],
        ExecutionError,
        ("BadSql", "syntax error"),
    ),
    Case("name longer than 63 bytes", lambda: [cls("L" * 64)], InvalidIdentifierError, ("L" * 64, "63 bytes")),
    Case("multibyte name longer than 63 bytes", lambda: [cls("é" * 32)], InvalidIdentifierError, ("64 bytes",)),
    Case(
        "empty schema", lambda: [cls("EmptySchema", schema="")], InvalidIdentifierError, ("EmptySchema.schema", "empty")
    ),
    Case("NUL in schema", lambda: [cls("Nul", schema="a\x00b")], InvalidIdentifierError, ("Nul.schema", "NUL")),
    Case(
        "empty function name",
        lambda: [
            cls(
                "fn",
                SamizdatFunction,
                function_name="",
                sql_template="${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            )
        ],
        InvalidIdentifierError,
        ("fn", "empty"),
    ),
    Case("cycle", _cycle, CycleError, ("corpus.A", "corpus.B", "->")),
    Case("three-cycle", _long_cycle, CycleError, ("C0", "C1", "C2")),
    Case("self dependency", lambda: [cls("Selfish", deps_on={"Selfish"})], SelfDependencyError, ("Selfish", "itself")),
    Case(
        "dangling name",
        lambda: [cls("Dangles", deps_on={"Nowhere"})],
        DanglingReferenceError,
        ("Dangles", "Nowhere", "deps_on_unmanaged"),
    ),
    Case(
        "dangling tuple",
        lambda: [cls("DanglesT", deps_on={("other", "Nowhere")})],
        DanglingReferenceError,
        ("DanglesT", "other"),
    ),
    Case(
        "unregistered class",
        lambda: [cls("UsesGhost", deps_on={cls("Ghost")})],
        DanglingReferenceError,
        ("UsesGhost", "Ghost", "not registered"),
    ),
    Case(
        "ambiguous overload",
        lambda: [
            cls(
                "f1",
                SamizdatFunction,
                function_name="f",
                function_arguments_signature="x int",
                sql_template="${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            ),
            cls(
                "f2",
                SamizdatFunction,
                function_name="f",
                function_arguments_signature="x text",
                sql_template="${preamble} RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
            ),
            cls("UsesF", deps_on={"f"}),
        ],
        DanglingReferenceError,
        ("UsesF", "overloads"),
    ),
    Case("bad deps_on entry", lambda: [cls("BadRef", deps_on={42})], DeclarationError, ("BadRef", "42")),
    Case("deps_on is a string", lambda: [cls("StrDeps", deps_on="Other")], DeclarationError, ("StrDeps.deps_on",)),
    Case(
        "two classes, one object",
        lambda: [
            cls("Twin"),
            type("Twin", (SamizdatView,), {"__module__": "other", "sql_template": "${preamble} SELECT 2 ${postamble}"}),
        ],
        DuplicateIdentityError,
        ("Twin", "rename"),
    ),
    Case(
        "managed listed as unmanaged",
        lambda: [cls("Base"), cls("Reader", deps_on_unmanaged={"Base"})],
        ManagedListedAsUnmanagedError,
        ("Reader", "Base", "deps_on"),
    ),
    Case(
        "trigger on a materialized view",
        lambda: [
            m := cls("Mat", SamizdatMaterializedView),
            cls(
                "OnMat",
                SamizdatTrigger,
                on_table=m,
                condition="AFTER INSERT",
                sql_template="${preamble} FOR EACH ROW EXECUTE FUNCTION f()",
            ),
        ],
        TriggerTargetError,
        ("OnMat", "cannot have triggers"),
    ),
    Case(
        "refresh trigger on a view",
        lambda: [cls("PlainV"), cls("Fed", SamizdatMaterializedView, refresh_triggers={"PlainV"})],
        TriggerTargetError,
        ("Fed", "PlainV"),
    ),
    Case(
        "trigger without condition",
        lambda: [
            cls("NoCond", SamizdatTrigger, on_table="t", sql_template="${preamble} FOR EACH ROW EXECUTE FUNCTION f()")
        ],
        DeclarationError,
        ("NoCond.condition",),
    ),
    Case(
        "bad on_table",
        lambda: [
            cls(
                "BadTable",
                SamizdatTrigger,
                on_table=3,
                condition="AFTER INSERT",
                sql_template="${preamble} EXECUTE FUNCTION f()",
            )
        ],
        DeclarationError,
        ("BadTable.on_table",),
    ),
    Case(
        "grants on a trigger's privilege",
        lambda: [cls("Granted", grants={"r": {"FLY"}})],
        DeclarationError,
        ("Granted.grants", "FLY"),
    ),
    Case(
        "class name collides with a table",
        lambda: [cls("users")],
        NameClashError,
        ("users", "table", "no signature"),
        setup="CREATE TABLE users (id int)",
    ),
    Case(
        "name taken by an unsigned view",
        lambda: [cls("Taken")],
        NameClashError,
        ("Taken", "did not create"),
        setup='CREATE VIEW "Taken" AS SELECT 2',
    ),
    Case(
        "malformed comment on an object we want",
        lambda: [cls("Broken")],
        NameClashError,
        ("Broken", "cannot be read"),
        setup='CREATE VIEW "Broken" AS SELECT 2; COMMENT ON VIEW "Broken" IS \'{"alembic_samizdat": broken\'',
    ),
    Case(
        "truncated signature",
        lambda: [cls("Trunc")],
        NameClashError,
        ("Trunc", "cannot be read"),
        setup='CREATE VIEW "Trunc" AS SELECT 2; COMMENT ON VIEW "Trunc" IS \'{"alembic_samizdat":1,"scope":"default","kind":"vi\'',
    ),
    Case(
        "hostile signature (wrong types)",
        lambda: [cls("Hostile")],
        NameClashError,
        ("Hostile", "cannot be read"),
        setup='CREATE VIEW "Hostile" AS SELECT 2; COMMENT ON VIEW "Hostile" IS \'{"alembic_samizdat":1,"scope":[],"kind":"view","key":1,"hash":{}}\'',
    ),
    Case(
        "another scope's object",
        lambda: [cls("Theirs")],
        NameClashError,
        ("Theirs", "scope 'other'"),
        setup='CREATE VIEW "Theirs" AS SELECT 2; COMMENT ON VIEW "Theirs" IS \'{"alembic_samizdat":1,"scope":"other","kind":"view","key":["relation","public","Theirs",""],"hash":"x"}\'',
    ),
    Case(
        "function signature mismatch",
        lambda: [
            cls(
                "mismatch",
                SamizdatFunction,
                function_arguments="a int, b int DEFAULT 1",
                function_arguments_signature="a int",
                sql_template="${preamble} RETURNS int LANGUAGE sql AS $$ SELECT a + b $$",
            )
        ],
        FunctionSignatureMismatchError,
        ("mismatch", "a integer, b integer", "(a int)"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(case: Case, engine: sa.Engine) -> None:
    run_sql(engine, "CREATE TABLE t (id int)")
    if case.setup:
        run_sql(engine, case.setup)
    before = catalog_snapshot(engine)
    with pytest.raises(SamizdatError) as caught:
        registry = SamizdatRegistry()
        for item in case.classes():
            registry.register(item)
        sync(engine, registry, discipline=case.discipline)
    assert type(caught.value) is case.error, f"{type(caught.value).__name__}: {caught.value}"
    message = str(caught.value)
    assert "\n" not in message.strip() or case.error is ExecutionError
    for word in case.words:
        assert word in message, (word, message)
    assert catalog_snapshot(engine) == before


def test_odd_scope_names_are_plain_strings(engine: sa.Engine) -> None:
    registry = SamizdatRegistry(scope="we'ird \" scope; DROP TABLE t; --")
    registry.register(cls("Scoped"))
    sync(engine, registry)
    assert not sync(engine, registry).plan.actions


def test_module_that_does_not_import() -> None:
    with pytest.raises(ModuleLoadError, match="cannot import no_such_module_at_all"):
        SamizdatRegistry().load("no_such_module_at_all")


def test_corpus_is_big_enough() -> None:
    assert len(CASES) + 2 >= 30
    assert len({c.error for c in CASES}) >= 10

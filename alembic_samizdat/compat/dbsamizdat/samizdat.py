"""DBSamizdat's ``dbsamizdat.samizdat``: the classes and metaclasses, behaving as DBSamizdat 0.11.2's do.

What a module can observe is DBSamizdat's: the metaclass properties ``name``, ``fq``, ``db_object_identity``
(and ``creation_identity`` for functions), ``str(cls)`` (DBSamizdat's node name), templates read with
:meth:`string.Template.safe_substitute` and tidied as DBSamizdat tidies them, ``${samizdatname}``, postambles,
and which classes count as samizdats (every subclass; only these base classes are not). Subclassing the
metaclasses works as in DBSamizdat, including ``sql_template`` or ``deps_on`` defined as metaclass properties.
What happens to the objects — signatures, planning, drops without ``CASCADE`` — is alembic-samizdat's.
"""

from __future__ import annotations

import hashlib
from abc import ABCMeta
from enum import Enum
from typing import Any, ClassVar

from ... import model
from ...errors import DeclarationError
from ...identifiers import check_identifier
from ...template import TemplateDialect, render
from .exceptions import SQLTemplateException, UnsuitableNameError
from .util import db_object_identity, fqify_node, nodenamefmt, sqlfmt

__all__ = [
    "PG_IDENTIFIER_MAXLEN",
    "PG_IDENTIFIER_VERBOTEN",
    "TRIGGER_DEPCOUNTER_PADDED_WIDTH",
    "SQLTemplateException",
    "Samizdat",
    "SamizdatFunction",
    "SamizdatFunctionMeta",
    "SamizdatMaterializedView",
    "SamizdatMeta",
    "SamizdatTrigger",
    "SamizdatTriggerMeta",
    "SamizdatView",
    "UnsuitableNameError",
    "db_object_identity",
    "entitypes",
    "fqify_node",
    "nodenamefmt",
    "sqlfmt",
]

_DBINFO_VERSION = 1
PG_IDENTIFIER_MAXLEN = 63
PG_IDENTIFIER_VERBOTEN = frozenset('"')
TRIGGER_DEPCOUNTER_PADDED_WIDTH = 5

#: DBSamizdat's default template: it holds neither placeholder, so a class that forgets its own fails, naming it.
_DEFAULT_TEMPLATE = """
        -- There should be a class-dependent body for ${samizdatname} here.
        -- See README.md.
        """


class entitypes(Enum):
    """The kinds of object, with their SQL names."""

    VIEW = "VIEW"
    MATVIEW = "MATERIALIZED VIEW"
    FUNCTION = "FUNCTION"
    TRIGGER = "TRIGGER"


class SamizdatMeta(model.SamizdatMeta, ABCMeta):
    """DBSamizdat's metaclass: ``name``, ``fq``, ``db_object_identity`` and ``str(cls)`` as DBSamizdat has them."""

    @property
    def name(cls) -> str:
        """The object's name: the class name."""
        return cls.__name__

    @property
    def fq(cls) -> Any:
        """``(schema, name)``."""
        return (cls.schema, cls.name)  # type: ignore[attr-defined]

    @property
    def db_object_identity(cls) -> str:
        """``"schema"."name"``, pasted as DBSamizdat pastes it."""
        return db_object_identity(cls.fq)

    def __str__(cls) -> str:
        args = getattr(cls, "function_arguments_signature", None)
        node = (cls.schema, cls.name, args) if args else (cls.schema, cls.name)  # type: ignore[attr-defined]
        return nodenamefmt(node)


class SamizdatFunctionMeta(SamizdatMeta, ABCMeta):
    """Functions: the name is ``function_name`` (default: the class name); ``fq`` adds the signature."""

    @property
    def name(cls) -> str:
        """``function_name``, or the class name."""
        name = getattr(cls, "function_name", None)
        return cls.__name__ if name is None else str(name)

    @property
    def fq(cls) -> Any:
        """``(schema, name, function_arguments_signature)``."""
        return (cls.schema, cls.name, cls.function_arguments_signature)  # type: ignore[attr-defined]

    @property
    def creation_identity(cls) -> str:
        """``"schema"."name"(function_arguments)``: what ``CREATE FUNCTION`` names."""
        return f'"{cls.schema}"."{cls.name}"({cls.creation_function_arguments()})'  # type: ignore[attr-defined]

    def creation_function_arguments(cls) -> str:
        """``function_arguments``, or the signature when there is none."""
        arguments = getattr(cls, "function_arguments", None)
        return str(cls.function_arguments_signature if arguments is None else arguments)  # type: ignore[attr-defined]


class SamizdatTriggerMeta(SamizdatMeta, ABCMeta):
    """Triggers: ``fq`` is ``("schema.table", name)``, as DBSamizdat identifies a trigger by its table."""

    @property
    def fq(cls) -> Any:
        """``("schema.table", name)``."""
        return (".".join(fqify_node(cls.on_table)), cls.name)  # type: ignore[attr-defined]

    def __str__(cls) -> str:
        return nodenamefmt(cls.fq)


class Samizdat(model.Samizdat, metaclass=SamizdatMeta):
    """Base of the DBSamizdat-compatible classes: templates read as DBSamizdat reads them.

    As in DBSamizdat, every subclass declares an object (a subclass without a template of its own fails,
    naming itself); only the classes of this module are bases.
    """

    __abstract__ = True
    template_dialect: ClassVar[TemplateDialect] = TemplateDialect.STRING_TEMPLATE
    sql_template: ClassVar[str | None] = _DEFAULT_TEMPLATE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f'Error: Don\'t instantiate objects of type "{type(self).__name__}".\nUse it as a static class.'
        )

    @classmethod
    def object_name(cls) -> str:
        """The metaclass's ``name`` (a metaclass of the module's own may redefine it)."""
        return check_identifier(cls.name, f"name of class {cls.__qualname__}")

    @classmethod
    def create(cls) -> str:
        """The SQL DBSamizdat would send to create the object."""
        if cls.is_abstract():
            raise DeclarationError(f"{cls.label()} is a base class; subclass it to declare an object")
        return render(
            cls.sql_template,  # type: ignore[arg-type]
            {"preamble": cls.preamble(), "postamble": cls.postamble(), "samizdatname": cls.db_object_identity},
            owner=cls.label(),
            dialect=TemplateDialect.STRING_TEMPLATE,
            require_postamble=True,
        )

    @classmethod
    def drop(cls, if_exists: bool = False) -> str:
        """The statement dropping the object — without DBSamizdat's ``CASCADE``, which destroys dependents
        silently (the library drops and recreates managed dependents itself)."""
        from ...declared import declared_of

        target = declared_of(cls).comment_target()
        if if_exists:
            kind = "MATERIALIZED VIEW" if target.startswith("MATERIALIZED VIEW ") else target.split(" ", 1)[0]
            target = f"{kind} IF EXISTS {target[len(kind) + 1 :]}"
        return f"DROP {target}"

    @classmethod
    def get_preamble(cls) -> str:
        """DBSamizdat's name for :meth:`preamble`."""
        return cls.preamble()

    @classmethod
    def get_postamble(cls) -> str:
        """DBSamizdat's name for :meth:`postamble`."""
        return cls.postamble()

    @classmethod
    def fqify(cls, ref: Any) -> Any:
        """A ``deps_on`` entry as a node: names in this class's schema, classes by their ``fq``."""
        if isinstance(ref, str):
            return (cls.schema, ref)
        if isinstance(ref, SamizdatMeta):
            return ref.fq
        if isinstance(ref, tuple):
            return ref
        raise ValueError(f"Not a string, tuple, or Samizdat: '{ref}'")

    @classmethod
    def fqdeps_on(cls) -> set[Any]:
        """``deps_on`` as nodes."""
        return {cls.fqify(ref) for ref in cls.deps_on}

    @classmethod
    def fqdeps_on_unmanaged(cls) -> set[Any]:
        """``deps_on_unmanaged`` as nodes."""
        return {cls.fqify(ref) for ref in cls.deps_on_unmanaged}

    @classmethod
    def definition_hash(cls) -> str:
        """The hash DBSamizdat records in its signature for this class: md5 of the raw template, the identity
        and (functions) the creation identity, read through the metaclass as DBSamizdat reads them."""
        parts = (cls.sql_template, cls.db_object_identity, getattr(cls, "creation_identity", ""))
        return hashlib.md5("|".join(str(part) for part in parts).encode("utf-8")).hexdigest()


class SamizdatView(Samizdat, model.SamizdatView, metaclass=SamizdatMeta):
    """A view, declared as in DBSamizdat."""

    __abstract__ = True
    entity_type = entitypes.VIEW


class SamizdatMaterializedView(Samizdat, model.SamizdatMaterializedView, metaclass=SamizdatMeta):
    """A materialized view, declared as in DBSamizdat (``${postamble}`` is ``WITH NO DATA;``)."""

    __abstract__ = True
    entity_type = entitypes.MATVIEW
    AUTOREFRESHER_COUNTER = "autorefresher"

    @classmethod
    def fqrefresh_triggers(cls) -> set[Any]:
        """``refresh_triggers`` as nodes."""
        return {cls.fqify(ref) for ref in cls.refresh_triggers}

    @classmethod
    def refresh(cls, concurrent_allowed: bool = True) -> str:
        """DBSamizdat's ``REFRESH MATERIALIZED VIEW`` statement for this view."""
        concurrently = "CONCURRENTLY" if concurrent_allowed and cls.refresh_concurrently else ""
        return sqlfmt(f"REFRESH MATERIALIZED VIEW {concurrently} {cls.db_object_identity};")


class SamizdatFunction(Samizdat, model.SamizdatFunction, metaclass=SamizdatFunctionMeta):
    """A function, declared as in DBSamizdat."""

    __abstract__ = True
    entity_type = entitypes.FUNCTION
    autorefresher = False


class SamizdatTrigger(Samizdat, model.SamizdatTrigger, metaclass=SamizdatTriggerMeta):
    """A trigger, declared as in DBSamizdat: ``on_table`` is ``"table"`` (in public), ``"schema.table"`` or
    ``(schema, table)``; ``is_constraint = True`` makes it a constraint trigger."""

    __abstract__ = True
    schema: ClassVar[str] = None  # type: ignore[assignment]  # DBSamizdat's: triggers live in their table's schema
    entity_type = entitypes.TRIGGER
    autorefresher = False
    is_constraint: ClassVar[bool] = False

    @classmethod
    def table(cls) -> tuple[str, str]:
        """The table, read as DBSamizdat reads ``on_table``."""
        target = cls.on_table
        if isinstance(target, str):
            schema, name = fqify_node(target)
            return (
                check_identifier(schema, f"{cls.label()}.on_table schema"),
                check_identifier(name, f"{cls.label()}.on_table name"),
            )
        return super().table()

    @classmethod
    def schema_name(cls) -> str:
        """The schema of the table the trigger is on."""
        return cls.table()[0]

    @classmethod
    def preamble(cls) -> str:
        """``CREATE [CONSTRAINT] TRIGGER "name" <condition> ON "schema"."table"``."""
        head = super().preamble()
        if cls.is_constraint is True and not head.startswith("CREATE CONSTRAINT "):
            head = "CREATE CONSTRAINT " + head.removeprefix("CREATE ")
        return head

"""The classes users subclass to declare samizdats: views, materialized views, functions, procedures and triggers.

A subclass is a declaration and nothing more: it holds a ``sql_template`` and attributes. Turning it into
database identities, SQL and signatures happens in :mod:`alembic_samizdat.declared`; ordering and checking in
:mod:`alembic_samizdat.graph`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, NamedTuple

from .errors import DeclarationError, TenantError
from .identifiers import check_identifier, qualified, quote_ident
from .keys import Key, Kind, normalize_signature
from .template import TemplateDialect, render

#: What ``deps_on`` may hold: a samizdat class, a bare name, or a 2-/3-tuple of strings.
Reference = Any


class FQTuple(NamedTuple):
    """A fully qualified reference: schema, name and (for functions) the argument signature."""

    schema: str
    name: str
    args: str | None = None

    def __call__(self) -> FQTuple:
        # DBSamizdat exposes ``fq()`` as a method; being callable keeps such code working.
        return self


class _Identity(str):
    """The quoted identity of an object; callable so that ``cls.db_object_identity()`` works too."""

    __slots__ = ()

    def __call__(self) -> str:
        return str(self)


class TenantSchema(str):
    """The type of :data:`TENANT` (a ``str`` so that ``schema = TENANT`` type-checks)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "TENANT"


#: ``schema = TENANT``: the class declares one object in every tenant schema (see docs/fleets.md).
TENANT = TenantSchema("TENANT")

#: The attribute that marks a class made for one tenant by :func:`alembic_samizdat.tenants.expand`.
TENANT_ATTRIBUTE = "_samizdat_tenant"

_generation = 0


def class_generation() -> int:
    """A counter bumped whenever an attribute of any samizdat class is set or deleted after its creation.

    Memoized declarations (:func:`alembic_samizdat.declared.declared_of`) compare it to know that no class was
    reassigned since they were made.
    """
    return _generation


class SamizdatMeta(type):
    """Metaclass giving samizdat classes their read-only class properties ``fq`` and ``db_object_identity``,
    and counting changes to their attributes (see :func:`class_generation`)."""

    def __setattr__(cls, name: str, value: object) -> None:
        # Any assignment may change what the class declares (a template, a dependency, an overridden
        # classmethod, its name…): every memoized declaration is re-checked against the class on next use.
        global _generation
        super().__setattr__(name, value)
        _generation += 1

    def __delattr__(cls, name: str) -> None:
        global _generation
        super().__delattr__(name)
        _generation += 1

    @property
    def fq(cls) -> FQTuple:
        """The fully qualified reference of this samizdat (a tuple usable in another class's ``deps_on``)."""
        return cls._fq()  # type: ignore[attr-defined, no-any-return]

    @property
    def db_object_identity(cls) -> str:
        """The quoted name of the object in the database, e.g. ``"public"."Totals"`` (functions add args)."""
        return _Identity(cls._identity())  # type: ignore[attr-defined]


class Samizdat(metaclass=SamizdatMeta):
    """Base of every samizdat class. Subclass one of the concrete kinds below, not this one.

    A class is *abstract* (an intermediate base, never registered) when it sets ``__abstract__ = True`` in its
    own body, as SQLAlchemy spells it. Every other subclass declares an object, and one without a
    ``sql_template`` is an error naming it (a typo such as ``sql_templte`` must not sync nothing silently).
    """

    __abstract__: ClassVar[bool] = True

    kind: ClassVar[Kind]
    #: The SQL template; see :mod:`alembic_samizdat.template` for the placeholders.
    sql_template: ClassVar[str | None] = None
    #: The schema the object lives in.
    schema: ClassVar[str] = "public"
    #: Samizdats this one depends on: classes, bare names (same schema), or 2-/3-tuples.
    deps_on: ClassVar[Iterable[Reference]] = frozenset()
    #: Database objects (tables…) this one reads but that are not managed here: names or (schema, name).
    deps_on_unmanaged: ClassVar[Iterable[str | tuple[str, str]]] = frozenset()
    #: How ``sql_template`` is read; the DBSamizdat compatibility classes read it as ``string.Template``.
    template_dialect: ClassVar[TemplateDialect] = TemplateDialect.NATIVE
    #: Privileges to keep granted, e.g. ``{"reporting": {"SELECT"}}`` (``"PUBLIC"`` for everyone). Changes are
    #: applied with GRANT / REVOKE, never by recreating the object; grants not declared here are left alone.
    grants: ClassVar[Mapping[str, Iterable[str]]] = {}

    @classmethod
    def is_abstract(cls) -> bool:
        """Whether this class is an intermediate base rather than a declaration of an object."""
        return cls.__dict__.get("__abstract__") is True or cls is Samizdat or cls in CONCRETE_BASES

    @classmethod
    def object_name(cls) -> str:
        """The object's name in the database: the class name, or ``function_name`` / ``trigger_name``."""
        return check_identifier(cls.__name__, f"name of class {cls.__qualname__}")

    @classmethod
    def schema_name(cls) -> str:
        """The validated schema name."""
        if cls.is_tenant():
            raise TenantError(
                f"{cls.label()} has schema = TENANT: it declares one object per tenant schema, so it has no schema "
                "of its own here; give the tenants (--tenant-schemas PATTERN, or tenants=[…] in "
                "alembic_samizdat.fleet) and reference it only from other TENANT classes (docs/fleets.md)"
            )
        return check_identifier(cls.schema, f"{cls.__qualname__}.schema")

    @classmethod
    def is_tenant(cls) -> bool:
        """Whether the class declares ``schema = TENANT`` (one object per tenant schema)."""
        return isinstance(cls.schema, TenantSchema)

    @classmethod
    def key(cls) -> Key:
        """The database identity of this object."""
        return Key(cls.kind.namespace, cls.schema_name(), cls.object_name())

    @classmethod
    def _fq(cls) -> FQTuple:
        return FQTuple(cls.schema_name(), cls.object_name())

    @classmethod
    def _identity(cls) -> str:
        return qualified(cls.schema_name(), cls.object_name())

    @classmethod
    def label(cls) -> str:
        """How messages name this class: ``module.QualName``."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def preamble(cls) -> str:
        """The ``CREATE …`` head that ``${preamble}`` becomes."""
        raise NotImplementedError

    @classmethod
    def postamble(cls) -> str:
        """The tail that ``${postamble}`` becomes: it ends the statement (as in DBSamizdat), so a template may
        go on with more statements (indexes, comments) with or without a ``;`` of its own."""
        return ";"

    @classmethod
    def requires_postamble(cls) -> bool:
        """Whether the template must hold ``${postamble}``."""
        return False

    @classmethod
    def create(cls) -> str:
        """The rendered SQL that creates this object (without its signature comment)."""
        if cls.is_abstract():
            raise DeclarationError(f"{cls.label()} is abstract (__abstract__ = True); it cannot be created")
        if cls.sql_template is None:
            raise missing_template(cls)
        values = {"preamble": cls.preamble(), "postamble": cls.postamble(), "samizdatname": cls._identity()}
        tenant = cls.__dict__.get(TENANT_ATTRIBUTE)
        if isinstance(tenant, str):
            values["tenant"] = quote_ident(tenant)
        return render(
            cls.sql_template,
            values,
            owner=cls.label(),
            dialect=cls.template_dialect,
            require_postamble=cls.requires_postamble(),
        )


def missing_template(cls: type[Samizdat]) -> DeclarationError:
    """The error for a concrete class without ``sql_template``."""
    return DeclarationError(
        f"{cls.label()} has no sql_template: give it one, or mark it as an intermediate base with "
        "__abstract__ = True in its class body"
    )


class SamizdatView(Samizdat):
    """A view: the template's ``${preamble}`` becomes ``CREATE VIEW "schema"."Name" AS``."""

    __abstract__ = True
    kind = Kind.VIEW

    @classmethod
    def preamble(cls) -> str:
        """``CREATE VIEW … AS``."""
        return f"CREATE VIEW {cls._identity()} AS"

    @classmethod
    def requires_postamble(cls) -> bool:
        """Views need the postamble only in native templates (DBSamizdat tolerated its absence)."""
        return cls.template_dialect is TemplateDialect.NATIVE


class SamizdatMaterializedView(Samizdat):
    """A materialized view; created ``WITH NO DATA`` and then populated in dependency order."""

    __abstract__ = True
    kind = Kind.MATVIEW
    #: Refresh with ``CONCURRENTLY`` when PostgreSQL allows it (populated, with a unique index).
    refresh_concurrently: ClassVar[bool] = False
    #: Tables whose changes refresh this view through generated triggers.
    refresh_triggers: ClassVar[Iterable[str | tuple[str, str]]] = frozenset()
    #: Populate the view when it is created (by sync or a migration). ``False`` leaves a large view empty
    #: until ``samizdat refresh``; it is then never called "not populated".
    with_data: ClassVar[bool] = True
    #: How ``refresh_triggers`` keep the view fresh: ``"immediate"`` refreshes it inside every writing
    #: transaction; ``"deferred"`` only marks it (and the views above it) stale, and ``samizdat worker``
    #: refreshes what is marked, debounced (docs/refresh.md).
    refresh_mode: ClassVar[str] = "immediate"

    @classmethod
    def preamble(cls) -> str:
        """``CREATE MATERIALIZED VIEW … AS``."""
        return f"CREATE MATERIALIZED VIEW {cls._identity()} AS"

    @classmethod
    def postamble(cls) -> str:
        """``WITH NO DATA;``: views are populated after the whole stack exists, in dependency order."""
        return "WITH NO DATA;"

    @classmethod
    def requires_postamble(cls) -> bool:
        """Materialized views always need the postamble."""
        return True

    @classmethod
    def create_beside(cls, schema: str, marker: str) -> str | None:
        """The template rendered for a populated copy of this view in ``schema`` (the materialized-view swap:
        see :mod:`alembic_samizdat.swap`), with ``marker`` right after the ``WITH DATA;`` that ends the
        ``CREATE``; ``None`` when the class renders its own head (then only a rebuild is safe)."""
        if cls.preamble() != f"CREATE MATERIALIZED VIEW {cls._identity()} AS" or cls.postamble() != "WITH NO DATA;":
            return None
        if cls.sql_template is None:
            raise missing_template(cls)
        there = qualified(schema, cls.object_name())
        return render(
            cls.sql_template,
            {
                "preamble": f"CREATE MATERIALIZED VIEW {there} AS",
                "postamble": f"WITH DATA;{marker}",
                "samizdatname": there,
            },
            owner=cls.label(),
            dialect=cls.template_dialect,
            require_postamble=True,
        )


class SamizdatFunction(Samizdat):
    """A function; ``${preamble}`` becomes ``CREATE FUNCTION "schema"."name"(arguments)``."""

    __abstract__ = True
    kind = Kind.FUNCTION
    #: The function's name; defaults to the class name (set it to declare overloads).
    function_name: ClassVar[str | None] = None
    #: The identity signature, e.g. ``"username text, userid int"``.
    function_arguments_signature: ClassVar[str] = ""
    #: The full argument list when it differs from the signature (defaults, OUT arguments…).
    function_arguments: ClassVar[str | None] = None

    @classmethod
    def object_name(cls) -> str:
        """``function_name`` or the class name."""
        name = cls.function_name if cls.function_name is not None else cls.__name__
        return check_identifier(name, f"function name of class {cls.__qualname__}")

    @classmethod
    def signature(cls) -> str:
        """The declared identity signature, whitespace-normalised."""
        if not isinstance(cls.function_arguments_signature, str):
            raise DeclarationError(f"{cls.label()}.function_arguments_signature must be a string")
        return normalize_signature(cls.function_arguments_signature)

    @classmethod
    def key(cls) -> Key:
        """Schema, name and argument signature."""
        return Key("function", cls.schema_name(), cls.object_name(), cls.signature())

    @classmethod
    def _fq(cls) -> FQTuple:
        return FQTuple(cls.schema_name(), cls.object_name(), cls.signature())

    @classmethod
    def _identity(cls) -> str:
        return f"{qualified(cls.schema_name(), cls.object_name())}({cls.signature()})"

    @classmethod
    def preamble(cls) -> str:
        """``CREATE FUNCTION … (arguments)``."""
        args = cls.function_arguments if cls.function_arguments is not None else cls.function_arguments_signature
        return f"CREATE FUNCTION {qualified(cls.schema_name(), cls.object_name())}({args})"


class SamizdatProcedure(SamizdatFunction):
    """A procedure (PostgreSQL 11+, run with ``CALL``); ``${preamble}`` becomes
    ``CREATE PROCEDURE "schema"."name"(arguments)``.

    Declared like a function: ``function_name`` (for overloads), ``function_arguments_signature`` and
    ``function_arguments``; ``grants`` takes ``EXECUTE``.
    """

    __abstract__ = True
    kind = Kind.PROCEDURE

    @classmethod
    def preamble(cls) -> str:
        """``CREATE PROCEDURE … (arguments)``."""
        return "CREATE PROCEDURE" + super().preamble().removeprefix("CREATE FUNCTION")


class SamizdatTrigger(Samizdat):
    """A trigger on a table (or ``INSTEAD OF`` on a view); ``${preamble}`` is ``CREATE TRIGGER … ON …``."""

    __abstract__ = True
    kind = Kind.TRIGGER
    #: The table: a bare name (in this class's schema), a ``(schema, name)`` tuple, or a samizdat view class.
    on_table: ClassVar[str | tuple[str, str] | type[Samizdat] | None] = None
    #: ``{ BEFORE | AFTER | INSTEAD OF } event [OR …]``, e.g. ``"AFTER INSERT"``.
    condition: ClassVar[str | None] = None
    #: The trigger's name; defaults to the class name. Trigger names are per table, so one name may serve on many
    #: tables (one class per table).
    trigger_name: ClassVar[str | None] = None
    #: Create a constraint trigger (``CREATE CONSTRAINT TRIGGER``): ``AFTER … FOR EACH ROW`` only, and the
    #: template may make it ``DEFERRABLE INITIALLY DEFERRED`` so that it fires at commit.
    is_constraint: ClassVar[bool] = False

    @classmethod
    def object_name(cls) -> str:
        """``trigger_name`` or the class name."""
        name = cls.trigger_name if cls.trigger_name is not None else cls.__name__
        return check_identifier(name, f"trigger name of class {cls.__qualname__}")

    @classmethod
    def table(cls) -> tuple[str, str]:
        """The (schema, table) the trigger is on."""
        target = cls.on_table
        if isinstance(target, type) and issubclass(target, Samizdat):
            return target.schema_name(), target.object_name()
        if isinstance(target, str):
            return cls.schema_name(), check_identifier(target, f"{cls.label()}.on_table")
        if isinstance(target, tuple) and len(target) == 2:
            return (
                check_identifier(target[0], f"{cls.label()}.on_table schema"),
                check_identifier(target[1], f"{cls.label()}.on_table name"),
            )
        raise DeclarationError(
            f"{cls.label()}.on_table must be a table name, a (schema, table) tuple or a samizdat view class; "
            f"got {target!r}"
        )

    @classmethod
    def trigger_condition(cls) -> str:
        """The validated ``condition``."""
        if not isinstance(cls.condition, str) or not cls.condition.strip():
            raise DeclarationError(
                f"{cls.label()}.condition must say when the trigger fires, e.g. 'AFTER INSERT OR UPDATE'"
            )
        return cls.condition.strip()

    @classmethod
    def key(cls) -> Key:
        """The trigger lives in its table's schema; its identity includes the table."""
        schema, table = cls.table()
        return Key("trigger", schema, cls.object_name(), table)

    @classmethod
    def _fq(cls) -> FQTuple:
        schema, _ = cls.table()
        return FQTuple(schema, cls.object_name())

    @classmethod
    def _identity(cls) -> str:
        schema, table = cls.table()
        return f"{quote_ident(cls.object_name())} ON {qualified(schema, table)}"

    @classmethod
    def constraint(cls) -> bool:
        """The validated ``is_constraint``."""
        if not isinstance(cls.is_constraint, bool):
            raise DeclarationError(f"{cls.label()}.is_constraint must be True or False, not {cls.is_constraint!r}")
        return cls.is_constraint

    @classmethod
    def preamble(cls) -> str:
        """``CREATE [CONSTRAINT] TRIGGER "name" <condition> ON "schema"."table"``."""
        schema, table = cls.table()
        head = "CREATE CONSTRAINT TRIGGER" if cls.constraint() else "CREATE TRIGGER"
        return f"{head} {quote_ident(cls.object_name())} {cls.trigger_condition()} ON {qualified(schema, table)}"


CONCRETE_BASES: tuple[type[Samizdat], ...] = (
    SamizdatView,
    SamizdatMaterializedView,
    SamizdatFunction,
    SamizdatProcedure,
    SamizdatTrigger,
)

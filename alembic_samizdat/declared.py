"""Declared objects: what one samizdat class (or one generated sidekick) asks the database to hold.

A :class:`Declared` is plain data, built once from a class; everything downstream (graph, plan, signature)
works on it and never on the class again.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Iterable, Mapping, MutableMapping, MutableSequence, MutableSet
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace

from . import statements
from .errors import DeclarationError
from .identifiers import check_identifier, qualified, quote_ident
from .keys import Key, Kind
from .model import (
    Reference,
    Samizdat,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatTrigger,
    class_generation,
)


@dataclass(frozen=True)
class Declared:
    """One object to create: its identity, SQL, and what its signature hash covers."""

    key: Key
    kind: Kind
    #: How messages name it: the class, or the sidekick and its owner.
    label: str
    #: The rendered template (may hold several statements, e.g. indexes after the postamble).
    sql: str
    #: Raw ``deps_on`` entries, resolved by the graph.
    refs: tuple[Reference, ...] = ()
    #: Dependencies already resolved (sidekicks, implicit trigger-on-view dependencies).
    implicit_deps: tuple[Key, ...] = ()
    #: Unmanaged objects read, as (schema, name).
    unmanaged: tuple[tuple[str, str], ...] = ()
    refresh_concurrently: bool = False
    refresh_triggers: tuple[tuple[str, str], ...] = ()
    condition: str = ""
    trigger_table: tuple[str, str] | None = None
    #: A constraint trigger; part of ``sql`` (its preamble), so not hashed again.
    is_constraint: bool = False
    function_arguments: str = ""
    #: Populate on creation (materialized views); not part of the hash, so changing it recreates nothing.
    with_data: bool = True
    #: ``"immediate"`` or ``"deferred"`` (materialized views); shapes only the generated sidekicks, whose names
    #: differ by mode, so it is not part of the view's own hash: switching modes never recreates the view.
    refresh_mode: str = "immediate"
    #: Declared privileges as (role, privilege); ``PUBLIC`` for everyone. Not part of the hash.
    grants: tuple[tuple[str, str], ...] = ()
    #: The owner of a generated sidekick.
    generated_by: Key | None = None
    source: type[Samizdat] | None = field(default=None, compare=False)
    #: ``sql`` with ``CREATE OR REPLACE`` for its head, when the kind can be replaced in place (views, functions,
    #: triggers) and the head is the class's own ``${preamble}``; derived from ``sql``, so not compared.
    replace_sql: str | None = field(default=None, compare=False)

    def fingerprint(self) -> dict[str, object]:
        """Everything that shapes the object; its hash is what the signature records."""
        return {
            "kind": self.kind.value,
            "key": [self.key.namespace, self.key.schema, self.key.name, self.key.extra],
            "sql": self.sql,
            "condition": self.condition,
            "table": list(self.trigger_table) if self.trigger_table else None,
            "arguments": self.function_arguments,
            "refresh_concurrently": self.refresh_concurrently,
            "refresh_triggers": sorted(list(t) for t in self.refresh_triggers),
        }

    def drop_statement(self) -> str:
        """``DROP …`` of this object as declared (never ``CASCADE``)."""
        return statements.drop(self.kind, self.key)

    def comment_target(self) -> str:
        """The object as ``COMMENT ON`` names it."""
        return statements.target(self.kind, self.key)


_CONTAINERS = (MutableSet, MutableMapping, MutableSequence)
#: Types whose values never change in place; tested first because isinstance() against ABCs is slow.
_PLAIN = frozenset({str, bytes, int, float, bool, type(None), frozenset, tuple, classmethod, staticmethod, property})


def _is_container(value: object) -> bool:
    kind = type(value)
    if kind is set or kind is dict or kind is list:
        return True
    return kind not in _PLAIN and not isinstance(value, type) and isinstance(value, _CONTAINERS)


def _snapshot(value: object) -> object:
    """A copy of ``value`` that compares equal to it (``==``) for as long as its contents do not change."""
    if isinstance(value, type) or (type(value) in _PLAIN and not isinstance(value, tuple | frozenset)):
        return value
    if isinstance(value, AbstractSet):
        # Members of a set are hashable, hence (for anything declare() reads) immutable.
        return frozenset(value)
    if isinstance(value, Mapping):
        return {key: _snapshot(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(_snapshot(item) for item in value)
    if isinstance(value, MutableSequence):
        return [_snapshot(item) for item in value]
    return value


def _own_containers(klass: type) -> tuple[object, ...]:
    """The set, list and dict values in ``klass``'s own namespace (dunder names aside)."""
    return tuple(value for name, value in klass.__dict__.items() if _is_container(value) and not name.startswith("__"))


# The containers of base classes, shared by all their subclasses: found once per class generation (a
# container is replaced only by an assignment, which the generation counts).
_BASE_CONTAINERS: weakref.WeakKeyDictionary[type, tuple[int, tuple[object, ...]]] = weakref.WeakKeyDictionary()


def _containers(cls: type[Samizdat], generation: int) -> tuple[tuple[object, object], ...]:
    """The mutable containers among ``cls``'s attributes (its own and inherited), each with a snapshot.

    Assignments are counted by the metaclass; in-place changes (``V.deps_on.add(W)``, ``V.grants["r"] = …``)
    are not, so these are compared by content on every use of a memoized declaration.
    """
    found = list(_own_containers(cls))
    for klass in cls.__mro__[1:-1]:  # not ``object``
        cached = _BASE_CONTAINERS.get(klass)
        if cached is None or cached[0] != generation:
            cached = (generation, _own_containers(klass))
            _BASE_CONTAINERS[klass] = cached
        found.extend(cached[1])
    return tuple((value, _snapshot(value)) for value in found)


# Per class: (class generation, snapshots of its mutable attributes, its Declared). Weak keys: classes made in a
# function (tests, generated modules) are forgotten with them.
_MEMO: weakref.WeakKeyDictionary[type[Samizdat], tuple[int, tuple[tuple[object, object], ...], Declared]] = (
    weakref.WeakKeyDictionary()
)
_MEMO_LOCK = threading.Lock()


def declared_of(cls: type[Samizdat]) -> Declared:
    """:func:`declare`, memoized per class for as long as the class stays the same.

    A class counts as changed when any samizdat class had an attribute assigned or deleted since (see
    :func:`~alembic_samizdat.model.class_generation`), or when the contents of one of its set, list or dict
    attributes changed. The rendered SQL and the definition hash are then computed again. Not tracked: state
    outside the class that an overridden classmethod reads (a module global, a file).
    """
    generation = class_generation()
    with _MEMO_LOCK:
        entry = _MEMO.get(cls)
    if entry is not None and entry[0] == generation and all(value == snap for value, snap in entry[1]):
        return entry[2]
    # Snapshot first: a change made while declaring then shows on the next use instead of hiding in the memo.
    with _MEMO_LOCK:
        containers = _containers(cls, generation)
    item = declare(cls)
    with _MEMO_LOCK:
        _MEMO[cls] = (generation, containers, item)
    return item


def remember(cls: type[Samizdat], item: Declared) -> None:
    """Make ``item`` what :func:`declared_of` gives for ``cls`` while it stays the same (``item`` is what
    declaring ``cls`` gives now: see :mod:`~alembic_samizdat.graph_cache`)."""
    generation = class_generation()
    with _MEMO_LOCK:
        _MEMO[cls] = (generation, _containers(cls, generation), item)


def _table_refs(entries: object, owner: type[Samizdat], attribute: str) -> tuple[tuple[str, str], ...]:
    """Read a set of table references: bare names resolve in the class's own schema."""
    if isinstance(entries, str | bytes) or not isinstance(entries, Iterable):
        raise DeclarationError(
            f"{owner.label()}.{attribute} must be a set of names or (schema, name) tuples, not {entries!r}"
        )
    out: list[tuple[str, str]] = []
    for entry in entries:
        what = f"{owner.label()}.{attribute} entry {entry!r}"
        if isinstance(entry, type) and issubclass(entry, Samizdat):
            out.append((entry.schema_name(), entry.object_name()))
        elif isinstance(entry, str):
            out.append((owner.schema_name(), check_identifier(entry, what)))
        elif isinstance(entry, tuple) and len(entry) == 2:
            out.append((check_identifier(entry[0], what), check_identifier(entry[1], what)))
        else:
            raise DeclarationError(f"{what}: expected a name or a (schema, name) tuple")
    return tuple(sorted(set(out)))


def replace_head(kind: Kind, key: Key) -> str | None:
    """How the preamble of an object that ``CREATE OR REPLACE`` can replace begins (``None`` for other kinds)."""
    if kind is Kind.VIEW:
        return f"CREATE VIEW {qualified(key.schema, key.name)} AS"
    if kind is Kind.FUNCTION:
        return f"CREATE FUNCTION {qualified(key.schema, key.name)}("
    if kind is Kind.TRIGGER:
        return f"CREATE TRIGGER {quote_ident(key.name)} "
    return None


def or_replace(sql: str, kind: Kind, key: Key) -> str | None:
    """``sql`` with its preamble turned into ``CREATE OR REPLACE …``, or ``None`` when that cannot be done.

    Only the text our own preamble starts with is rewritten, never SQL the user wrote.
    """
    head = replace_head(kind, key)
    at = sql.find(head) if head is not None else -1
    if head is None or at < 0:
        return None
    return f"{sql[:at]}CREATE OR REPLACE {sql[at + len('CREATE ') :]}"


def declare(cls: type[Samizdat]) -> Declared:
    """Build the :class:`Declared` of one concrete samizdat class, validating every attribute."""
    item = _declare(cls)
    head = replace_head(item.kind, item.key)
    # A class whose preamble is not ours (a constraint trigger, which PostgreSQL cannot replace) never is.
    if head is None or not cls.preamble().startswith(head):
        return item
    replace_sql = or_replace(item.sql, item.kind, item.key)
    if replace_sql is None:
        return item
    return replace(item, replace_sql=replace_sql)


def _declare(cls: type[Samizdat]) -> Declared:
    if cls.is_abstract():
        raise DeclarationError(f"{cls.label()} is abstract (__abstract__ = True); it declares no object")
    deps = cls.deps_on
    if isinstance(deps, str | bytes) or not isinstance(deps, Iterable):
        raise DeclarationError(f"{cls.label()}.deps_on must be a set of references, not {deps!r}")
    refs = tuple(deps)
    unmanaged = _table_refs(cls.deps_on_unmanaged, cls, "deps_on_unmanaged")
    key = cls.key()
    sql = cls.create()
    grants = _grants(cls)
    implicit: tuple[Key, ...] = ()
    if issubclass(cls, SamizdatTrigger):
        table = cls.table()
        if cls.constraint():
            _check_constraint_trigger(cls, sql)
        target = cls.on_table
        if isinstance(target, type) and issubclass(target, Samizdat):
            implicit = (target.key(),)
        return Declared(
            key,
            cls.kind,
            cls.label(),
            sql,
            refs,
            implicit,
            unmanaged,
            condition=cls.trigger_condition(),
            trigger_table=table,
            is_constraint=cls.constraint(),
            source=cls,
        )
    if issubclass(cls, SamizdatFunction):
        arguments = cls.function_arguments if cls.function_arguments is not None else ""
        return Declared(
            key,
            cls.kind,
            cls.label(),
            sql,
            refs,
            implicit,
            unmanaged,
            function_arguments=" ".join(arguments.split()),
            grants=grants,
            source=cls,
        )
    if issubclass(cls, SamizdatMaterializedView):
        if not isinstance(cls.refresh_concurrently, bool):
            raise DeclarationError(f"{cls.label()}.refresh_concurrently must be True or False")
        if not isinstance(cls.with_data, bool):
            raise DeclarationError(f"{cls.label()}.with_data must be True or False")
        refresh_triggers = _table_refs(cls.refresh_triggers, cls, "refresh_triggers")
        _check_refresh_mode(cls, refresh_triggers)
        return Declared(
            key,
            cls.kind,
            cls.label(),
            sql,
            refs,
            implicit,
            unmanaged,
            refresh_concurrently=cls.refresh_concurrently,
            refresh_triggers=refresh_triggers,
            with_data=cls.with_data,
            refresh_mode=cls.refresh_mode,
            grants=grants,
            source=cls,
        )
    return Declared(key, cls.kind, cls.label(), sql, refs, implicit, unmanaged, grants=grants, source=cls)


REFRESH_MODES = ("immediate", "deferred")


def _check_refresh_mode(cls: type[SamizdatMaterializedView], refresh_triggers: tuple[tuple[str, str], ...]) -> None:
    mode = cls.refresh_mode
    if mode not in REFRESH_MODES:
        raise DeclarationError(
            f"{cls.label()}.refresh_mode must be 'immediate' (refresh inside the writing transaction) or "
            f"'deferred' (mark stale; `samizdat worker` refreshes), not {mode!r}"
        )
    if mode == "deferred" and not refresh_triggers:
        raise DeclarationError(
            f"{cls.label()}.refresh_mode = 'deferred' needs refresh_triggers: name the tables whose writes mark "
            "the view stale (views above a deferred view are marked with it and need no mode of their own)"
        )


_FOR_EACH_ROW = re.compile(r"\bFOR\s+EACH\s+ROW\b", re.IGNORECASE)


def _check_constraint_trigger(cls: type[SamizdatTrigger], sql: str) -> None:
    """PostgreSQL allows constraint triggers only ``AFTER … FOR EACH ROW``: say so before any SQL is sent."""
    condition = cls.trigger_condition()
    if condition.split(None, 1)[0].upper() != "AFTER":
        raise DeclarationError(
            f"{cls.label()} is a constraint trigger (is_constraint = True), which PostgreSQL allows only AFTER "
            f"an event; its condition is {condition!r}. Use e.g. 'AFTER INSERT OR UPDATE', or is_constraint = False"
        )
    if not _FOR_EACH_ROW.search(sql):
        raise DeclarationError(
            f"{cls.label()} is a constraint trigger (is_constraint = True), which PostgreSQL allows only FOR EACH "
            "ROW; its template does not say FOR EACH ROW. Write it after the preamble (and after DEFERRABLE "
            "INITIALLY DEFERRED, if any), or set is_constraint = False"
        )


_PRIVILEGES = {
    Kind.VIEW: {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"},
    Kind.MATVIEW: {"SELECT", "REFERENCES", "MAINTAIN"},
    Kind.FUNCTION: {"EXECUTE"},
    Kind.PROCEDURE: {"EXECUTE"},
    Kind.TRIGGER: set(),
}


def _grants(cls: type[Samizdat]) -> tuple[tuple[str, str], ...]:
    """Validate ``grants``: known roles syntax, privileges that exist for the kind."""
    declared = cls.grants
    if not isinstance(declared, Mapping):
        raise DeclarationError(f"{cls.label()}.grants must map role names to sets of privileges, not {declared!r}")
    allowed = _PRIVILEGES[cls.kind]
    out: set[tuple[str, str]] = set()
    for role, privileges in declared.items():
        role_name = (
            "PUBLIC"
            if isinstance(role, str) and role.upper() == "PUBLIC"
            else check_identifier(role, f"{cls.label()}.grants role")
        )
        if isinstance(privileges, str) or not isinstance(privileges, Iterable):
            raise DeclarationError(f"{cls.label()}.grants[{role!r}] must be a set of privileges, e.g. {{'SELECT'}}")
        for privilege in privileges:
            name = str(privilege).upper()
            if name not in allowed:
                raise DeclarationError(
                    f"{cls.label()}.grants[{role!r}]: {privilege!r} is not a privilege of a {cls.kind.value}; "
                    f"use {', '.join(sorted(allowed)) or 'none (triggers have no privileges)'}"
                )
            out.add((role_name, name))
    return tuple(sorted(out))

"""Tenant schemas: classes declaring ``schema = TENANT`` are expanded into one class per tenant schema.

Expansion happens before anything is declared: for each tenant, every TENANT class gets a subclass whose
``schema`` is the tenant and whose references are rewritten so that they stay inside the tenant (references to
TENANT classes become ``(tenant, name)`` references) or point at the shared objects (references to classes of a
fixed schema become ``deps_on_unmanaged`` entries: the shared run manages those). The graph, the planner and the
executor then see ordinary classes; the tenant's registry signs with :func:`~.signature.tenant_scope`, so a run
for one tenant never reads another tenant's objects as its own, nor the shared ones.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

from .errors import TenantError
from .identifiers import check_identifier
from .model import TENANT_ATTRIBUTE, Samizdat, SamizdatFunction, SamizdatMaterializedView, SamizdatMeta, SamizdatTrigger

#: The tenant that Alembic revisions are written for: their SQL names it, and ``alembic -x tenants=…`` puts each
#: tenant's name in its place. A plain lowercase name, so that it is spelt the same way in every context.
PLACEHOLDER = "__samizdat_tenant__"
#: The attribute of an expanded class naming the TENANT class it was made from.
ORIGIN_ATTRIBUTE = "_samizdat_origin"

# Per TENANT class, its expansion per tenant: the same class object every time, so the memoized declarations and
# graphs (declared.declared_of, graph.graph_of) serve repeated runs.
_EXPANDED: weakref.WeakKeyDictionary[type[Samizdat], dict[str, type[Samizdat]]] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def is_tenant_class(value: object) -> bool:
    """Whether ``value`` is a samizdat class declaring ``schema = TENANT``."""
    return isinstance(value, type) and issubclass(value, Samizdat) and value.is_tenant()


def split_classes(classes: Iterable[type[Samizdat]]) -> tuple[list[type[Samizdat]], list[type[Samizdat]]]:
    """``(shared, tenant)``: classes of a fixed schema, and classes with ``schema = TENANT``."""
    shared: list[type[Samizdat]] = []
    tenant: list[type[Samizdat]] = []
    for cls in classes:
        (tenant if cls.is_tenant() else shared).append(cls)
    return shared, tenant


def check_shared(shared: Iterable[type[Samizdat]]) -> None:
    """A shared object exists once; it cannot read an object that exists once per tenant."""
    for cls in shared:
        deps = cls.deps_on
        refs = list(deps) if isinstance(deps, Iterable) and not isinstance(deps, str | bytes) else []
        refs.append(getattr(cls, "on_table", None))
        refresh = getattr(cls, "refresh_triggers", ())
        if isinstance(refresh, Iterable) and not isinstance(refresh, str | bytes):
            refs.extend(refresh)
        unmanaged = cls.deps_on_unmanaged
        if isinstance(unmanaged, Iterable) and not isinstance(unmanaged, str | bytes):
            refs.extend(unmanaged)
        for ref in refs:
            if is_tenant_class(ref):
                raise TenantError(
                    f"{cls.label()} (schema {cls.schema!r}, shared) depends on {ref.label()}, which has schema = "
                    "TENANT: a shared object exists once and cannot read an object that exists once per tenant. "
                    f"Make {cls.__name__} a TENANT class too, or move what it reads into a shared class"
                )


def _ref_of(ref: type[Samizdat], tenant: str) -> tuple[str, ...]:
    """A reference to the tenant's copy of the TENANT class ``ref``."""
    if issubclass(ref, SamizdatFunction):
        return (tenant, ref.object_name(), ref.signature())
    if issubclass(ref, SamizdatTrigger):
        raise TenantError(f"{ref.label()} is a trigger: other classes cannot depend on a trigger")
    return (tenant, ref.object_name())


def _table_entries(entries: object, tenant: str) -> object:
    """``refresh_triggers``/``deps_on_unmanaged`` entries with TENANT classes named in the tenant."""
    if isinstance(entries, str | bytes) or not isinstance(entries, Iterable):
        return entries  # malformed: the declaration checks report it
    out: list[object] = []
    for entry in entries:
        if is_tenant_class(entry):
            out.append((tenant, entry.object_name()))
        elif isinstance(entry, type) and issubclass(entry, Samizdat):
            out.append((entry.schema_name(), entry.object_name()))
        else:
            out.append(entry)
    return frozenset(out) if all(isinstance(e, str | tuple) for e in out) else out


def expand(cls: type[Samizdat], tenant: str) -> type[Samizdat]:
    """The class that declares ``cls``'s object in schema ``tenant`` (the same class on every call)."""
    check_identifier(tenant, "tenant schema")
    with _LOCK:
        known = _EXPANDED.setdefault(cls, {}).get(tenant)
    if known is not None:
        return known
    deps: list[object] = []
    unmanaged: list[object] = []
    raw_deps = cls.deps_on
    refs = list(raw_deps) if isinstance(raw_deps, Iterable) and not isinstance(raw_deps, str | bytes) else raw_deps
    if isinstance(refs, list):
        for ref in refs:
            if is_tenant_class(ref):
                deps.append(_ref_of(ref, tenant))
            elif isinstance(ref, type) and issubclass(ref, Samizdat):
                # A shared object: the shared run manages it; for this tenant's run it is a given.
                unmanaged.append((ref.schema_name(), ref.object_name()))
            elif isinstance(ref, tuple) and len(ref) in (2, 3) and isinstance(ref[0], str):
                # A fixed schema spelt out: a shared object.
                unmanaged.append((ref[0], ref[1]))
            else:
                deps.append(ref)  # a bare name: inside the tenant
    attrs: dict[str, Any] = {
        "__module__": cls.__module__,
        # Messages name the class and its tenant; the placeholder tenant stands for every tenant.
        "__qualname__": f"{cls.__qualname__}[{'TENANT' if tenant == PLACEHOLDER else tenant}]",
        "__doc__": cls.__doc__,
        "schema": tenant,
        TENANT_ATTRIBUTE: tenant,
        ORIGIN_ATTRIBUTE: cls,
        "deps_on": frozenset(deps) if isinstance(refs, list) else raw_deps,
    }
    declared_unmanaged = _table_entries(cls.deps_on_unmanaged, tenant)
    if unmanaged and isinstance(declared_unmanaged, frozenset):
        declared_unmanaged = declared_unmanaged | frozenset(unmanaged)
    attrs["deps_on_unmanaged"] = declared_unmanaged
    if issubclass(cls, SamizdatMaterializedView):
        attrs["refresh_triggers"] = _table_entries(cls.refresh_triggers, tenant)
    if issubclass(cls, SamizdatTrigger):
        target = cls.on_table
        if is_tenant_class(target):
            assert isinstance(target, type)
            attrs["on_table"] = (tenant, target.object_name())
            # As a class it would be an implicit dependency (trigger after its view); as a tuple, say so.
            attrs["deps_on"] = frozenset([*deps, (tenant, target.object_name())])
    name = cls.__name__
    made: type[Samizdat] = SamizdatMeta(name, (cls,), attrs)  # type: ignore[assignment]
    with _LOCK:
        return _EXPANDED[cls].setdefault(tenant, made)


def tenant_of(cls: type[Samizdat]) -> str | None:
    """The tenant a class was expanded for, or ``None``."""
    found = cls.__dict__.get(TENANT_ATTRIBUTE)
    return found if isinstance(found, str) else None


def origin_of(cls: type[Samizdat]) -> type[Samizdat] | None:
    """The TENANT class an expanded class was made from, or ``None``."""
    found = cls.__dict__.get(ORIGIN_ATTRIBUTE)
    return found if isinstance(found, type) and issubclass(found, Samizdat) else None

"""alembic-samizdat: PostgreSQL views, materialized views, functions, procedures and triggers as Python classes.

Declare objects by subclassing :class:`SamizdatView`, :class:`SamizdatMaterializedView`,
:class:`SamizdatFunction`, :class:`SamizdatProcedure` or :class:`SamizdatTrigger`, collect them in a
:class:`SamizdatRegistry`, and make a database match with :func:`sync` (or the ``samizdat`` CLI, or Alembic autogenerate).
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    AdoptionRefusedError,
    AlembicConfigError,
    CatalogReadError,
    ColumnDriftError,
    ConcurrentRefreshError,
    ConnectionFailedError,
    CycleError,
    DanglingReferenceError,
    DatabaseStateError,
    DeclarationError,
    DuplicateIdentityError,
    ExecutionError,
    FleetError,
    ForeignViewError,
    FunctionSignatureMismatchError,
    GraphError,
    InsufficientPrivilegeError,
    InvalidIdentifierError,
    LockTimeoutError,
    ManagedListedAsUnmanagedError,
    MatviewError,
    MissingViewError,
    ModuleLoadError,
    NameClashError,
    NoDeferredViewsError,
    RefreshError,
    SamizdatError,
    SelfDependencyError,
    TemplateError,
    TenantError,
    ThrowawayServerError,
    TriggerTargetError,
    UnknownNodeError,
    UnknownObjectError,
    UnmanagedDependentError,
    UnusableUrlError,
)
from .model import (
    TENANT,
    FQTuple,
    Samizdat,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatProcedure,
    SamizdatTrigger,
    SamizdatView,
)
from .registry import SamizdatRegistry

if TYPE_CHECKING:
    from .api import DiffResult, SyncResult, diff_database, nuke, plan, refresh, sync
    from .execute import Discipline

# The engine (and SQLAlchemy with it) loads on first use: a module that only declares classes imports fast.
_LAZY = {
    "DiffResult": "api",
    "SyncResult": "api",
    "diff_database": "api",
    "nuke": "api",
    "plan": "api",
    "refresh": "api",
    "sync": "api",
    "Discipline": "execute",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alembic_samizdat' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "TENANT",
    "AdoptionRefusedError",
    "AlembicConfigError",
    "CatalogReadError",
    "ColumnDriftError",
    "ConcurrentRefreshError",
    "ConnectionFailedError",
    "CycleError",
    "DanglingReferenceError",
    "DatabaseStateError",
    "DeclarationError",
    "DiffResult",
    "Discipline",
    "DuplicateIdentityError",
    "ExecutionError",
    "FQTuple",
    "FleetError",
    "ForeignViewError",
    "FunctionSignatureMismatchError",
    "GraphError",
    "InsufficientPrivilegeError",
    "InvalidIdentifierError",
    "LockTimeoutError",
    "ManagedListedAsUnmanagedError",
    "MatviewError",
    "MissingViewError",
    "ModuleLoadError",
    "NameClashError",
    "NoDeferredViewsError",
    "RefreshError",
    "Samizdat",
    "SamizdatError",
    "SamizdatFunction",
    "SamizdatMaterializedView",
    "SamizdatProcedure",
    "SamizdatRegistry",
    "SamizdatTrigger",
    "SamizdatView",
    "SelfDependencyError",
    "SyncResult",
    "TemplateError",
    "TenantError",
    "ThrowawayServerError",
    "TriggerTargetError",
    "UnknownNodeError",
    "UnknownObjectError",
    "UnmanagedDependentError",
    "UnusableUrlError",
    "diff_database",
    "nuke",
    "plan",
    "refresh",
    "sync",
]

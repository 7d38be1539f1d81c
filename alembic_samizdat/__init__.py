"""alembic-samizdat: PostgreSQL views, materialized views, functions and triggers as Python classes.

Declare objects by subclassing :class:`SamizdatView`, :class:`SamizdatMaterializedView`,
:class:`SamizdatFunction` or :class:`SamizdatTrigger`, collect them in a :class:`SamizdatRegistry`, and make a
database match with :func:`sync` (or the ``samizdat`` CLI, or Alembic autogenerate).
"""

from .api import DiffResult, SyncResult, diff_database, nuke, plan, refresh, sync
from .errors import (
    ConnectionFailedError,
    CycleError,
    DanglingReferenceError,
    DatabaseStateError,
    DeclarationError,
    DuplicateIdentityError,
    ExecutionError,
    FunctionSignatureMismatchError,
    GraphError,
    InvalidIdentifierError,
    LockTimeoutError,
    ManagedListedAsUnmanagedError,
    ModuleLoadError,
    NameClashError,
    SamizdatError,
    SelfDependencyError,
    TemplateError,
    TriggerTargetError,
    UnmanagedDependentError,
)
from .execute import Discipline
from .model import (
    FQTuple,
    Samizdat,
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatTrigger,
    SamizdatView,
)
from .registry import SamizdatRegistry

__all__ = [
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
    "FunctionSignatureMismatchError",
    "GraphError",
    "InvalidIdentifierError",
    "LockTimeoutError",
    "ManagedListedAsUnmanagedError",
    "ModuleLoadError",
    "NameClashError",
    "Samizdat",
    "SamizdatError",
    "SamizdatFunction",
    "SamizdatMaterializedView",
    "SamizdatRegistry",
    "SamizdatTrigger",
    "SamizdatView",
    "SelfDependencyError",
    "SyncResult",
    "TemplateError",
    "TriggerTargetError",
    "UnmanagedDependentError",
    "diff_database",
    "nuke",
    "plan",
    "refresh",
    "sync",
]

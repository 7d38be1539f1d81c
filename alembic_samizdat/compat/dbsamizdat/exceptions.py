"""DBSamizdat's exception names, so that modules importing or catching them keep working.

The library raises its own errors (:mod:`alembic_samizdat.errors`); ``SamizdatException`` is one of them, so
``except SamizdatException`` in existing code catches every error the library raises for bad declarations.
"""

from __future__ import annotations

from ...errors import SamizdatError
from .util import sqlfmt

__all__ = [
    "DanglingReferenceError",
    "DatabaseError",
    "DependencyCycleError",
    "FunctionSignatureError",
    "InvocationError",
    "NameClashError",
    "SQLTemplateException",
    "SamizdatException",
    "TypeConfusionError",
    "UnqualifiedModulePathException",
    "UnsuitableNameError",
    "WrongTransactionStyleForParallelRefresh",
    "sqlfmt",
]

SamizdatException = SamizdatError


class InvocationError(SamizdatError):
    """A command was called with arguments that cannot work together."""


class WrongTransactionStyleForParallelRefresh(InvocationError):
    """Parallel refresh needs the checkpoint discipline."""


class NameClashError(SamizdatError):
    """Two declarations have one database identity."""


class UnsuitableNameError(SamizdatError):
    """A name PostgreSQL cannot hold."""


class DanglingReferenceError(SamizdatError):
    """A dependency names nothing declared."""


class TypeConfusionError(SamizdatError):
    """A declared object is also listed as unmanaged."""


class DatabaseError(SamizdatError):
    """A statement failed."""


class DependencyCycleError(SamizdatError):
    """Declarations depend on each other in a cycle."""


class FunctionSignatureError(SamizdatError):
    """The created function's signature is not the declared one."""


class SQLTemplateException(SamizdatError):
    """A template lacks a required placeholder."""


class UnqualifiedModulePathException(SamizdatError):
    """A module path without a package."""

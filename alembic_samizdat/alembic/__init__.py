"""Alembic integration: ``import alembic_samizdat.alembic`` in ``env.py`` and autogenerate does the rest.

Importing this module registers the samizdat operations (``op.create_samizdat``, ``op.drop_samizdat``,
``op.refresh_samizdat``), their renderers, and the autogenerate comparator, which finds the
:class:`~alembic_samizdat.SamizdatRegistry` attached to ``target_metadata``. Alembic 1.18+ can also load it as a
plugin named ``alembic_samizdat`` (see :mod:`alembic_samizdat.alembic_plugin`) (``context.configure(autogenerate_plugins=[..., "alembic_samizdat"])``); both
ways may be used together, the comparator runs once per revision.
"""

from __future__ import annotations

from . import ops, render, tenancy
from .compare import compare_samizdats, register_legacy_comparator
from .ops import CreateSamizdatOp, DropSamizdatOp, RefreshSamizdatOp, RegrantSamizdatOp, ReplaceSamizdatOp

__all__ = [
    "CreateSamizdatOp",
    "DropSamizdatOp",
    "RefreshSamizdatOp",
    "RegrantSamizdatOp",
    "ReplaceSamizdatOp",
    "compare_samizdats",
    "ops",
    "render",
]

register_legacy_comparator()
tenancy.register()  # after the comparator above: tenant operations go around the shared ones

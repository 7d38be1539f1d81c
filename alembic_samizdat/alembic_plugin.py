"""The Alembic (1.18+) plugin entry point, kept free of imports so that loading it can never break Alembic.

Alembic imports entry points while it is itself being imported; everything of ours is imported on first use.
Enable it with ``context.configure(..., autogenerate_plugins=["alembic.autogenerate.*", "alembic_samizdat"])``,
or simply ``import alembic_samizdat.alembic`` in ``env.py`` (both together are fine).
"""

from __future__ import annotations

from typing import Any


def setup(plugin: Any) -> None:
    """Register the samizdat comparator, after Alembic's own table comparator."""
    from alembic.util import DispatchPriority

    plugin.add_autogenerate_comparator(_compare, "schema", priority=DispatchPriority.LAST)
    plugin.add_autogenerate_comparator(_exclude, "schema", priority=DispatchPriority.FIRST)


def _compare(autogen_context: Any, upgrade_ops: Any, schemas: Any) -> Any:
    from .alembic.compare import compare_samizdats

    return compare_samizdats(autogen_context, upgrade_ops, schemas)


def _exclude(autogen_context: Any, upgrade_ops: Any, schemas: Any) -> Any:
    from .alembic.compare import exclude_view_mapped_tables

    return exclude_view_mapped_tables(autogen_context, upgrade_ops, schemas)

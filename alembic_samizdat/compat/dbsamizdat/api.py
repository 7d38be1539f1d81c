"""DBSamizdat's Python API (``dbsamizdat.api``): ``sync``, ``refresh`` and ``nuke`` with its signatures.

Deployment scripts calling ``dbsamizdat.api.sync(dburl, modules)`` keep working after changing the import. The
work is done by :mod:`alembic_samizdat.api` (which returns results; these functions return ``None`` as
DBSamizdat's do, and raise on failure). ``nuke`` removes the objects of the modules' registry scope, not every
object DBSamizdat ever signed in the database (see docs/migrating.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import create_engine

from ... import api
from .const import env, txstyle
from .exceptions import WrongTransactionStyleForParallelRefresh
from .samizdat import Samizdat

__all__ = ["Samizdat", "env", "nuke", "refresh", "sync", "txstyle"]


def _engine(dburl: str) -> Any:
    from ...cli import normalize_url

    return create_engine(normalize_url(dburl))


def refresh(
    dburl: str,
    samizdatmodules: Iterable[str],
    transaction_style: txstyle = txstyle.CHECKPOINT,
    belownodes: Iterable[Any] = (),
    parallel: bool = False,
) -> None:
    """Refresh materialized views in dependency order (only those below ``belownodes`` when given)."""
    if parallel and transaction_style is not txstyle.CHECKPOINT:
        raise WrongTransactionStyleForParallelRefresh("parallel refresh needs the checkpoint transaction style")
    engine = _engine(dburl)
    try:
        nodes = list(belownodes)
        api.refresh(engine, list(samizdatmodules), belownodes=nodes or None, parallel=parallel)
    finally:
        engine.dispose()


def sync(
    dburl: str, samizdatmodules: Iterable[str], transaction_style: txstyle = txstyle.JUMBO, parallel: bool = False
) -> None:
    """Make the database hold what the modules declare."""
    if parallel and transaction_style is not txstyle.CHECKPOINT:
        raise WrongTransactionStyleForParallelRefresh("parallel refresh needs the checkpoint transaction style")
    engine = _engine(dburl)
    try:
        api.sync(engine, list(samizdatmodules), discipline=transaction_style.value)
    finally:
        engine.dispose()


def nuke(dburl: str, transaction_style: txstyle = txstyle.JUMBO) -> None:
    """Drop the objects signed by the default scope."""
    engine = _engine(dburl)
    try:
        api.nuke(engine, discipline=transaction_style.value)
    finally:
        engine.dispose()

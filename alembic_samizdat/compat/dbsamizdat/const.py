"""DBSamizdat's ``dbsamizdat.const`` enums, so that code importing them keeps working."""

from __future__ import annotations

from enum import Enum, IntFlag, auto

__all__ = ["env", "txstyle"]


class txstyle(Enum):
    """Transaction disciplines, as DBSamizdat names them (the same as ``samizdat -t``)."""

    CHECKPOINT = "checkpoint"
    JUMBO = "jumbo"
    DRYRUN = "dryrun"


class env(IntFlag):
    """Where DBSamizdat runs; kept for imports only."""

    API = auto()
    CLI = auto()
    DJANGO = auto()

"""Drop-in classes for modules written for DBSamizdat 0.11: change ``from dbsamizdat import …`` (or
``from dbsamizdat.samizdat import …``, ``dbsamizdat.util``…) to ``alembic_samizdat.compat.dbsamizdat`` and nothing
else.

Whatever a module can observe behaves as in DBSamizdat 0.11.2 (see :mod:`.samizdat`): templates read with
:meth:`string.Template.safe_substitute` (``$$`` stands for one ``$``; ``$1`` and ``$BODY$`` pass through),
``cls.name``, ``str(cls)``, the metaclasses. Everything else — signatures, planning, the CLI — is
alembic-samizdat's; docs/migrating.md lists what deliberately differs.
"""

from __future__ import annotations

from .samizdat import (
    Samizdat,
    SamizdatFunction,
    SamizdatFunctionMeta,
    SamizdatMaterializedView,
    SamizdatMeta,
    SamizdatTrigger,
    SamizdatTriggerMeta,
    SamizdatView,
    entitypes,
)

__all__ = [
    "Samizdat",
    "SamizdatFunction",
    "SamizdatFunctionMeta",
    "SamizdatMaterializedView",
    "SamizdatMeta",
    "SamizdatTrigger",
    "SamizdatTriggerMeta",
    "SamizdatView",
    "entitypes",
]

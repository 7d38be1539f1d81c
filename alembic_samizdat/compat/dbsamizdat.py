"""Drop-in classes for modules written for DBSamizdat: change ``from dbsamizdat import …`` to
``from alembic_samizdat.compat.dbsamizdat import …`` and nothing else.

These classes read ``sql_template`` exactly as DBSamizdat does, with :class:`string.Template`: ``$$`` stands
for one ``$`` (so a DBSamizdat module's ``$$$$`` bodies still become ``$$``). Everything else — signatures,
planning, the CLI — is alembic-samizdat's.
"""

from __future__ import annotations

from typing import ClassVar

from .. import model
from ..template import TemplateDialect

__all__ = ["SamizdatFunction", "SamizdatMaterializedView", "SamizdatTrigger", "SamizdatView"]


class SamizdatView(model.SamizdatView):
    """A view whose template is read as DBSamizdat reads it."""

    template_dialect: ClassVar[TemplateDialect] = TemplateDialect.STRING_TEMPLATE

    @classmethod
    def postamble(cls) -> str:
        """DBSamizdat's: it ends the statement, so templates may go on with more SQL."""
        return ";"


class SamizdatMaterializedView(model.SamizdatMaterializedView):
    """A materialized view whose template is read as DBSamizdat reads it."""

    template_dialect: ClassVar[TemplateDialect] = TemplateDialect.STRING_TEMPLATE

    @classmethod
    def postamble(cls) -> str:
        """DBSamizdat's: ``WITH NO DATA;`` ends the statement, so indexes may follow without a semicolon."""
        return "WITH NO DATA;"


class SamizdatFunction(model.SamizdatFunction):
    """A function whose template is read as DBSamizdat reads it (``$$$$`` for ``$$``)."""

    template_dialect: ClassVar[TemplateDialect] = TemplateDialect.STRING_TEMPLATE

    @classmethod
    def postamble(cls) -> str:
        """DBSamizdat's statement terminator."""
        return ";"


class SamizdatTrigger(model.SamizdatTrigger):
    """A trigger whose template is read as DBSamizdat reads it."""

    template_dialect: ClassVar[TemplateDialect] = TemplateDialect.STRING_TEMPLATE

    @classmethod
    def postamble(cls) -> str:
        """DBSamizdat's statement terminator."""
        return ";"

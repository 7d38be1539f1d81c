"""Rendering of ``sql_template``: the only place where placeholders are substituted.

Two dialects exist. The native one substitutes exactly ``${preamble}``, ``${postamble}`` and
``${samizdatname}`` and leaves every other ``$`` alone, so ``$$`` bodies and ``$1`` work as written. The
DBSamizdat dialect reads templates with :class:`string.Template`, as DBSamizdat does (``$$`` means ``$``), so
modules written for DBSamizdat work unchanged.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from enum import StrEnum

from .errors import TemplateError

PLACEHOLDERS = ("preamble", "postamble", "samizdatname")
_BRACED = re.compile(r"\$\{([^}]*)\}")


class TemplateDialect(StrEnum):
    """How a class's ``sql_template`` is read."""

    NATIVE = "native"
    STRING_TEMPLATE = "string.Template"


def render(
    template: str,
    values: Mapping[str, str],
    *,
    owner: str,
    dialect: TemplateDialect,
    require_postamble: bool,
) -> str:
    """Substitute the placeholders of ``template``; ``owner`` names the class in error messages."""
    if not isinstance(template, str):
        raise TemplateError(f"{owner}.sql_template must be a string, not {type(template).__name__}")
    if dialect is TemplateDialect.STRING_TEMPLATE:
        used = _string_template_names(template, owner)
    else:
        used = _BRACED.findall(template)
        unknown = sorted({name for name in used if name not in PLACEHOLDERS})
        if unknown:
            raise TemplateError(
                f"{owner}.sql_template holds unknown placeholder(s) "
                + ", ".join("${" + n + "}" for n in unknown)
                + "; the known ones are ${preamble}, ${postamble} and ${samizdatname}. Any other text, "
                "$$ bodies and $1 included, is passed through unchanged"
            )
    _check_counts(used, owner, require_postamble)
    if dialect is TemplateDialect.STRING_TEMPLATE:
        return string.Template(template).substitute(values)
    return _BRACED.sub(lambda m: values[m.group(1)], template)


def _check_counts(used: list[str], owner: str, require_postamble: bool) -> None:
    if used.count("preamble") != 1:
        raise TemplateError(
            f"{owner}.sql_template must hold ${{preamble}} exactly once (found {used.count('preamble')}); "
            "it becomes the CREATE … head of the object: start the template with it"
        )
    if require_postamble and used.count("postamble") != 1:
        raise TemplateError(
            f"{owner}.sql_template must hold ${{postamble}} exactly once (found {used.count('postamble')}); "
            "put it right after the SELECT, before any statement such as CREATE INDEX"
        )
    if used.count("postamble") > 1:
        raise TemplateError(f"{owner}.sql_template holds ${{postamble}} more than once; keep one")


def _string_template_names(template: str, owner: str) -> list[str]:
    """The placeholders of a :class:`string.Template`, with DBSamizdat's reading of ``$``."""
    names: list[str] = []
    for match in string.Template.pattern.finditer(template):
        invalid = match.group("invalid")
        if invalid is not None:
            line = template[: match.start()].count("\n") + 1
            raise TemplateError(
                f"{owner}.sql_template: a lone '$' on line {line} is not a placeholder; this class reads "
                "templates as DBSamizdat does (string.Template), so write '$$' for a literal '$' — or import "
                "the class from alembic_samizdat, where '$' needs no escaping"
            )
        name = match.group("named") or match.group("braced")
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            raise TemplateError(
                f"{owner}.sql_template holds unknown placeholder ${name}; the known ones are ${{preamble}}, "
                "${postamble} and ${samizdatname} (this class reads templates as DBSamizdat does: write '$$' "
                "for a literal '$')"
            )
        names.append(name)
    return names

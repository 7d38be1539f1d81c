"""Rendering of ``sql_template``: the only place where placeholders are substituted.

Two dialects exist. The native one substitutes exactly ``${preamble}``, ``${postamble}`` and
``${samizdatname}`` and leaves every other ``$`` alone, so ``$$`` bodies and ``$1`` work as written. The
DBSamizdat dialect reads templates with :meth:`string.Template.safe_substitute` and tidies the result, as DBSamizdat
0.11 does (``$$`` means ``$``; ``$1`` and ``$BODY$`` pass through), so modules written for DBSamizdat work unchanged.
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
        return _render_like_dbsamizdat(template, values, owner)
    used = _BRACED.findall(template)
    unknown = sorted({name for name in used if name not in values})
    if unknown:
        raise TemplateError(
            f"{owner}.sql_template holds unknown placeholder(s) "
            + ", ".join("${" + n + "}" for n in unknown)
            + "; the known ones are ${preamble}, ${postamble} and ${samizdatname} (and ${tenant} in classes with "
            "schema = TENANT). Any other text, $$ bodies and $1 included, is passed through unchanged"
        )
    _check_counts(used, owner, require_postamble)
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


def _render_like_dbsamizdat(template: str, values: Mapping[str, str], owner: str) -> str:
    """DBSamizdat 0.11's reading: both ``${preamble}`` and ``${postamble}`` required, everything else left to
    :meth:`string.Template.safe_substitute` (``$$`` becomes ``$``; ``$1``, ``$BODY$``, ``$_`` and unknown names
    pass through), then the text tidied by :func:`dbsamizdat_sqlfmt` as DBSamizdat sends it."""
    reader = string.Template(template)
    missing = sorted({"preamble", "postamble"} - set(reader.get_identifiers()))
    if missing:
        raise TemplateError(
            f"{owner}.sql_template must hold "
            + " and ".join("${" + name + "}" for name in missing)
            + " (this class reads templates as DBSamizdat does; DBSamizdat refuses such a template too)"
        )
    return dbsamizdat_sqlfmt(reader.safe_substitute(values))


def dbsamizdat_sqlfmt(text: str) -> str:
    """Tidy SQL the way DBSamizdat 0.11 does before sending it (its ``util.sqlfmt``).

    Whitespace-only lines at both ends are dropped, trailing whitespace is cut, all-whitespace lines become
    empty, the indentation common to the other lines is removed, and the text ends with a newline. The exact
    text matters: PostgreSQL keeps a function's body verbatim, so ``pg_get_functiondef`` shows it.
    """
    lines = [line.rstrip() for line in text.splitlines()]
    blank = [not line.strip() for line in lines]
    if False in blank:
        first = blank.index(False)
        end = len(blank) - blank[::-1].index(False)
        lines, blank = lines[first:end], blank[first:end]
    indents = [line[: len(line) - len(line.lstrip())] for line, empty in zip(lines, blank, strict=True) if not empty]
    cut = 0
    if indents:
        shortest = min(indents, key=len)
        while cut < len(shortest) and all(indent[cut] == shortest[cut] for indent in indents):
            cut += 1
    return "\n".join("" if empty else line[cut:] for line, empty in zip(lines, blank, strict=True)) + "\n"

"""Masking passwords in anything that looks like a database URL or a libpq connection string.

Error messages quote what the user typed, and what the user typed is often wrong: ``postgres:/u:pw@host`` (one
slash), a password with an unescaped ``@`` or ``?``, ``?password=…`` in the query string. A parser that gives up
on such input cannot be relied on to find the password, so :func:`mask_url` works on the text itself and errs on
the side of masking too much: a host or user name hidden by mistake costs a second look, a leaked password costs
a rotation.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "mask_url"]

#: What a password is replaced by (the same as SQLAlchemy's ``render_as_string(hide_password=True)``).
MASK = "***"

# A scheme followed by at least one slash ("postgresql://", "postgres:/"); what follows is the user info.
_SCHEME = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*:/+")
# "password=" as a libpq keyword (also sslpassword, PGPASSWORD=) or as a URL query parameter.
_KEYWORD = re.compile(r"(?i)(password\s*=\s*)")
_QUOTED_VALUE = re.compile(r"'(?:[^'\\]|\\.)*'?")
_TOKEN = re.compile(r"\S+")


def _mask_user_info(token: str) -> str:
    """Mask ``user:password`` before the host in one whitespace-free token."""
    question = token.find("?")
    head_end = question if question >= 0 else len(token)
    # The user info ends at the LAST "@" before the host, so an unescaped "@" in the password stays inside
    # the masked part. An "@" after "?" belongs to the query string, unless there is none before it (then the
    # "?" itself was probably part of the password).
    at = token.rfind("@", 0, head_end)
    if at < 0:
        at = token.rfind("@")
    if at < 0:
        return token
    head = token[:at]
    scheme = _SCHEME.search(head)
    # Without "scheme:/" it is "user:pw@host" or "postgres:user:pw@host", maybe quoted or bracketed.
    start = scheme.end() if scheme is not None else len(head) - len(head.lstrip("'\"([{<"))
    colon = head.find(":", start)
    if colon < 0:
        return token  # "user@host": no password
    return token[: colon + 1] + MASK + token[at:]


def _mask_keywords(text: str) -> str:
    out: list[str] = []
    pos = 0
    for match in _KEYWORD.finditer(text):
        if match.start() < pos:
            continue
        value_start = match.end()
        before = text[match.start() - 1] if match.start() > 0 else ""
        if text.startswith("'", value_start):
            # libpq quoting: 'a value with spaces and \' quotes'
            quoted = _QUOTED_VALUE.match(text, value_start)
            assert quoted is not None  # the pattern matches any text starting with a quote
            value_end = quoted.end()
        elif before in "?&;":
            # A URL query parameter ends at the next parameter, fragment, space or closing quote.
            value_end = value_start
            while value_end < len(text) and text[value_end] not in "&#;'\"" and not text[value_end].isspace():
                value_end += 1
        else:
            # A libpq keyword value ends at white space, and may contain anything else.
            value_end = value_start
            while value_end < len(text) and not text[value_end].isspace():
                value_end += 1
        out.append(text[pos:value_start])
        out.append(MASK)
        pos = value_end
    out.append(text[pos:])
    return "".join(out)


def mask_url(text: str) -> str:
    """``text`` with every password in it replaced by ``***``.

    Masks the password of URLs, well-formed or not (``scheme://user:pw@host``, ``scheme:/user:pw@host``,
    ``user:pw@host``; with an unescaped ``@`` in the password, everything between the first ``:`` after the user
    and the last ``@`` before the host), ``password=`` in URL query strings and libpq ``key=value`` connection
    strings (quoted values included), and leaves everything else as it was. Works on free text too (an error
    message holding a URL), one white-space separated word at a time, so a password holding unescaped white
    space is only partly masked.
    """
    masked = _TOKEN.sub(lambda m: _mask_user_info(m.group(0)), text)
    return _mask_keywords(masked)

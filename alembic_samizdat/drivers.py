"""Which database URLs the command line accepts, and the driver it talks through.

The CLI always uses psycopg 3 (a dependency), whatever driver a URL names: ``postgresql+psycopg2://…``, the
spelling most existing ``alembic.ini`` files hold, works without psycopg2 installed. A URL that cannot name a
PostgreSQL database (``alembic init``'s placeholder ``driver://user:pass@localhost/dbname``, another database)
is refused in one line that says what to write instead. The Python API takes the user's own engine as it is.
"""

from __future__ import annotations

import importlib.util

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import UnusableUrlError as UnusableUrlError
from .urls import mask_url

#: The driver every CLI connection uses.
DRIVER = "postgresql+psycopg"

# No password in it: the CLI masks every password-like part of what it prints.
_EXAMPLE = "postgresql://USER@HOST/DBNAME"
_PLACEHOLDER_DRIVERS = {"driver"}


def shown(url: str) -> str:
    """The URL as given, its password hidden, for messages (well-formed or not: see :mod:`.urls`)."""
    return mask_url(url)


def cli_url(url: str) -> URL:
    """``url`` as a psycopg 3 URL, or :class:`UnusableUrlError` naming it and what to write instead."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise UnusableUrlError(f"not a database URL: {shown(url)!r}; write e.g. {_EXAMPLE}") from exc
    backend = parsed.get_backend_name()
    if backend in _PLACEHOLDER_DRIVERS:
        raise UnusableUrlError(
            f"the database URL {shown(url)} is alembic init's placeholder, not a database: write "
            f"{_EXAMPLE} (in alembic.ini's sqlalchemy.url, DATABASE_URL, or on the command line)"
        )
    if backend == "postgres":
        backend = "postgresql"  # libpq's own spelling, which SQLAlchemy does not know
    if backend != "postgresql":
        raise UnusableUrlError(
            f"only PostgreSQL is supported, not {parsed.drivername!r} ({shown(url)}); write e.g. {_EXAMPLE}"
        )
    return parsed.set(drivername=DRIVER)


def psycopg2_urls_use_psycopg() -> None:
    """Let ``postgresql+psycopg2://`` URLs connect through psycopg 3 when psycopg2 is not installed.

    For code of the user's that this process runs and that builds its own engine from such a URL (Alembic's
    env.py under ``samizdat -c alembic.ini``). Only the CLI calls it: a library must not re-route an
    application's engines.
    """
    if importlib.util.find_spec("psycopg2") is not None:
        return
    from sqlalchemy.dialects import registry

    registry.register("postgresql.psycopg2", "sqlalchemy.dialects.postgresql.psycopg", "PGDialect_psycopg")

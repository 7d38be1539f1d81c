"""The ``pytest11`` entry point: registers the plugin's settings, and loads the plugin only when asked.

Installing alembic-samizdat changes nothing in anyone's test runs: the fixtures of
:mod:`alembic_samizdat.pytest_plugin` exist only with ``samizdat_plugin = true`` in the pytest configuration, or
with ``-p alembic_samizdat.pytest_plugin``.
"""

from __future__ import annotations

import pytest

PLUGIN = "alembic_samizdat.pytest_plugin"


def add_ini(parser: pytest.Parser) -> None:
    """The plugin's ini settings (registering one twice is harmless)."""
    parser.addini("samizdat_plugin", "load the alembic-samizdat fixtures", type="bool", default=False)
    parser.addini(
        "samizdat_modules",
        "modules (dotted paths or .py files) holding the samizdats of samizdat_registry",
        type="linelist",
        default=[],
    )
    parser.addini(
        "samizdat_database_url_env",
        "environment variable holding the URL of a server to test on (default SAMIZDAT_TEST_DATABASE_URL); "
        "unset: a throwaway PostgreSQL",
        default="SAMIZDAT_TEST_DATABASE_URL",
    )
    parser.addini(
        "samizdat_fresh_database",
        "give each test a new database on that server (needs CREATEDB); false: use the URL's database as is",
        type="bool",
        default=True,
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini settings."""
    add_ini(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Load the plugin when the project opted in."""
    if config.getini("samizdat_plugin") and not config.pluginmanager.has_plugin(PLUGIN):
        config.pluginmanager.import_plugin(PLUGIN)

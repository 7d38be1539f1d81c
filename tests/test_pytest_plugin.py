"""The pytest plugin and ``assert_in_sync``, run on users' projects made with ``pytester``, on a real PostgreSQL."""

from __future__ import annotations

import textwrap

import pytest
import sqlalchemy as sa
from helpers import make_registry, view

from alembic_samizdat.testing import SamizdatsOutOfSync, assert_in_sync

pytest_plugins = ["pytester"]

VIEWS = '''
from alembic_samizdat import SamizdatView, SamizdatMaterializedView

class Numbers(SamizdatView):
    sql_template = """${preamble} SELECT n FROM generate_series(1, 10) AS n ${postamble}"""

class NumberStats(SamizdatMaterializedView):
    deps_on = {Numbers}
    sql_template = """${preamble} SELECT count(*) AS how_many FROM "Numbers" ${postamble}"""
'''

USER_TESTS = """
import sqlalchemy as sa
from alembic_samizdat import SamizdatView
from alembic_samizdat.registry import registry_from_modules
from alembic_samizdat.testing import assert_in_sync


def test_synced(samizdat_engine, samizdat_registry):
    assert_in_sync(samizdat_engine, samizdat_registry)
    with samizdat_engine.connect() as conn:
        assert conn.execute(sa.text('SELECT how_many FROM "NumberStats"')).scalar() == 10


def test_fresh_database_each_time(samizdat_db_url):
    engine = sa.create_engine(samizdat_db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM pg_views WHERE viewname = 'Numbers'")).scalar() == 0
    engine.dispose()


def test_changed_by_hand_fails(samizdat_engine, samizdat_registry):
    with samizdat_engine.begin() as conn:
        conn.execute(sa.text('CREATE OR REPLACE VIEW "Numbers" AS SELECT n FROM generate_series(1, 3) AS n'))
    assert_in_sync(samizdat_engine, samizdat_registry)


def test_changed_without_sync_fails(samizdat_engine):
    edited = registry_from_modules(["views_v2.py"])
    assert_in_sync(samizdat_engine, edited)
"""


@pytest.fixture
def project(pytester: pytest.Pytester, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    # The user's server: the session's own, so that no second server starts.
    monkeypatch.setenv("SAMIZDAT_TEST_DATABASE_URL", pg_url)
    pytester.makepyfile(views=VIEWS, views_v2=VIEWS.replace("1, 10", "1, 20"), test_user=USER_TESTS)
    return pytester


def test_inert_unless_asked(project: pytest.Pytester) -> None:
    result = project.runpytest("-k", "test_synced")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'samizdat_engine' not found*"])


def test_opt_in_by_ini(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nsamizdat_plugin = true\nsamizdat_modules = views.py\n")
    result = project.runpytest()
    result.assert_outcomes(passed=2, failed=2)
    out = result.stdout.str()
    # Each failure names the object and how it differs; the edited declaration shows a diff of its SQL.
    # (The class label's module name depends on what the process loaded before: only its tail is fixed.)
    assert 'changed by hand since it was signed: view "public"."Numbers" (' in out
    assert 'changed: view "public"."Numbers" (' in out and "views_v2.Numbers)" in out
    assert '-CREATE VIEW "public"."Numbers" AS SELECT n FROM generate_series(1, 10) AS n' in out
    assert '+CREATE VIEW "public"."Numbers" AS SELECT n FROM generate_series(1, 20) AS n' in out


def test_opt_in_by_p_with_own_registry_fixture(project: pytest.Pytester) -> None:
    project.makeconftest(
        """
        import pytest
        from alembic_samizdat.registry import registry_from_modules

        @pytest.fixture
        def samizdat_registry():
            return registry_from_modules(["views_v2.py"])
        """
    )
    project.makepyfile(
        test_own=textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic_samizdat.testing import assert_in_sync

            def test_own(samizdat_engine, samizdat_registry):
                assert_in_sync(samizdat_engine, samizdat_registry)
                with samizdat_engine.connect() as conn:
                    assert conn.execute(sa.text('SELECT how_many FROM "NumberStats"')).scalar() == 20
            """
        )
    )
    result = project.runpytest("-p", "alembic_samizdat.pytest_plugin", "test_own.py")
    result.assert_outcomes(passed=1)


def test_no_registry_is_a_clear_failure(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nsamizdat_plugin = true\n")
    result = project.runpytest("-k", "test_synced")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*set samizdat_modules in the pytest configuration*"])


def test_throwaway_server_without_url(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAMIZDAT_TEST_DATABASE_URL", raising=False)
    pytester.makepyfile(views=VIEWS)
    pytester.makepyfile(
        test_one=textwrap.dedent(
            """
            import sqlalchemy as sa

            def test_one(samizdat_server_url, samizdat_engine):
                assert "127.0.0.1" in samizdat_server_url or "localhost" in samizdat_server_url
                with samizdat_engine.connect() as conn:
                    assert conn.execute(sa.text('SELECT how_many FROM "NumberStats"')).scalar() == 10
            """
        )
    )
    pytester.makeini("[pytest]\nsamizdat_plugin = true\nsamizdat_modules = views.py\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_assert_in_sync_directly(engine: sa.Engine) -> None:
    registry = make_registry(view("plain", "SELECT 1 AS one"))
    with pytest.raises(SamizdatsOutOfSync, match=r'missing from the database: view "public"."plain"'):
        assert_in_sync(engine, registry)
    from alembic_samizdat import api

    api.sync(engine, registry)
    assert_in_sync(engine, registry)
    with engine.connect() as conn:
        assert_in_sync(conn, registry)  # a Connection works too


def test_opt_in_by_pyproject_as_documented(project: pytest.Pytester) -> None:
    project.makepyprojecttoml('[tool.pytest.ini_options]\nsamizdat_plugin = true\nsamizdat_modules = ["views.py"]\n')
    result = project.runpytest("-k", "test_synced or test_fresh")
    result.assert_outcomes(passed=2)

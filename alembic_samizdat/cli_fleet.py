"""The command line of many targets: ``--database``/``--databases-file``, ``--jobs``, and tenant schemas
(``--tenant-schemas``, ``--tenant-schemas-query``) on ``sync``, ``diff``, ``refresh`` and ``nuke``.

The commands themselves are :mod:`alembic_samizdat.fleet`'s; this module reads the options, prints one line per
target as it finishes and a summary table, and returns the exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SamizdatError
from .urls import mask_url

if TYPE_CHECKING:
    # The engine loads only when a command runs (``samizdat --help`` stays fast).
    from .fleet import FleetResult, Operation, Outcome
    from .registry import SamizdatRegistry

#: The commands that take these options.
FLEET_COMMANDS = ("sync", "diff", "refresh", "nuke")


def add_options(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of many targets, on one subcommand's parser."""
    group = parser.add_argument_group("many databases and tenant schemas (docs/fleets.md)")
    group.add_argument(
        "--database",
        action="append",
        metavar="URL",
        help="run against this database (repeatable); a URL given first among the positional arguments counts too",
    )
    group.add_argument(
        "--databases-file",
        metavar="FILE",
        help="run against every database URL in FILE (one per line; blank lines and # comments ignored)",
    )
    if command != "refresh":  # refresh has its own -j/--jobs, which then counts databases too
        group.add_argument(
            "--jobs",
            type=int,
            metavar="N",
            help="databases worked on at once (default: the number of CPUs); each holds at most 2 connections",
        )
    group.add_argument(
        "--tenant-schemas",
        action="append",
        metavar="PATTERN",
        help="run the TENANT classes in every schema whose name is LIKE PATTERN (repeatable), each tenant after "
        "the shared objects" + (" (nuke: only these tenants' objects)" if command == "nuke" else ""),
    )
    group.add_argument(
        "--tenant-schemas-query",
        metavar="SQL",
        help="run the TENANT classes in every schema this query returns (first column)",
    )


def wanted(args: argparse.Namespace) -> bool:
    """Whether the command line asks for many targets (or tenants) rather than one plain run."""
    return args.command in FLEET_COMMANDS and bool(
        getattr(args, "database", None)
        or getattr(args, "databases_file", None)
        or getattr(args, "tenant_schemas", None)
        or getattr(args, "tenant_schemas_query", None)
    )


def note_tenant_classes(registry: SamizdatRegistry, args: argparse.Namespace) -> None:
    """Say so when a command leaves a registry's TENANT classes out (no tenant schemas given)."""
    if args.command not in FLEET_COMMANDS or getattr(args, "tenant_schemas", None):
        return
    if getattr(args, "tenant_schemas_query", None):
        return
    count = len(registry.tenant_classes())
    if count:
        print(
            f"warning: {count} class(es) with schema = TENANT left out (shared objects only): give "
            "--tenant-schemas PATTERN to include tenant schemas (docs/fleets.md)",
            file=sys.stderr,
            flush=True,
        )


@dataclass(frozen=True)
class Front:
    """What this module needs from :mod:`alembic_samizdat.cli` (passed in, so that it need not import it)."""

    #: ``(url, registry)`` of the command line, as the single-database commands read it.
    target: Callable[..., tuple[str | None, SamizdatRegistry]]
    looks_like_url: Callable[[str], bool]
    error: type[SamizdatError]
    default_connect_timeout: float


def read_databases_file(path: str, error: type[SamizdatError]) -> list[str]:
    """The URLs of a databases file: one per line, ``#`` comments and blank lines skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"--databases-file {path}: {exc.strerror or exc}") from exc
    urls: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "://" not in line and not line.startswith(("postgres:", "postgresql:")):
            raise error(f"--databases-file {path} line {number}: not a database URL: {mask_url(line)!r}")
        urls.append(line)
    return urls


def _operation(args: argparse.Namespace, error: type[SamizdatError]) -> Operation:
    from .fleet import diff_operation, nuke_operation, refresh_operation, sync_operation

    if args.command == "sync":
        if getattr(args, "write_migration_file", None):
            raise error("-m/--write-migration-file writes one database's plan: not with many targets")
        return sync_operation(args.txdiscipline, args.lock_timeout, args.adopt, args.swap)
    if args.command == "diff":
        return diff_operation()
    if args.command == "nuke":
        return nuke_operation(args.txdiscipline, args.lock_timeout)
    if args.parallel:
        raise error("--parallel refreshes one database's views at once: not with many targets (--jobs counts them)")
    return refresh_operation(args.belownodes, args.concurrently)


def _line(outcome: Outcome) -> str:
    status = "ok" if outcome.ok else "FAILED"
    return f"{status:6} {outcome.target}: {outcome.message} ({outcome.seconds:.2f} s)"


def run(args: argparse.Namespace, info: Callable[[str], None], front: Front) -> int:
    """Run one of :data:`FLEET_COMMANDS` over its targets; print progress and the summary; the exit code."""
    from .fleet import Tenants, default_jobs, run_databases

    error = front.error
    if getattr(args, "format", "text") == "json":
        raise error("--format json reports one database: not with --database, --databases-file or tenant schemas")
    urls = list(args.database or [])
    if args.databases_file:
        urls.extend(read_databases_file(args.databases_file, error))
    positional = list(args.target)
    if positional and front.looks_like_url(positional[0]):
        urls.insert(0, positional.pop(0))
        args.target = positional
    explicit = bool(urls)
    url, registry = front.target(args, need_modules=args.command != "nuke")
    if not explicit:
        if url is None:
            raise error("give a database: a URL first, --database URL, --databases-file FILE, or DATABASE_URL")
        urls = [url]
    tenants = Tenants(patterns=tuple(args.tenant_schemas or ()), query=args.tenant_schemas_query)
    if tenants and not registry.tenant_classes() and args.command != "nuke":
        raise error("--tenant-schemas/--tenant-schemas-query given, but the registry has no class with schema = TENANT")
    jobs = args.jobs if args.jobs is not None else default_jobs()
    if jobs < 1:
        raise error("--jobs takes 1 or more")
    shared = not (args.command == "nuke" and tenants)
    connect_timeout = getattr(args, "connect_timeout", None) or front.default_connect_timeout
    result = run_databases(
        urls,
        registry,
        _operation(args, error),
        jobs=jobs,
        tenants=tenants,
        shared=shared,
        connect_timeout=connect_timeout,
        on_outcome=lambda outcome: info(_line(outcome)),
    )
    summary(result, info)
    if result.failed:
        failed = ", ".join(o.target for o in result.failed)
        print(
            f"samizdat: error: {len(result.failed)} of {len(result.outcomes)} target(s) failed: {failed}",
            file=sys.stderr,
        )
    return result.exit_code


def summary(result: FleetResult, info: Callable[[str], None]) -> None:
    """The table printed after every target finished."""
    outcomes = result.outcomes
    ok = sum(1 for o in outcomes if o.ok)
    info("")
    info(f"summary: {len(outcomes)} target(s), {ok} ok, {len(outcomes) - ok} failed")
    width = max((len(o.target) for o in outcomes), default=6)
    info(f"  {'status':6}  {'seconds':>7}  {'target':{width}}  result")
    for o in outcomes:
        info(f"  {'ok' if o.ok else 'FAILED':6}  {o.seconds:7.2f}  {o.target:{width}}  {o.message}")

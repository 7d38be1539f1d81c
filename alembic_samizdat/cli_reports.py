"""The CLI's reports: ``--format json`` of diff/sync/refresh/nuke/adopt, ``samizdat explain`` and ``samizdat deps``.

Kept apart from :mod:`alembic_samizdat.cli`, which registers the options and calls in here. In JSON mode stdout
carries exactly one document (progress goes to stderr), and the exit status is the command's usual one.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AdoptionRefusedError, SamizdatError
from .keys import Key
from .planner import Action, Plan
from .registry import SamizdatRegistry

if TYPE_CHECKING:  # the parsers are built for every command, `--help` too: SQLAlchemy only when a command runs
    from sqlalchemy import Engine


@dataclass(frozen=True)
class Front:
    """What the commands here use of :mod:`alembic_samizdat.cli` (which passes it in: no import cycle)."""

    #: ``(args, need_modules=…) -> (url, registry)``: from -c, or from the URL and modules given.
    _target: Callable[..., tuple[str | None, SamizdatRegistry]]
    #: ``(url, args, out, allow_embedded=…)``: a context manager giving a connected engine.
    _engine_for: Callable[..., AbstractContextManager[Engine]]
    #: ``(modules, args) -> registry``.
    _load: Callable[..., SamizdatRegistry]
    looks_like_url: Callable[[str], bool]
    #: The exception class of usage errors (exit status 2).
    CliError: type[SamizdatError]


def _scope(args: argparse.Namespace) -> str | None:
    return getattr(args, "scope", None)


def diff_json(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``diff --format json``."""
    from . import report

    url, registry = cli._target(args)
    registry.graph()
    with cli._engine_for(url, args, out, allow_embedded=False) as engine:
        made = report.diff_report(engine, registry)
    report.write(made.document, sys.stdout)
    return made.exit_code


def sync_json(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``sync --format json`` (any discipline; with ``-t dryrun`` nothing changes)."""
    from . import api, report
    from .execute import Discipline

    if args.write_migration_file == "-":
        raise cli.CliError("--format json prints the report on stdout: write the SQL to a file (-m plan.sql)")
    url, registry = cli._target(args)
    graph = registry.graph()
    if url is None:
        raise cli.CliError("--format json needs a database URL (postgresql://…) or DATABASE_URL")
    migration = args.write_migration_file

    def on_plan(plan: Plan) -> None:
        if migration:
            with open(migration, "w", encoding="utf-8") as handle:
                handle.write(plan.script())

    with cli._engine_for(url, args, out, allow_embedded=False) as engine:
        # The old SQL is read before the sync replaces it; the sync plans again under its lock.
        with engine.connect() as connection:
            old = report.old_sql(report.read_full_state(connection, registry, graph))
        result = api.sync(
            engine,
            registry,
            discipline=args.txdiscipline,
            scope=_scope(args),
            lock_timeout=args.lock_timeout,
            on_plan=on_plan,
            adopt=args.adopt,
            swap=args.swap,
        )
    doc = report.document(
        "sync",
        registry.scope,
        report.plan_objects(result.plan, old, result.applied),
        dry_run=result.discipline is Discipline.DRYRUN,
        committed=result.committed,
        warnings=[*result.warnings, *result.lost],
        notes=result.kept,
    )
    report.write(doc, sys.stdout)
    return 0


def nuke_json(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``nuke --format json``."""
    from . import api, report
    from .execute import Discipline

    url, registry = cli._target(args, need_modules=False)
    with cli._engine_for(url, args, out, allow_embedded=False) as engine:
        with engine.connect() as connection:
            old = report.old_sql(report.read_full_state(connection, registry, None))
        result = api.nuke(engine, registry, discipline=args.txdiscipline, lock_timeout=args.lock_timeout)
    doc = report.document(
        "nuke",
        registry.scope,
        report.plan_objects(result.plan, old, result.applied),
        dry_run=result.discipline is Discipline.DRYRUN,
        committed=result.committed,
    )
    report.write(doc, sys.stdout)
    return 0


def refresh_json(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``refresh --format json``."""
    from . import api, report

    url, registry = cli._target(args)
    registry.graph()
    done: list[Action] = []
    with cli._engine_for(url, args, out, allow_embedded=False) as engine:
        result = api.refresh(
            engine,
            registry,
            belownodes=args.belownodes,
            parallel=args.parallel,
            jobs=args.jobs,
            concurrently=args.concurrently,
            on_action=done.append,
        )
    doc = report.document(
        "refresh",
        registry.scope,
        report.refresh_objects(done, result.concurrently),
        committed=True,
        notes=result.notes,
    )
    report.write(doc, sys.stdout)
    return 0


def adopt_json(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``adopt --format json``; a refusal prints its document, then fails as without JSON."""
    from . import api, report

    url, registry = cli._target(args)
    graph = registry.graph()
    with cli._engine_for(url, args, out, allow_embedded=False) as engine:
        try:
            result = api.adopt(engine, registry, scope=_scope(args))
        except AdoptionRefusedError as exc:
            objects = []
            for name, patch in exc.differences.items():
                key = next((k for k in graph.nodes if name.endswith(k.display())), None)
                item = graph.nodes[key] if key is not None else None
                entry = report._object(
                    key or Key("relation", "", name),
                    item.kind.value if item else "?",
                    item.label if item else name,
                    "refused",
                    "its definition in the database differs from the declaration",
                    new=item.sql if item else None,
                )
                entry["diff"] = patch
                objects.append(entry)
            report.write(report.document("adopt", registry.scope, objects, exit_code=1, committed=False), sys.stdout)
            raise
    objects = [
        report._object(
            k, graph.nodes[k].kind.value, graph.nodes[k].label, "adopt", "its definition matches the declaration"
        )
        for k in result.adopted
    ] + [
        report._object(
            k,
            graph.nodes[k].kind.value,
            graph.nodes[k].label,
            "none",
            "missing from the database: `samizdat sync` creates it",
            difference="missing_from_database",
            new=graph.nodes[k].sql,
        )
        for k in result.missing
    ]
    report.write(report.document("adopt", registry.scope, objects, committed=True), sys.stdout)
    return 0


def _is_module(value: str) -> bool:
    if value.endswith(".py"):
        return True
    try:
        return importlib.util.find_spec(value) is not None
    except (ImportError, ValueError):
        return False


def cmd_explain(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``samizdat explain [DBURL] MODULE… [OBJECT…]``."""
    from . import report

    target = list(args.target)
    objects: list[str] = []
    if getattr(args, "config", None):
        objects, args.target = target, []
    else:
        # Modules come first; the first argument that is neither a URL nor an importable module starts the objects.
        start = 1 if target and cli.looks_like_url(target[0]) else 0
        split = next((i for i in range(start, len(target)) if not _is_module(target[i])), len(target))
        objects, args.target = target[split:], target[:split]
    url, registry = cli._target(args)
    registry.graph()
    with cli._engine_for(url, args, out, allow_embedded=False) as engine:
        plan, graph, state = report.explain_plan(engine, registry)
    sys.stdout.write(report.explain_text(plan, graph, state, objects))
    return 0


def cmd_deps(args: argparse.Namespace, out: Any, cli: Front) -> int:
    """``samizdat deps OBJECT [DBURL] [MODULE…]``."""
    from . import lineage

    if args.depth is not None and args.depth < 1:
        raise cli.CliError("--depth must be at least 1")
    graph = None
    if getattr(args, "config", None):
        url, registry = cli._target(args)
        graph = registry.graph()
    else:
        target = list(args.target)
        url = target.pop(0) if target and cli.looks_like_url(target[0]) else None
        if target:
            graph = cli._load(target, args).graph()
        elif url is None:
            raise cli.CliError("give a database URL, modules holding samizdat classes, or both")
    if url is not None:
        with cli._engine_for(url, args, out, allow_embedded=False) as engine, engine.connect() as connection:
            found = lineage.build(graph, connection)
    else:
        found = lineage.build(graph, None)
    root = found.find(args.object)
    directions = ["up"] if args.up and not args.down else ["down"] if args.down and not args.up else ["up", "down"]
    walks = [lineage.walk(found, root, direction=d, depth=args.depth) for d in directions]
    render = {"text": lineage.render_text, "json": lineage.render_json, "dot": lineage.render_dot}[args.format]
    sys.stdout.write(render(found, walks))
    return 0


def add_format_option(parser: argparse.ArgumentParser) -> None:
    """``--format text|json`` of the commands that report on objects."""
    parser.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="json: one document on stdout (schema: alembic_samizdat/report.schema.json), progress on stderr",
    )


def add_parsers(sub: Any, common: Any, examples: Any) -> None:
    """The ``explain`` and ``deps`` subcommands."""
    p = sub.add_parser(
        "explain",
        help="say why the next sync would touch each object (with a diff of the SQL that changed)",
        epilog=examples(
            "samizdat explain postgresql://me@localhost/shop myapp.views",
            "samizdat explain $DATABASE_URL myapp/views.py CustomerTotals   # only this object",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p, defaults=False)
    p.add_argument(
        "target",
        nargs="*",
        metavar="[DBURL] MODULE [OBJECT]",
        help="database URL (default: $DATABASE_URL), modules (dotted paths or .py files), then optionally the "
        "objects to explain (name, schema.name or class); with -c only objects",
    )

    p = sub.add_parser(
        "deps",
        help="what an object reads and what reads it (declarations, and pg_depend when a URL is given)",
        epilog=examples(
            "samizdat deps CustomerTotals myapp.views                       # from the declarations",
            "samizdat deps public.orders $DATABASE_URL myapp.views --down   # and the catalog",
            "samizdat deps CustomerTotals myapp.views --format dot | dot -Tsvg > lineage.svg",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p, defaults=False)
    p.add_argument("object", metavar="OBJECT", help="name, schema.name, class name, or as `samizdat diff` prints it")
    p.add_argument(
        "target",
        nargs="*",
        metavar="[DBURL] [MODULE]",
        help="database URL (its pg_depend, through unmanaged objects too) and/or modules (their declarations)",
    )
    p.add_argument("--up", action="store_true", help="only what OBJECT reads")
    p.add_argument("--down", action="store_true", help="only what reads OBJECT")
    p.add_argument("--depth", type=int, default=None, metavar="N", help="follow at most N steps (default: all)")
    p.add_argument("--format", choices=["text", "json", "dot"], default="text", help="output format")

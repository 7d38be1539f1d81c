"""``samizdat worker`` and ``samizdat status``: the command line of deferred autorefresh (see :mod:`.worker`)."""

from __future__ import annotations

import argparse
import logging
import sys

from .cli import CliError, Output, _common, _engine_for, _examples, _target
from .worker import DEFAULT_DEBOUNCE, DEFAULT_MAX_DELAY, Worker, stale_views


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], target_help: str) -> None:
    """Add the ``worker`` and ``status`` subcommands."""
    p = sub.add_parser(
        "worker",
        help="refresh materialized views marked stale by deferred autorefresh (runs until SIGTERM / Ctrl-C)",
        epilog=_examples(
            "samizdat worker postgresql://me@localhost/shop myapp.views",
            "samizdat worker $DATABASE_URL myapp.views --debounce 5 --max-delay 60 --jobs 4",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument("target", nargs="*", metavar="[DBURL] MODULE", help=target_help + " (none with -c)")
    p.add_argument(
        "--debounce",
        type=float,
        default=DEFAULT_DEBOUNCE,
        metavar="SECONDS",
        help=f"refresh once writes have been quiet this long (default {DEFAULT_DEBOUNCE:g})",
    )
    p.add_argument(
        "--max-delay",
        type=float,
        default=DEFAULT_MAX_DELAY,
        metavar="SECONDS",
        help=f"but never wait longer than this after the first write (default {DEFAULT_MAX_DELAY:g})",
    )
    p.add_argument("-j", "--jobs", type=int, default=1, help="refresh up to N independent views at once (default 1)")

    p = sub.add_parser(
        "status",
        help="list materialized views marked stale by deferred autorefresh, and for how long",
        epilog=_examples("samizdat status postgresql://me@localhost/shop myapp.views"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, defaults=False)
    p.add_argument("target", nargs="*", metavar="[DBURL] MODULE", help=target_help + " (none with -c)")


def _log_to(out: Output) -> logging.Handler:
    handler = logging.StreamHandler(out.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("alembic_samizdat.worker")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if out.quiet else logging.INFO)
    return handler


def cmd_worker(args: argparse.Namespace, out: Output) -> int:
    """Run the worker until SIGTERM or Ctrl-C."""
    url, registry = _target(args)
    registry.graph()
    if args.debounce < 0 or args.max_delay < 0:
        raise CliError("--debounce and --max-delay take 0 or more seconds")
    if args.jobs < 1:
        raise CliError("--jobs takes 1 or more")
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        worker = Worker(engine, registry, debounce=args.debounce, max_delay=args.max_delay, jobs=args.jobs)
        handler = _log_to(out)
        try:
            with worker.signals_stop():
                worker.run()
        finally:
            logging.getLogger("alembic_samizdat.worker").removeHandler(handler)
    return 0


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    """Print the stale views; exit 0 (even when some are stale: being stale is the normal state between rounds)."""
    url, registry = _target(args)
    registry.graph()
    with _engine_for(url, args, out, allow_embedded=False) as engine:
        found = stale_views(engine, registry)
    if not found:
        out.info("no materialized view is marked stale")
        return 0
    for view in found:
        print(
            f"stale {view.key.display()} ({view.label}): {view.stale_seconds:.1f} s since the first write, "
            f"{view.last_write_seconds:.1f} s since the last, {view.marks} mark(s)",
            file=sys.stdout,
        )
    return 0

"""``samizdat worker`` and ``samizdat status``: the command line of deferred autorefresh (see :mod:`.worker`).

:mod:`.cli` owns the arguments, the database and the registry, and hands them here (this module does not
import it, so the layers stay acyclic).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from .deferred import DEFAULT_DEBOUNCE, DEFAULT_MAX_DELAY
from .registry import SamizdatRegistry

if TYPE_CHECKING:  # the parsers are built for every command, `--help` too: SQLAlchemy only when a command runs
    from sqlalchemy import Engine


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    target_help: str,
    common: Callable[[argparse.ArgumentParser], None],
    examples: Callable[..., str],
) -> None:
    """Add the ``worker`` and ``status`` subcommands; ``common`` adds the options every command has."""
    p = sub.add_parser(
        "worker",
        help="refresh materialized views marked stale by deferred autorefresh (runs until SIGTERM / Ctrl-C)",
        epilog=examples(
            "samizdat worker postgresql://me@localhost/shop myapp.views",
            "samizdat worker $DATABASE_URL myapp.views --debounce 5 --max-delay 60 --jobs 4",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
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
        epilog=examples("samizdat status postgresql://me@localhost/shop myapp.views"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common(p)
    p.add_argument("target", nargs="*", metavar="[DBURL] MODULE", help=target_help + " (none with -c)")


def serve(engine: Engine, registry: SamizdatRegistry, args: argparse.Namespace, *, log: TextIO, quiet: bool) -> int:
    """Run the worker until SIGTERM or Ctrl-C, logging each refresh on ``log``."""
    from .worker import Worker

    worker = Worker(engine, registry, debounce=args.debounce, max_delay=args.max_delay, jobs=args.jobs)
    handler = logging.StreamHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("alembic_samizdat.worker")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    try:
        with worker.signals_stop():
            worker.run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    return 0


def status(engine: Engine, registry: SamizdatRegistry, info: Callable[[str], None]) -> int:
    """Print the stale views; exit 0 (being stale is the normal state of a deferred view between rounds)."""
    from .worker import stale_views

    found = stale_views(engine, registry)
    if not found:
        info("no materialized view is marked stale")
    for view in found:
        print(
            f"stale {view.key.display()} ({view.label}): {view.stale_seconds:.1f} s since the first write, "
            f"{view.last_write_seconds:.1f} s since the last, {view.marks} mark(s)"
        )
    return 0

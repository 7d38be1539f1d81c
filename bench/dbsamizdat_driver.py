"""Times one DBSamizdat 0.11.2 operation in-process; run with the Python of the venv DBSamizdat is installed in.

DBSamizdat's own ``api`` module crashes in 0.11.2 (its argument namespace lacks ``write_migration_file``), so
this driver builds the arguments with DBSamizdat's own CLI parser and calls the runner's ``cmd_*`` function,
exactly as its CLI does. The module is imported before the clock starts, so the figure leaves out the
interpreter start and the import, like the in-process figures of alembic-samizdat. Prints one JSON line.

Usage::

    python dbsamizdat_driver.py sync URL MODULE.py
    python dbsamizdat_driver.py refresh URL MODULE.py
    python dbsamizdat_driver.py refresh-parallel URL MODULE.py
    python dbsamizdat_driver.py select MODULE.py NODE      # the --belownodes selection only, no database
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def _args(argv: list[str]) -> Any:
    from dbsamizdat.const import env
    from dbsamizdat.runner import augment_argument_parser, convert_paths_to_modules

    parser = argparse.ArgumentParser()
    augment_argument_parser(parser, context=env.CLI)
    args = parser.parse_args(argv)
    convert_paths_to_modules(args)
    return args


def main(argv: list[str]) -> int:
    """Run one command and print ``{"seconds": …}`` (plus ``selected`` for ``select``)."""
    from dbsamizdat.loader import get_samizdats

    command = argv[0]
    if command == "select":
        from dbsamizdat import entitypes
        from dbsamizdat.libgraph import depsort_with_sidekicks, sanity_check, subtree_depends
        from dbsamizdat.util import fqify_node

        module, node = argv[1], argv[2]
        args = _args(["-q", "printdot", module])
        samizdats = depsort_with_sidekicks(sanity_check(get_samizdats(args.samizdatmodules, context=args.context)))
        matviews = [sd for sd in samizdats if sd.entity_type == entitypes.MATVIEW]
        began = time.perf_counter()
        # What cmd_refresh does for --belownodes, without the refresh.
        bundle = subtree_depends(samizdats, {fqify_node(node)})
        selected = [sd for sd in matviews if sd in bundle]
        seconds = time.perf_counter() - began
        print(json.dumps({"seconds": seconds, "selected": len(selected)}))
        return 0
    url, module = argv[1], argv[2]
    extra = []
    if command == "refresh-parallel":
        command, extra = "refresh", ["--parallel"]
    args = _args(["-q", command, *extra, url, module])
    get_samizdats(args.samizdatmodules, context=args.context)  # import before the clock starts
    began = time.perf_counter()
    args.func(args)
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

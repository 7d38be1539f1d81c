"""How cost grows with the number of objects: fresh sync, no-op sync, a root change and a mid change at several N,
alembic-samizdat against the floor and DBSamizdat, measured by :mod:`run`; then a plot (SVG) and a table, written
into ``docs/performance.md``.

Usage (the ``bench`` extra brings matplotlib: ``pip install -e '.[bench]'``)::

    python bench/growth.py                                   # N = 100 1000 3000 10000, then plot and table
    python bench/growth.py --n 100 1000 --repeat 3           # other sizes; results of other N are kept
    python bench/growth.py --replot                          # plot and table again from the saved results

Results go to ``docs/growth.json`` (``--results``): the raw rows of :mod:`run`, one list per invocation merged
by N, so that a slow size can be measured on its own. DBSamizdat gets ``--dbsamizdat-timeout`` seconds per
command (default 120) and is shown as "did not finish" beyond it. The plot is ``docs/growth.svg``; the table
replaces what stands between the ``growth:begin`` and ``growth:end`` markers of ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import itertools

import run
from contenders import DBSZ, DBSZ_CLI, FLOOR, SCENARIOS, SZ_API, SZ_API_CONNECT, SZ_CLI

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "performance.md"
BEGIN, END = "<!-- growth:begin -->", "<!-- growth:end -->"
GROWTH_SCENARIOS = ("fresh", "noop", "root_view", "mid_view")
#: The rows shown, in this order (the others :mod:`run` measures stay in the results).
SHOWN = (SZ_API, SZ_API_CONNECT, SZ_CLI, FLOOR, DBSZ, DBSZ_CLI)
STYLE = {
    SZ_API: ("tab:blue", "o", "-"),
    SZ_API_CONNECT: ("tab:cyan", "o", ":"),
    SZ_CLI: ("tab:blue", "s", "--"),
    FLOOR: ("black", "^", "-"),
    DBSZ: ("tab:red", "o", "-"),
    DBSZ_CLI: ("tab:red", "s", "--"),
}


def measure(sizes: Sequence[int], repeat: int, timeout: float, extra: Sequence[str]) -> list[dict[str, Any]]:
    """Run the benchmark for ``sizes`` and return its rows."""
    out = Path(tempfile.mkdtemp(prefix="samizdat-growth-")) / "rows.json"
    argv = [
        "--n",
        *map(str, sizes),
        "--scenarios",
        ",".join(GROWTH_SCENARIOS),
        "--contenders",
        "samizdat,dbsamizdat,floor",
        "--repeat",
        str(repeat),
        "--dbsamizdat-timeout",
        str(timeout),
        "--json",
        str(out),
        *extra,
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = run.main(argv)
    if code != 0:
        raise SystemExit(code)
    sys.stderr.write(printed.getvalue())
    rows: list[dict[str, Any]] = json.loads(out.read_text(encoding="utf-8"))
    return rows


def merge(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``old`` with the sizes measured again replaced by ``new``."""
    sizes = {row["n"] for row in new}
    return sorted([r for r in old if r["n"] not in sizes] + new, key=lambda r: (r["n"], r["scenario"]))


def median(row: dict[str, Any]) -> float | None:
    times = sorted(row.get("times") or [])
    if not times or row.get("error") or row.get("timed_out"):
        return None
    middle = len(times) // 2
    return times[middle] if len(times) % 2 else (times[middle - 1] + times[middle]) / 2


def series(rows: list[dict[str, Any]], scenario: str, mode: str) -> list[tuple[int, float | None, float | None]]:
    """``(N, median, timed out after)`` of one line of the plot, by N."""
    found = [r for r in rows if r["scenario"] == scenario and r["mode"] == mode]
    return sorted((r["n"], median(r), r.get("timed_out")) for r in found)


def exponents(points: list[tuple[int, float | None, float | None]]) -> list[str]:
    """The slope of log(time) over log(N) between neighbouring sizes: 1 is linear, 2 quadratic."""
    out = []
    for (n1, t1, _), (n2, t2, _) in itertools.pairwise(points):
        out.append(f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}" if t1 and t2 else "—")
    return out


def _fmt(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: median per N, and the growth exponent between neighbouring sizes."""
    sizes = sorted({r["n"] for r in rows})
    head = " | ".join(f"N = {n:,}" for n in sizes)
    steps = ", ".join(f"{a:,}→{b:,}" for a, b in itertools.pairwise(sizes))
    out = [
        f"| scenario | contender | {head} | growth exponent ({steps}) |",
        "|---|---|" + "---:|" * len(sizes) + "---|",
    ]
    for scenario in GROWTH_SCENARIOS:
        for mode in SHOWN:
            points = series(rows, scenario, mode)
            if not points:
                continue
            by_n = {n: (t, timed_out) for n, t, timed_out in points}
            cells = []
            for n in sizes:
                t, timed_out = by_n.get(n, (None, None))
                if timed_out:
                    cells.append(f"did not finish in {timed_out:.0f} s")
                else:
                    cells.append(_fmt(t) if t is not None else "—")
            complete = [p for p in points if p[1] is not None]
            out.append(
                f"| {SCENARIOS[scenario]} | {mode} | {' | '.join(cells)} | {', '.join(exponents(complete)) or '—'} |"
            )
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Four log-log panels, one per scenario; a contender that did not finish is marked at its timeout."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "samizdat-growth"  # the same results draw the same file
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8.5), layout="constrained")
    for ax, scenario in zip(axes.flat, GROWTH_SCENARIOS, strict=True):
        for mode in SHOWN:
            points = series(rows, scenario, mode)
            if not points:
                continue
            colour, marker, line = STYLE[mode]
            done = [(n, t) for n, t, _ in points if t is not None]
            if done:
                ax.plot(*zip(*done, strict=True), color=colour, marker=marker, linestyle=line, label=mode)
            unfinished = [(n, timed_out) for n, t, timed_out in points if t is None and timed_out]
            if unfinished:
                ax.plot(*zip(*unfinished, strict=True), color=colour, marker="x", linestyle="none", markersize=10)
                for n, timed_out in unfinished:
                    ax.annotate("did not finish", (n, timed_out), textcoords="offset points", xytext=(-30, 8))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(SCENARIOS[scenario])
        ax.set_xlabel("objects (N)")
        ax.set_ylabel("seconds (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    figure.suptitle("alembic-samizdat: how cost grows with N (log-log; a slope of 1 is linear)")
    figure.savefig(
        path, format=path.suffix.lstrip(".") or "svg", metadata={"Date": None} if path.suffix == ".svg" else None
    )
    plt.close(figure)


def write_doc(doc: Path, text: str) -> None:
    """Replace the generated part of ``doc`` (between the markers)."""
    current = doc.read_text(encoding="utf-8")
    if BEGIN not in current or END not in current:
        raise SystemExit(f"{doc} has no {BEGIN} … {END} markers to write the growth table between")
    head, rest = current.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure (unless ``--replot``), then write the plot and the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 1000, 3000, 10000], help="sizes to measure")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per figure (default 2)")
    parser.add_argument("--dbsamizdat-timeout", type=float, default=120.0, help="cap on one DBSamizdat command")
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "growth.json", help="results file")
    parser.add_argument("--svg", type=Path, default=ROOT / "docs" / "growth.svg", help="the plot")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page the table goes into")
    parser.add_argument("--replot", action="store_true", help="do not measure: plot the saved results again")
    parser.add_argument("rest", nargs="*", help="after --: more options for bench/run.py (e.g. -- --url URL)")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if args.results.exists():
        rows = json.loads(args.results.read_text(encoding="utf-8"))
    if not args.replot:
        rows = merge(rows, measure(args.n, args.repeat, args.dbsamizdat_timeout, args.rest))
        args.results.write_text(json.dumps(rows, indent=1, default=str) + "\n", encoding="utf-8")
    if not rows:
        raise SystemExit(f"no results in {args.results}: measure first")
    plot(rows, args.svg)
    svg = Path(os.path.relpath(args.svg.resolve(), args.doc.resolve().parent)).as_posix()
    text = f"![How cost grows with N]({svg})\n\n{table(rows)}"
    write_doc(args.doc, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The Markdown table of the results."""

from __future__ import annotations

from contenders import (
    AL_BARE,
    AL_SZ,
    FLOOR,
    SCENARIOS,
    SZ_API,
    SZ_API_CONNECT,
    SZ_CLI,
    baseline_mode,
)
from scenarios import Row


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _ratio(row: Row, rows: list[Row]) -> str:
    median = row.median
    if row.scenario == "heavy_refresh_parallel":
        serial = _find_row(rows, row, "heavy_refresh", row.mode)
        if median is None or serial is None or not serial.median:
            return "—"
        return f"{serial.median / median:.2f}× faster than serial"
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


def _find_row(rows: list[Row], like: Row, scenario: str, mode: str) -> Row | None:
    return next(
        (r for r in rows if (r.n, r.label) == (like.n, like.label) and r.scenario == scenario and r.mode == mode),
        None,
    )


def _baseline_row(row: Row, rows: list[Row]) -> Row | None:
    wanted = baseline_mode(row.scenario, row.mode)
    return None if wanted is None else _find_row(rows, row, row.scenario, wanted)


def _short_mode(mode: str) -> str:
    return {
        SZ_API: "samizdat API",
        SZ_API_CONNECT: "samizdat API, connecting",
        SZ_CLI: "samizdat CLI",
        AL_SZ: "samizdat alembic",
        AL_BARE: "Alembic alone",
        FLOOR: "floor",
    }.get(mode, mode)


def _round_trips(row: Row) -> str:
    parts = []
    if row.round_trips is not None:
        parts.append(f"{row.round_trips:,}")
    if row.client is not None:
        dbapi, via_sqlalchemy = row.client
        parts.append(f"client: {dbapi:,} execute ({via_sqlalchemy:,} via SQLAlchemy)")
    return "; ".join(parts) or "—"


def cells(row: Row) -> tuple[str, str]:
    if row.timed_out is not None:
        return f"did not finish in {row.timed_out:.0f} s", "—"
    if row.error is not None:
        return row.error, ""
    assert row.median is not None
    if len(row.times) == 1:
        return _fmt_time(row.median), "1 run"
    return _fmt_time(row.median), f"{_fmt_time(min(row.times))} – {_fmt_time(max(row.times))}"


def table(rows: list[Row]) -> str:
    """The Markdown table of every row."""
    out = [
        "| N | scenario | contender | median | min – max | ratio | round trips | objects |",
        "|---:|---|---|---:|---|---|---|---|",
    ]
    for row in rows:
        median, spread = cells(row)
        out.append(
            f"| {row.label or row.n} | {SCENARIOS[row.scenario]} | {row.mode} | {median} | {spread} "
            f"| {_ratio(row, rows)} | {_round_trips(row)} | {row.objects or '—'} |"
        )
    return "\n".join(out)

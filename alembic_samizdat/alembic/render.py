"""Rendering samizdat operations into revision scripts (readable, self-contained Python)."""

from __future__ import annotations

from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import renderers

from .ops import CreateSamizdatOp, DropSamizdatOp, RefreshSamizdatOp, RegrantSamizdatOp, ReplaceSamizdatOp

IMPORT = "import alembic_samizdat.alembic  # noqa: F401  (registers op.create_samizdat and friends)"


def literal(text: str | None) -> str:
    """A Python literal for ``text``, one source line per SQL line.

    Alembic indents every line of a rendered operation, so a triple-quoted string would change the SQL (and
    its hash); adjacent string literals keep it exact and still readable.
    """
    if text is None:
        return "None"
    lines = text.splitlines(keepends=True)
    if len(lines) <= 1:
        return repr(text)
    return "(\n" + "".join(f"            {line!r}\n" for line in lines) + "        )"


def _args(*parts: str) -> str:
    return "(\n" + "".join(f"        {p},\n" for p in parts) + "    )"


def _why(reason: str | None) -> str:
    # One comment line per operation saying why autogenerate wrote it (e.g. "changed by hand since it was
    # signed"), so that a reviewer of the revision need not run diff to find out.
    return f"# {' '.join(reason.split())}\n" if reason else ""


def _definition(op: CreateSamizdatOp | ReplaceSamizdatOp) -> tuple[str, ...]:
    """The arguments that define the object: kind, name, template, signature, and the DROP that undoes it."""
    return (
        repr(op.kind),
        repr(op.name),
        f"sql={literal(op.sql)}",
        f"signature={literal(op.signature)}",
        f"drop={literal(op.drop)}",
    )


@renderers.dispatch_for(CreateSamizdatOp)
def render_create(autogen_context: AutogenContext, op: CreateSamizdatOp) -> str:
    """``op.create_samizdat(...)``."""
    autogen_context.imports.add(IMPORT)
    return (
        _why(op.reason)
        + "op.create_samizdat"
        + _args(
            *_definition(op),
            f"with_data={op.with_data!r}",
            *([f"grants={literal(op.grants)}"] if op.grants else []),
        )
    )


@renderers.dispatch_for(ReplaceSamizdatOp)
def render_replace(autogen_context: AutogenContext, op: ReplaceSamizdatOp) -> str:
    """``op.replace_samizdat(...)``."""
    autogen_context.imports.add(IMPORT)
    return (
        _why(op.reason)
        + "op.replace_samizdat"
        + _args(
            *_definition(op),
            *([f"grants={literal(op.grants)}"] if op.grants else []),
            f"restore={literal(op.restore)}",
            f"restore_signature={literal(op.restore_signature)}",
            *([f"refresh={literal(op.refresh)}"] if op.refresh else []),
            *([f"restore_refresh={literal(op.restore_refresh)}"] if op.restore_refresh else []),
        )
    )


@renderers.dispatch_for(DropSamizdatOp)
def render_drop(autogen_context: AutogenContext, op: DropSamizdatOp) -> str:
    """``op.drop_samizdat(...)``."""
    autogen_context.imports.add(IMPORT)
    return (
        _why(op.reason)
        + "op.drop_samizdat"
        + _args(
            repr(op.kind),
            repr(op.name),
            f"drop={literal(op.drop)}",
            f"restore={literal(op.restore)}",
            f"restore_signature={literal(op.restore_signature)}",
            f"restore_with_data={op.restore_with_data!r}",
        )
    )


@renderers.dispatch_for(RefreshSamizdatOp)
def render_refresh(autogen_context: AutogenContext, op: RefreshSamizdatOp) -> str:
    """``op.refresh_samizdat(...)``."""
    autogen_context.imports.add(IMPORT)
    return _why(op.reason) + "op.refresh_samizdat" + _args(repr(op.name), f"sql={literal(op.sql)}")


@renderers.dispatch_for(RegrantSamizdatOp)
def render_regrant(autogen_context: AutogenContext, op: RegrantSamizdatOp) -> str:
    """``op.regrant_samizdat(...)``."""
    autogen_context.imports.add(IMPORT)
    return (
        _why(op.reason)
        + "op.regrant_samizdat"
        + _args(repr(op.kind), repr(op.name), f"sql={literal(op.sql)}", f"reverse_sql={literal(op.reverse_sql)}")
    )

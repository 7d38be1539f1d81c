"""The materialized-view swap: a changed materialized view is built and populated beside the old one, then
moved into place, so that readers wait for the move and not for the populate.

PostgreSQL cannot replace a materialized view in place. Rebuilding it drops the old one first, and its readers
then wait (behind the drop's lock) for the whole populate. The swap reverses the order, inside the one
transaction of the rebuilt stack:

1. ``CREATE SCHEMA`` a schema of its own (named from the object and its new definition), and run the template
   there, ``WITH DATA``: the new view is populated, and its template's indexes built, while readers keep
   reading the old one (populating takes no lock that a reader waits for);
2. drop what stands on the old view and the old view itself (from here on readers wait);
3. ``ALTER MATERIALIZED VIEW … SET SCHEMA`` moves the new view, with its indexes, into place; the schema is
   dropped (never ``CASCADE``: should the template have left anything else there, the run stops);
4. sign it, restore what users had attached, recreate what stands on it; commit.

The schema never outlives the transaction, so no other session sees it and a failure leaves nothing behind.
Building in another schema rather than under another name keeps every name the template gives (an index named
in the template, or named by PostgreSQL after the view) exactly what a plain create would give.

A swap needs the running role to have ``CREATE`` on the database; without it, and whenever the template could
refer to the view other than through ``${samizdatname}``, the view is rebuilt and populated in its transaction.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from . import statements
from .declared import Declared
from .identifiers import qualified, quote_ident
from .keys import Kind
from .model import SamizdatMaterializedView

#: Schemas of swaps in progress start with this (and exist only inside the swap's transaction).
SCHEMA_PREFIX = "samizdat_swap_"
#: Why a changed materialized view was swapped rather than rebuilt, for plans and ``sync -v``.
SWAPPED = "built and populated beside the old one while readers kept reading it, then swapped in"
#: Why the running role's privileges did not allow a swap.
NO_CREATE_PRIVILEGE = (
    "the running role may not create a schema (CREATE on the database) to build the new definition beside "
    "the old one, so readers wait while it is populated"
)

_MARKER = "\n-- alembic-samizdat: end of the CREATE statement --\n"


@dataclass(frozen=True)
class Build:
    """How to build a changed materialized view beside the old one."""

    #: The schema it is built in (and moved out of).
    schema: str
    #: The template rendered there, ``WITH DATA``.
    sql: str

    def statements(self) -> tuple[str, str]:
        """Create the schema, then build and populate the view in it."""
        return (f"CREATE SCHEMA {quote_ident(self.schema)}", self.sql)

    def move_in(self, item: Declared) -> tuple[str, str]:
        """Move the built view into place (after the old one is dropped), and drop the emptied schema."""
        built = item.key._replace(schema=self.schema)
        return (statements.set_schema(Kind.MATVIEW, built, item.key.schema), f"DROP SCHEMA {quote_ident(self.schema)}")


def swap_schema(item: Declared) -> str:
    """The schema a swap of ``item`` builds in: named from the object and its new definition."""
    digest = hashlib.sha256(repr((item.key, item.sql)).encode()).hexdigest()
    return f"{SCHEMA_PREFIX}{digest[:20]}"


def build_beside(item: Declared) -> Build | None:
    """The build of ``item`` beside its old version, or ``None`` when only a rebuild is safe."""
    source = item.source
    if item.kind is not Kind.MATVIEW or source is None or not issubclass(source, SamizdatMaterializedView):
        return None
    schema = swap_schema(item)
    rendered = source.create_beside(schema, _MARKER)
    if rendered is None or rendered.count(_MARKER) != 1:
        return None
    there = qualified(schema, item.key.name)
    head, _, tail = rendered.partition(_MARKER)
    if not head.lstrip().startswith(f"CREATE MATERIALIZED VIEW {there} AS"):
        # Something runs before the view is created: it would run beside the old view, too.
        return None
    # Statements after the CREATE (indexes, comments) that could name the view otherwise than through
    # ${samizdatname} would act on the old view: a mention of its name, in any spelling, rules the swap out.
    rest = tail.replace(there, "")
    if re.search(rf"(?i)(?<![\w$]){re.escape(item.key.name)}(?![\w$])", rest):
        return None
    return Build(schema, head + "\n" + tail if tail.strip() else head)

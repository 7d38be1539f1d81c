"""Pure helpers of the fronts: the privilege an error message names, when the server cannot be asked (an
asyncio refresh, a failed transaction without a second connection), and stdout into a pipe whose reader left.
No database: these read only the text PostgreSQL already sent, or a stream."""

from __future__ import annotations

import io
import os

import pytest

from alembic_samizdat.keys import Key
from alembic_samizdat.pipes import ClosedPipeSafe
from alembic_samizdat.privileges import PrivilegeContext, missing_privilege

COUNTS = Key("relation", "reports", "Counts")


@pytest.mark.parametrize(
    ("message", "context", "version", "privilege", "fix_or_why"),
    [
        (
            "must be owner of materialized view Counts",
            PrivilegeContext("refresh", COUNTS, "matview"),
            170000,
            'ownership of materialized view "reports"."Counts"',
            "MAINTAIN is not enough",
        ),
        (
            "must be owner of materialized view Counts",
            PrivilegeContext("refresh", COUNTS, "matview"),
            160000,
            'ownership of materialized view "reports"."Counts"',
            " to refresh it",
        ),
        (
            "must be owner of materialized view Counts",
            PrivilegeContext("mark", None, "matview", (("reports", "Counts"),)),
            170000,
            'ownership of materialized view "reports"."Counts"',
            "MAINTAIN is not enough",
        ),
        ('must be member of role "app_owner"', PrivilegeContext("create"), 0, 'membership in role "app_owner"', ""),
        ("permission denied for sequence ids", PrivilegeContext("create"), 0, 'USAGE on sequence "ids"', ""),
        ("permission denied for language plpythonu", PrivilegeContext("create"), 0, "USAGE on language", ""),
        ("something PostgreSQL may say one day", PrivilegeContext("create"), 0, "a privilege", "message above"),
    ],
)
def test_the_privilege_is_read_from_the_servers_message(
    message: str, context: PrivilegeContext, version: int, privilege: str, fix_or_why: str
) -> None:
    missing = missing_privilege(Exception(message), context, role="deployer", server_version=version)
    assert missing.privilege.startswith(privilege), missing
    assert fix_or_why in missing.why + missing.fix
    assert missing.role == "deployer"
    assert missing.sentence().startswith('Role "deployer" lacks ')


class _Closing(io.StringIO):
    """A stream whose reader has gone: writing and flushing raise BrokenPipeError, as a closed pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.fd = os.open(os.devnull, os.O_WRONLY)

    def fileno(self) -> int:
        return self.fd

    def write(self, data: str) -> int:
        raise BrokenPipeError

    def flush(self) -> None:
        raise BrokenPipeError


def test_a_closed_pipe_ends_output_quietly() -> None:
    stream = _Closing()
    try:
        safe = ClosedPipeSafe(stream)
        safe.flush()  # the reader is gone: noticed, not raised
        assert safe.reader_gone
        assert safe.write("more") == len("more")  # dropped quietly from now on
        safe.flush()
        assert safe.closed is False  # anything else is the stream's own
    finally:
        os.close(stream.fd)


def test_a_live_pipe_passes_everything_through() -> None:
    stream = io.StringIO()
    safe = ClosedPipeSafe(stream)
    assert safe.write("line\n") == 5
    safe.flush()
    assert stream.getvalue() == "line\n" and not safe.reader_gone

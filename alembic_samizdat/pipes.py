"""stdout for a command line whose output may go into a pipe that closes early (``… | head -1``)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any, TextIO, cast


class ClosedPipeSafe:
    """stdout that ends quietly when its reader goes away (``samizdat diff … | head -1``).

    The first write to a closed pipe points the file descriptor at /dev/null (so neither later writes nor
    the interpreter's final flush complain) and the command runs on to return its own exit code.
    """

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.reader_gone = False

    def _gone(self) -> None:
        self.reader_gone = True
        with suppress(OSError, ValueError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def write(self, data: Any) -> int:
        """Write, or drop ``data`` once the reader has gone."""
        if not self.reader_gone:
            try:
                return int(self._stream.write(data))
            except BrokenPipeError:
                self._gone()
        return len(data)

    def flush(self) -> None:
        """Flush, unless the reader has gone."""
        if not self.reader_gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    @property
    def buffer(self) -> ClosedPipeSafe:
        """The binary stream, equally safe (``printdot --format svg``)."""
        safe = ClosedPipeSafe(self._stream.buffer)
        safe.reader_gone = self.reader_gone
        return safe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextmanager
def closed_pipe_safe_stdout() -> Iterator[None]:
    """``sys.stdout`` as :class:`ClosedPipeSafe` while the block runs."""
    original = sys.stdout
    sys.stdout = cast(TextIO, ClosedPipeSafe(original))
    try:
        yield
    finally:
        sys.stdout = original

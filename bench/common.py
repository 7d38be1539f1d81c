"""What every part of the benchmark uses: progress messages, its error, and running a command."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def log(message: str) -> None:
    """Progress on stderr."""
    print(message, file=sys.stderr, flush=True)


class BenchError(Exception):
    """A measured operation failed."""


def short_error(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    found = next((line for line in reversed(lines) if "rror" in line or "FATAL" in line), lines[-1] if lines else "")
    return found if len(found) <= limit else found[: limit - 1] + "…"


#: Environment of every command the benchmark runs: see :func:`bytecode_cache`.
SUBPROCESS_ENV: dict[str, str] = dict(os.environ)


def bytecode_cache(directory: Path) -> None:
    """Let the commands cache bytecode, as an installed package does, in ``directory`` (never in the repository):
    without it (``PYTHONDONTWRITEBYTECODE`` set, or a source checkout never imported) every CLI run compiles
    alembic-samizdat, the workload module and the revision files from source. The untimed warm-up run fills
    the cache."""
    SUBPROCESS_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    SUBPROCESS_ENV["PYTHONPYCACHEPREFIX"] = str(directory)


def run_command(
    command: Sequence[str],
    *,
    timeout: float | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env if env is not None else SUBPROCESS_ENV,
        check=False,
    )
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise BenchError(f"exit {result.returncode}: {short_error(result.stderr + result.stdout)}")
    return seconds, result.stdout

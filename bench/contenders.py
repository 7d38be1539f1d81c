"""The contenders: their modes (rows of the table), the scenarios each runs, what each row is compared with,
and the venvs DBSamizdat and alembic_utils are installed into."""

from __future__ import annotations

import subprocess
import tempfile
import venv
from collections.abc import Sequence
from pathlib import Path

from common import log, short_error
from workload import VARIANTS

DBSAMIZDAT_VERSION = "0.11.2"
ALEMBIC_UTILS_VERSION = "0.8.8"
DEFAULT_DBSZ_VENV = Path(tempfile.gettempdir()) / "dbsz"
DEFAULT_AUTILS_VENV = Path(tempfile.gettempdir()) / "autils"
DRIVER = Path(__file__).resolve().parent / "dbsamizdat_driver.py"

# Contender modes (rows of the table).
SZ_API = "alembic-samizdat (API)"
SZ_API_CONNECT = "alembic-samizdat (API, connecting)"
SZ_CLI = "alembic-samizdat (CLI)"
AL_SZ = "alembic-samizdat (alembic CLI)"
DBSZ = f"DBSamizdat {DBSAMIZDAT_VERSION} (runner, in-process)"
DBSZ_CLI = f"DBSamizdat {DBSAMIZDAT_VERSION} (CLI)"
AL_UTILS = f"alembic_utils {ALEMBIC_UTILS_VERSION} (alembic CLI)"
AL_BARE = "Alembic alone, tables only (alembic CLI)"
FLOOR = "floor (psql)"

SCENARIOS: dict[str, str] = {
    "fresh": "fresh sync",
    "noop": "no-op sync",
    "root_view": "change root view",
    "mid_view": "change mid view",
    "root_function": "change root function",
    "refresh": "refresh all matviews",
    "refresh_parallel": "refresh all matviews, parallel",
    "belownodes": "--belownodes selection",
    "al_autogen_empty": "alembic autogenerate from empty",
    "al_upgrade": "alembic upgrade head",
    "al_autogen_noop": "alembic autogenerate, no-op",
    "heavy_refresh": "refresh CPU-heavy stack, serial",
    "heavy_refresh_parallel": "refresh CPU-heavy stack, parallel",
}

#: Scenarios run once per invocation on the CPU-heavy stack, not per N.
HEAVY_SCENARIOS = ("heavy_refresh", "heavy_refresh_parallel")
ALEMBIC_SCENARIOS = ("al_autogen_empty", "al_upgrade", "al_autogen_noop")
#: Scenarios starting from the workload as synced (or upgraded) by the same contender.
NEEDS_SYNCED = ("noop", *VARIANTS, "refresh", "refresh_parallel", *HEAVY_SCENARIOS)

#: Which modes run in which scenario.
MODES: dict[str, tuple[str, ...]] = {
    "fresh": (SZ_API, SZ_CLI, DBSZ, DBSZ_CLI, FLOOR),
    "noop": (SZ_API, SZ_API_CONNECT, SZ_CLI, DBSZ, DBSZ_CLI, FLOOR),
    "root_view": (SZ_API, DBSZ, FLOOR),
    "mid_view": (SZ_API, DBSZ, FLOOR),
    "root_function": (SZ_API, DBSZ, FLOOR),
    "refresh": (SZ_API, DBSZ, FLOOR),
    "refresh_parallel": (SZ_API, DBSZ, FLOOR),
    "belownodes": (SZ_API, DBSZ),
    "al_autogen_empty": (AL_BARE, AL_SZ, AL_UTILS),
    "al_upgrade": (AL_SZ, AL_UTILS, FLOOR),
    "al_autogen_noop": (AL_BARE, AL_SZ, AL_UTILS),
    "heavy_refresh": (SZ_API, DBSZ, FLOOR),
    "heavy_refresh_parallel": (SZ_API, DBSZ, FLOOR),
}

CONTENDER_MODES: dict[str, tuple[str, ...]] = {
    "samizdat": (SZ_API, SZ_API_CONNECT, SZ_CLI, AL_SZ),
    "dbsamizdat": (DBSZ, DBSZ_CLI),
    "alembic_utils": (AL_UTILS,),
    "alembic": (AL_BARE,),
    "floor": (FLOOR,),
}

#: What each mode's ratio is taken against (see :func:`baseline_mode` for the exceptions).
BASELINE: dict[str, str | None] = {
    SZ_API: FLOOR,
    SZ_API_CONNECT: FLOOR,
    SZ_CLI: FLOOR,
    DBSZ: SZ_API,
    DBSZ_CLI: SZ_CLI,
    AL_SZ: AL_BARE,
    AL_UTILS: AL_SZ,
    AL_BARE: None,
    FLOOR: None,
}

#: Alembic projects: mode -> short name.
ALEMBIC_PROJECTS: dict[str, str] = {AL_SZ: "sz", AL_BARE: "bare", AL_UTILS: "au"}


def baseline_mode(scenario: str, mode: str) -> str | None:
    """The mode a row's ratio is taken against, in the same scenario (the parallel CPU-heavy refresh: the
    same mode's serial row, see :func:`_ratio`; DBSamizdat's no-op: the API row that connects too)."""
    if scenario == "al_upgrade" and mode == AL_SZ:
        return FLOOR
    if scenario == "noop" and mode == DBSZ:
        return SZ_API_CONNECT  # DBSamizdat's runner connects inside the timed call
    return BASELINE.get(mode)


def venv_python(
    venv_dir: Path, package: str, version: str, requirements: Sequence[str], *, install: bool
) -> tuple[Path | None, str]:
    """The Python of a venv holding ``package`` ``version`` (installed there with ``requirements`` when
    allowed), or None and why not."""
    python = venv_dir / "bin" / "python"
    check = [str(python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"]
    if python.is_file():
        result = subprocess.run(check, capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip() == version:
            return python, "installed"
    if not install:
        return None, f"{package} {version} is not installed in {venv_dir} (and --no-install)"
    log(f"installing {package} {version} into {venv_dir}…")
    try:
        venv.EnvBuilder(with_pip=True, clear=python.is_file()).create(venv_dir)
        command = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements]
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"cannot install {package} {version}: {exc}"
    if result.returncode != 0:
        return None, f"cannot install {package} {version}: {short_error(result.stderr + result.stdout)}"
    return python, "installed now"


def dbsamizdat_python(venv_dir: Path, *, install: bool) -> tuple[Path | None, str]:
    """The Python of a venv holding DBSamizdat 0.11.2."""
    return venv_python(
        venv_dir, "dbsamizdat", DBSAMIZDAT_VERSION, [f"dbsamizdat=={DBSAMIZDAT_VERSION}"], install=install
    )


def alembic_utils_python(venv_dir: Path, *, install: bool) -> tuple[Path | None, str]:
    """The Python of a venv holding alembic_utils 0.8.8, with this venv's Alembic and SQLAlchemy versions."""
    import alembic
    import sqlalchemy

    requirements = [
        f"alembic_utils=={ALEMBIC_UTILS_VERSION}",
        f"alembic=={alembic.__version__}",
        f"sqlalchemy=={sqlalchemy.__version__}",
        "psycopg2-binary",
    ]
    return venv_python(venv_dir, "alembic_utils", ALEMBIC_UTILS_VERSION, requirements, install=install)


def versions_of(python: Path, packages: Sequence[str]) -> str:
    code = "import importlib.metadata as m, sys; print(', '.join(p + ' ' + m.version(p) for p in sys.argv[1:]))"
    result = subprocess.run([str(python), "-c", code, *packages], capture_output=True, text=True, check=False)
    return result.stdout.strip() or "?"

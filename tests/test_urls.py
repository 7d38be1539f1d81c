"""Passwords never reach error messages: mask_url, and the CLI's errors for bad and unreachable URLs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alembic_samizdat.urls import mask_url

SECRET = "S3CRETpw"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("postgresql://deployer:S3CRETpw@db.example:5432/shop", "postgresql://deployer:***@db.example:5432/shop"),
        ("postgresql+psycopg://deployer:S3CRETpw@h/d", "postgresql+psycopg://deployer:***@h/d"),
        ("postgres:/deployer:S3CRETpw@localhost/db", "postgres:/deployer:***@localhost/db"),
        ("postgres:deployer:S3CRETpw@localhost/db", "postgres:***@localhost/db"),  # over-masks the user name
        ("deployer:S3CRETpw@localhost", "deployer:***@localhost"),
        ("postgresql://:S3CRETpw@h/d", "postgresql://:***@h/d"),
        # An unescaped "@" (or "?") in the password: everything up to the last "@" before the host.
        ("postgresql://deployer:S3C@RETpw@localhost:1/db", "postgresql://deployer:***@localhost:1/db"),
        ("postgresql://deployer:S3C@RE@Tpw@h/db?a=b@c", "postgresql://deployer:***@h/db?a=b@c"),
        ("postgresql://deployer:S3C?RETpw@h/db", "postgresql://deployer:***@h/db"),
        # Query parameters and libpq key=value strings.
        ("postgresql://deployer@h:1/db?password=S3CRETpw", "postgresql://deployer@h:1/db?password=***"),
        (
            "postgresql://deployer@h/db?sslmode=require&password=S3CRETpw&application_name=x",
            "postgresql://deployer@h/db?sslmode=require&password=***&application_name=x",
        ),
        ("host=h password=S3CRETpw dbname=d", "host=h password=*** dbname=d"),
        ("host=h password = S3C@RET:pw dbname=d", "host=h password = *** dbname=d"),
        ("host=h password='S3CRET pw \\' x' dbname=d", "host=h password=*** dbname=d"),
        ("host=h sslpassword=S3CRETpw", "host=h sslpassword=***"),
        ("PGPASSWORD=S3CRETpw psql", "PGPASSWORD=*** psql"),
        # Inside messages.
        (
            "not a database URL: 'postgres:/deployer:S3CRETpw@localhost/db' (Could not parse)",
            "not a database URL: 'postgres:/deployer:***@localhost/db' (Could not parse)",
        ),
        ("from (postgresql://u:S3CRETpw@h/d) and more", "from (postgresql://u:***@h/d) and more"),
    ],
)
def test_mask_url_hides_the_password(text: str, masked: str) -> None:
    assert mask_url(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://deployer@db.example:5432/shop",
        "postgresql://db.example:5432/shop?sslmode=require",
        "host=h port=5432 user=u dbname=d",
        "cannot connect at 12:30: connection refused",
        "no URL here: just words, a:b and c@d",
        "",
    ],
)
def test_mask_url_leaves_text_without_a_password_alone(text: str) -> None:
    assert mask_url(text) == text


def test_mask_url_is_idempotent() -> None:
    once = mask_url("postgresql://u:S3C@RETpw@h/d?password=S3CRETpw host=h password='a b'")
    assert mask_url(once) == once
    assert "S3C" not in once and "RETpw" not in once and "a b" not in once


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cli") / "one_view.py"
    path.write_text(
        'from alembic_samizdat import SamizdatView\n\n\nclass V(SamizdatView):\n    sql_template = "${preamble} SELECT 1 ${postamble}"\n'
    )
    return str(path)


@pytest.mark.parametrize(
    ("url", "code"),
    [
        # A URL that cannot be used as given is a usage error (2); a server that does not answer, an error (1).
        ("postgres:/deployer:S3CRETpw@127.0.0.1/db", 2),  # one slash: not a URL at all
        ("postgresql://deployer@127.0.0.1:9/db?password=S3CRETpw", 1),  # nothing listens on port 9
        ("postgresql://deployer:S3C@RETpw@127.0.0.1:9/db", 2),  # unescaped "@"
        ("postgresql://deployer:S3CRETpw@127.0.0.1:9/db", 1),
        ("postgresql://deployer:S3CRETpw@127.0.0.1:notaport/db", 2),
        ("postgresql://deployer:S3CRETpw@[::1/db", 2),
    ],
)
@pytest.mark.parametrize("verbose", [False, True])
def test_cli_errors_do_not_show_the_password(url: str, code: int, verbose: bool, module: str) -> None:
    command = [sys.executable, "-m", "alembic_samizdat.cli", "diff", url, module]
    if verbose:
        command.insert(3, "-v")  # tracebacks too
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    if code == 1:
        assert "cannot connect to" in done.stderr and "Connection refused" in done.stderr
    assert "samizdat: error:" in done.stderr
    assert "internal error" not in done.stderr
    output = done.stdout + done.stderr
    for fragment in ("S3C", "RETpw"):
        assert fragment not in output, output


def test_cli_names_the_fix_for_an_unescaped_at(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "alembic_samizdat.cli", "diff", "postgresql://deployer:S3C@RETpw@127.0.0.1/db", module],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "%40" in done.stderr and "deployer:***@127.0.0.1/db" in done.stderr


def test_readme_command_syncs_on_a_throwaway_server_without_showing_its_password() -> None:
    # `samizdat sync example_project/shop.py`, the README's first command, as a user runs it.
    example = Path(__file__).resolve().parent.parent / "example_project" / "shop.py"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "alembic_samizdat.cli", "sync", str(example)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "throwaway PostgreSQL" in line and "127.0.0.1" in line)
    assert "postgres:***@127.0.0.1" in line
    assert "managed objects now in the database" in done.stdout

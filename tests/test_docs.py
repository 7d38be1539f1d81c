"""The documentation is tested: marked code blocks in README.md and docs/*.md, the CLI reference, the site build.

Code blocks run when a marker comment precedes them (``<!-- test: run -->``, ``<!-- test: file PATH -->``…;
see ``tools/doc_blocks.py`` for the markers). Each document with run blocks is run by ``tools/doc_blocks.py``
in a process of its own, in a fresh temporary directory, on a fresh empty database of the session's server
(``DATABASE_URL``); the documents and the Sphinx build are started together, so the slowest one sets the time.
When GraphViz is not installed, shell blocks get a stand-in ``dot`` that checks its input is a digraph.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TOOLS = ROOT / "tools"

#: Pages whose quick start or how-to must be covered by at least one run block.
MUST_RUN = ("README.md", "docs/tutorial.md", "docs/alembic.md", "docs/refresh.md", "docs/ci.md")

#: What the Sphinx build needs (module, package to install).
DOCS_TOOLS = (
    ("sphinx", "sphinx"),
    ("myst_parser", "myst-parser"),
    ("furo", "furo"),
)

TIMEOUT = 300


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"samizdat_tools_{name}", TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


doc_blocks = _load("doc_blocks")
gen_cli_reference = _load("gen_cli_reference")


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _name(doc: Path) -> str:
    return str(doc.relative_to(ROOT))


#: (document, part) of every part that has run blocks; parts run concurrently, each on a database of its own.
RUNNABLE = [(doc, number) for doc in documents() for number in range(1, len(doc_blocks.parts(doc)) + 1)]


def _job_name(doc: Path, part: int) -> str:
    return _name(doc) + (f"[part {part}]" if len(doc_blocks.parts(doc)) > 1 else "")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


MISSING_DOCS_TOOLS = [package for module, package in DOCS_TOOLS if not _importable(module)]

STAND_IN_DOT = '''#!{python}
"""Stand-in for GraphViz's dot in the docs tests: checks that stdin is a digraph, writes an empty SVG."""
import sys

text = sys.stdin.read().strip()
if not text.startswith(("digraph", "strict digraph")) or not text.endswith("}}"):
    sys.exit("dot (stand-in): the input is not a digraph")
sys.stdout.write('<svg xmlns="http://www.w3.org/2000/svg"/>\\n')
'''


@dataclass
class Job:
    """A process started in the background; ``result()`` waits for it."""

    process: subprocess.Popen[str]
    log: Path
    handle: IO[str]

    def result(self) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.handle.close()
        return code, self.log.read_text(encoding="utf-8", errors="replace")


def _start(args: list[str], log: Path, *, cwd: Path, env: dict[str, str]) -> Job:
    handle = log.open("w", encoding="utf-8")
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
    return Job(process, log, handle)


@dataclass
class Background:
    docs: dict[str, Job]
    build: Job | None
    site: Path
    reference_before: str


@pytest.fixture(scope="module")
def background(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    """Starts every document's run (each on a new database) and the Sphinx build, all at once."""
    base = tmp_path_factory.mktemp("docs")
    bindir = base / "bin"
    bindir.mkdir()
    if shutil.which("dot") is None:
        dot = bindir / "dot"
        dot.write_text(STAND_IN_DOT.format(python=sys.executable))
        dot.chmod(0o755)
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    databases: list[str] = []
    jobs: dict[str, Job] = {}
    reference = DOCS / "cli-reference.md"
    reference_before = reference.read_text(encoding="utf-8") if reference.exists() else ""
    build: Job | None = None
    try:
        for doc, part in RUNNABLE:
            database = f"t_docs_{uuid.uuid4().hex[:16]}"
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE DATABASE "{database}" TEMPLATE template0')
            databases.append(database)
            url = make_url(pg_url).set(database=database).render_as_string(hide_password=False)
            workdir = base / f"{doc.stem.lower()}-{part}"
            workdir.mkdir()
            env = {**os.environ, "DATABASE_URL": url, "PYTHONDONTWRITEBYTECODE": "1"}
            args = [sys.executable, str(TOOLS / "doc_blocks.py"), "--workdir", str(workdir), "--path", str(bindir)]
            args += ["--part", str(part), "--timings", str(doc)]
            log = base / f"{doc.stem}-{part}.log"
            jobs[_job_name(doc, part)] = _start(args, log, cwd=ROOT, env=env)
        if not MISSING_DOCS_TOOLS:
            command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "dirhtml"]
            command += ["-d", str(base / "doctrees"), "docs", str(base / "site")]
            build = _start(command, base / "sphinx.log", cwd=ROOT, env=dict(os.environ))
        yield Background(jobs, build, base / "site", reference_before)
    finally:
        for job in [*jobs.values(), *([build] if build else [])]:
            if job.process.poll() is None:
                job.process.kill()
            job.process.wait()
            job.handle.close()
        with admin.connect() as conn:
            for database in databases:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.dispose()


@pytest.mark.parametrize("job", [_job_name(doc, part) for doc, part in RUNNABLE])
def test_marked_blocks_run(job: str, background: Background) -> None:
    code, output = background.docs[job].result()
    assert code == 0, f"{job}: a marked block failed\n{output}"


def test_docs_build_is_clean(background: Background) -> None:
    if background.build is None:
        pytest.skip(f"not installed: {', '.join(MISSING_DOCS_TOOLS)} (pip install -e '.[docs]')")
    code, output = background.build.result()
    assert code == 0, f"the Sphinx build (warnings are errors) failed:\n{output}"
    # Nothing printed at all: no warning, no banner, nothing a reader of the build log must learn to ignore.
    assert output.strip() == "", output
    assert (background.site / "api" / "index.html").exists()
    assert (background.site / "cli-reference" / "index.html").exists()
    reference = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    assert reference == background.reference_before, (
        "the build regenerated docs/cli-reference.md: it was out of date, commit the new version"
    )


# --------------------------------------------------------------------------------------------------------------
# Markers and coverage


def test_markers_are_well_formed() -> None:
    problems = [p for doc in documents() for p in doc_blocks.parse(doc)[1]]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("relative", MUST_RUN)
def test_page_has_runnable_blocks(relative: str) -> None:
    runs = [b for b in doc_blocks.marked(ROOT / relative) if b.verb == "run"]
    assert runs, (
        f"{relative} has no <!-- test: run --> block, so its examples are not tested: mark the blocks meant to "
        "run (see tools/doc_blocks.py)"
    )


def test_parse_reads_markers_and_fences(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "text\n\n<!-- test: run exit=101 -->\n```sh\nfalse\n```\n\n```python\nx = 1\n```\n"
        "<!-- test: file a.py -->\n````python\n```\n````\n<!-- test: bogus -->\n```python\n```\n"
        "<!-- test: run -->\n\ntext\n"
    )
    blocks, problems = doc_blocks.parse(doc)
    assert [(b.lang, b.verb, b.args, b.line) for b in blocks] == [
        ("sh", "run", ["exit=101"], 5),
        ("python", None, [], 9),
        ("python", "file", ["a.py"], 13),
        ("python", "bogus", [], 17),
    ]
    assert blocks[0].expected_exit == 101
    assert blocks[2].code == "```\n"
    assert len(problems) == 2
    assert "unknown marker 'bogus'" in problems[0] and "not directly followed" in problems[1]


def test_update_replaces_appends_and_imports() -> None:
    source = textwrap.dedent(
        """\
        import os

        X = 1


        @deco
        class A:
            a = 1


        def f():
            return 1
        """
    )
    snippet = textwrap.dedent(
        """\
        from decimal import Decimal
        import os


        @deco
        class A:
            a = 2


        class B:
            pass
        """
    )
    out = doc_blocks.update_python_source(source, snippet)
    assert out.count("import os") == 1 and "from decimal import Decimal" in out
    assert "a = 2" in out and "a = 1" not in out and out.count("@deco") == 1
    assert out.rstrip().endswith("class B:\n    pass") and "def f():" in out
    ast.parse(out)


def test_failing_blocks_are_reported_with_their_line(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text("<!-- test: run -->\n```python\nx = 1\nassert x == 2\n```\n")
    with pytest.raises(doc_blocks.BlockFailed, match=r"page\.md:3: python block failed") as info:
        doc_blocks.run_document(doc, tmp_path, "postgresql+psycopg://user@host/db")
    assert "line 4" in str(info.value)
    doc.write_text("<!-- test: run exit=3 -->\n```sh\nexit 4\n```\n")
    with pytest.raises(doc_blocks.BlockFailed, match="exited 4, expected 3"):
        doc_blocks.run_document(doc, tmp_path, "postgresql+psycopg://user@host/db")


# --------------------------------------------------------------------------------------------------------------
# The generated CLI reference


def test_cli_reference_is_up_to_date() -> None:
    committed = (DOCS / "cli-reference.md").read_text(encoding="utf-8")
    assert committed == gen_cli_reference.render(), (
        "docs/cli-reference.md differs from the CLI's parser: run `python tools/gen_cli_reference.py` and commit it"
    )


def test_cli_reference_covers_every_command_and_option() -> None:
    from alembic_samizdat.cli import build_parser

    page = gen_cli_reference.render(build_parser())
    parser: Any = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in commands.choices.items():
        assert f"## samizdat {name}" in page
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}" in page, (name, flag)


def test_parts_start_fresh_with_the_files_before_them(tmp_path: Path) -> None:
    doc = tmp_path / "page.md"
    doc.write_text(
        "<!-- test: file a.py -->\n```python\nA = 1\n```\n<!-- test: run -->\n```python\nimport a\n```\n"
        "<!-- test: part -->\n## Part 2\n<!-- test: update a.py -->\n```python\nA = 2\n```\n"
        "<!-- test: run -->\n```python\nimport a\nassert a.A == 2 and 'x' not in globals()\n```\n"
    )
    first, second = doc_blocks.parts(doc)
    assert [b.verb for b in first] == ["file", "run"]
    assert [b.verb for b in second] == ["file", "update", "run"]
    assert doc_blocks.run_document(doc, tmp_path, "postgresql+psycopg://user@host/db", part=2) == 3

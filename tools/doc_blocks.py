"""Run the marked code blocks of Markdown documents (README.md, docs/*.md) against a real PostgreSQL.

A fenced block is run when the line right before its opening fence is a marker comment (invisible on GitHub
and on the site)::

    <!-- test: run -->            python: executed; the blocks of one document share one namespace, in order
                                  sh/bash: run by ``bash -euo pipefail``, must exit 0
    <!-- test: run exit=103 -->   sh/bash: must exit with this status
    <!-- test: file PATH -->      the block is written to PATH (e.g. a module that later blocks import)
    <!-- test: update PATH -->    python: the classes, functions and assignments of the block replace those of
                                  the same name in PATH (new ones are appended, missing imports added)
    <!-- test: part -->           (on a line of its own) what follows is a new part: a part runs on its own, in
                                  a fresh directory and database, after the file and update blocks before it

Unmarked blocks (output samples, env.py fragments, install commands) are never run. A document runs in a fresh
temporary directory (its current directory, first on ``sys.path``) against the database in ``DATABASE_URL``,
which should be empty: the documents create tables. In run blocks, the placeholder URLs
``postgresql://user@host/db`` and ``postgresql+psycopg://user@host/db`` stand for that database. Shell blocks
find this interpreter's ``python``, ``samizdat`` and ``alembic`` first on ``PATH``.

Without ``--part``, the parts of a document run one after the other in one directory and database, as a
reader would run them.

Usage::

    DATABASE_URL=postgresql+psycopg://me@localhost/empty python tools/doc_blocks.py docs/tutorial.md
    python tools/doc_blocks.py --check README.md docs/*.md     # the markers only; no database
    python tools/doc_blocks.py --list docs/refresh.md          # what would run

``tests/test_docs.py`` runs every document that has run blocks this way, each on a database of its own.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PLACEHOLDER_URLS = ("postgresql+psycopg://user@host/db", "postgresql://user@host/db")
PYTHON = ("python", "py")
SHELL = ("sh", "bash", "shell")
VERBS = ("run", "file", "update", "part")

MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<spec>.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


class BlockFailed(Exception):
    """A block did not run as its marker says; the message has the document, the line and the output."""


@dataclass
class Block:
    """One fenced code block of a document, with its test marker (if any)."""

    doc: Path
    line: int  # 1-based line of the block's first line of code
    lang: str
    code: str
    verb: str | None = None
    args: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def expected_exit(self) -> int:
        return next((int(a.split("=", 1)[1]) for a in self.args if a.startswith("exit=")), 0)


def parse(doc: Path) -> tuple[list[Block], list[str]]:
    """The fenced blocks of ``doc`` and the problems found in its markers."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    pending: tuple[int, str] | None = None
    i = 0
    while i < len(lines):
        text = lines[i]
        marker = MARKER.match(text)
        fence = FENCE.match(text)
        if marker:
            if pending is not None:
                problems.append(f"{doc}:{pending[0]}: marker not followed by a code block")
                pending = None
            if marker["spec"].split()[:1] == ["part"]:
                if marker["spec"].strip() != "part":
                    problems.append(f"{doc}:{i + 1}: part takes no options")
                blocks.append(Block(doc, i + 1, "", "", verb="part"))
            else:
                pending = (i + 1, marker["spec"])
            i += 1
            continue
        if fence:
            indent, mark = fence["indent"], fence["fence"]
            info = fence["info"].strip()
            lang = info.split()[0].lower() if info else ""
            closing = re.compile(rf"^\s*{re.escape(mark[0])}{{{len(mark)},}}\s*$")
            body: list[str] = []
            j = i + 1
            while j < len(lines) and not closing.match(lines[j]):
                body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
                j += 1
            block = Block(doc, i + 2, lang, "\n".join(body) + "\n")
            if pending is not None:
                words = shlex.split(pending[1])
                block.verb, block.args = (words[0] if words else ""), words[1:]
                problems += [f"{doc}:{pending[0]}: {problem}" for problem in check_marker(block)]
                pending = None
            blocks.append(block)
            i = j + 1
            continue
        if pending is not None and text.strip():
            problems.append(f"{doc}:{pending[0]}: marker not directly followed by a code block")
            pending = None
        i += 1
    if pending is not None:
        problems.append(f"{doc}:{pending[0]}: marker at the end of the file")
    return blocks, problems


def check_marker(block: Block) -> list[str]:
    """What is wrong with a block's marker (nothing: an empty list)."""
    verb, args, lang = block.verb, block.args, block.lang
    if verb == "run":
        if lang not in PYTHON + SHELL:
            return [f"run: cannot run a {lang or 'plain'} block (python or sh)"]
        if any(not re.fullmatch(r"exit=\d+", a) for a in args) or (args and lang in PYTHON):
            return [f"run: unknown options {args} (sh blocks take exit=N)"]
        return []
    if verb in ("file", "update"):
        if len(args) != 1:
            return [f"{verb}: give exactly one path"]
        if verb == "update" and lang not in PYTHON:
            return ["update: only python blocks"]
        return []
    return [f"unknown marker {verb!r} ({', '.join(VERBS)})"]


def marked(doc: Path) -> list[Block]:
    """The blocks of ``doc`` that carry a marker (part boundaries included)."""
    return [b for b in parse(doc)[0] if b.verb]


def parts(doc: Path) -> list[list[Block]]:
    """What each part of ``doc`` runs: the file and update blocks of the parts before it, then its own blocks."""
    result: list[list[Block]] = [[]]
    files: list[Block] = []
    for block in marked(doc):
        if block.verb == "part":
            files += [b for b in result[-1] if b.verb in ("file", "update") and b not in files]
            result.append(list(files))
        else:
            result[-1].append(block)
    return [part for part in result if any(b.verb == "run" for b in part)]


def update_python_source(source: str, snippet: str) -> str:
    """``source`` with the top-level definitions of ``snippet`` replacing (or appended to) its own."""
    tree, new = ast.parse(source), ast.parse(snippet)
    snippet_lines = snippet.splitlines()
    lines = source.splitlines()

    def name(node: ast.stmt) -> str | None:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            return node.name
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            return node.targets[0].id
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            return node.target.id
        return None

    def span(node: ast.stmt) -> tuple[int, int]:
        decorators = getattr(node, "decorator_list", [])
        start = min([node.lineno, *(d.lineno for d in decorators)])
        return start - 1, node.end_lineno or node.lineno

    existing = {key: span(n) for n in tree.body if (key := name(n))}
    imports: list[str] = []
    replacements: dict[tuple[int, int], str] = {}
    appended: list[str] = []
    for node in new.body:
        start, end = span(node)
        text = "\n".join(snippet_lines[start:end])
        if isinstance(node, ast.Import | ast.ImportFrom):
            if text not in lines:
                imports.append(text)
            continue
        key = name(node)
        if key is None:
            raise BlockFailed(f"update blocks hold only imports and named definitions, not: {text}")
        if key in existing:
            replacements[existing[key]] = text
        else:
            appended.append(text)
    for (start, end), text in sorted(replacements.items(), reverse=True):
        lines[start:end] = text.splitlines()
    if imports:
        last = max((n.end_lineno or 0 for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)), default=0)
        lines[last:last] = imports
    out = "\n".join(lines).rstrip("\n") + "\n"
    for text in appended:
        out += "\n\n" + text + "\n"
    return out


@dataclass
class Session:
    """Runs the marked blocks of one document, in order, in ``workdir`` against the database at ``url``."""

    workdir: Path
    url: str
    extra_path: tuple[str, ...] = ()
    #: The blocks run as the ``__main__`` module, as a script would (SQLAlchemy resolves ``Mapped[...]``
    #: annotations through ``sys.modules[cls.__module__]``); see :func:`run_document`.
    main: types.ModuleType = field(default_factory=lambda: types.ModuleType("__main__"))

    @property
    def namespace(self) -> dict[str, Any]:
        return self.main.__dict__

    def substitute(self, code: str) -> str:
        for placeholder in PLACEHOLDER_URLS:
            code = code.replace(placeholder, self.url)
        return code

    def write(self, relative: str, text: str) -> None:
        path = (self.workdir / relative).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        # A module written again must be imported again by the next block that imports it.
        for module_name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and Path(file).resolve() == path:
                del sys.modules[module_name]
        importlib.invalidate_caches()

    def run(self, block: Block) -> None:
        if block.verb == "file":
            self.write(block.args[0], block.code)
        elif block.verb == "update":
            path = self.workdir / block.args[0]
            self.write(block.args[0], update_python_source(path.read_text(encoding="utf-8"), block.code))
        elif block.lang in PYTHON:
            # Compiled under the document's name, padded so that tracebacks show the document's line numbers.
            code = "\n" * (block.line - 1) + self.substitute(block.code)
            try:
                exec(compile(code, str(block.doc), "exec"), self.namespace)
            except Exception as exc:
                raise BlockFailed(f"{block.where}: python block failed\n{traceback.format_exc()}") from exc
        else:
            self.run_shell(block)

    def run_shell(self, block: Block) -> None:
        env = dict(os.environ)
        env.update(
            DATABASE_URL=self.url,
            PATH=os.pathsep.join([str(Path(sys.executable).parent), *self.extra_path, env.get("PATH", "")]),
            PYTHONDONTWRITEBYTECODE="1",
        )
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", self.substitute(block.code)],
            cwd=self.workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != block.expected_exit:
            raise BlockFailed(
                f"{block.where}: shell block exited {done.returncode}, expected {block.expected_exit}\n"
                f"--- block ---\n{block.code}--- stdout ---\n{done.stdout}--- stderr ---\n{done.stderr}"
            )

    def close(self) -> None:
        """Dispose of the engines the blocks made and forget the modules imported from ``workdir``."""
        for value in self.namespace.values():
            if type(value).__name__ == "Engine" and callable(getattr(value, "dispose", None)):
                value.dispose()
        root = self.workdir.resolve()
        for module_name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and Path(file).resolve().is_relative_to(root):
                del sys.modules[module_name]


def run_document(
    doc: Path,
    workdir: Path,
    url: str,
    *,
    part: int | None = None,
    extra_path: tuple[str, ...] = (),
    timings: bool = False,
) -> int:
    """Run the marked blocks of ``doc`` (all parts, one after the other, or only ``part``, counted from 1) in
    ``workdir``, made the current directory; returns the number of blocks run.
    """
    problems = parse(doc)[1]
    if problems:
        raise BlockFailed("\n".join(problems))
    if part is None:
        todo = [b for b in marked(doc) if b.verb != "part"]
    else:
        all_parts = parts(doc)
        if not 1 <= part <= len(all_parts):
            raise BlockFailed(f"{doc}: no part {part} (it has {len(all_parts)})")
        todo = all_parts[part - 1]
    old_cwd, old_env = Path.cwd(), os.environ.get("DATABASE_URL")
    old_bytecode, old_main = sys.dont_write_bytecode, sys.modules.get("__main__")
    os.chdir(workdir)
    sys.path.insert(0, str(workdir))
    os.environ["DATABASE_URL"] = url
    sys.dont_write_bytecode = True  # a module rewritten within a second must not be read from a stale .pyc
    session = Session(workdir, url, extra_path)
    sys.modules["__main__"] = session.main
    try:
        for block in todo:
            started = time.perf_counter()
            session.run(block)
            if timings:
                print(f"{time.perf_counter() - started:6.2f} s  {block.where} {block.verb}", file=sys.stderr)
    finally:
        session.close()
        if old_main is not None:
            sys.modules["__main__"] = old_main
        os.chdir(old_cwd)
        sys.path.remove(str(workdir))
        sys.dont_write_bytecode = old_bytecode
        if old_env is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = old_env
    return len(todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the marked code blocks of Markdown documents.")
    parser.add_argument("docs", nargs="+", type=Path, metavar="DOC")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check the markers (no database needed)")
    mode.add_argument("--list", action="store_true", help="list the marked blocks")
    parser.add_argument("--workdir", type=Path, help="run in this (empty) directory instead of a temporary one")
    parser.add_argument("--path", action="append", default=[], help="prepend this directory to PATH for sh blocks")
    parser.add_argument("--part", type=int, help="run only this part (counted from 1) of each document")
    parser.add_argument("--timings", action="store_true", help="print how long each block took")
    args = parser.parse_args(argv)
    if args.check or args.list:
        problems = [p for doc in args.docs for p in parse(doc)[1]]
        if args.list:
            for doc in args.docs:
                for number, blocks in enumerate(parts(doc), 1):
                    print(f"{doc}, part {number}:")
                    for block in blocks:
                        print(f"  {block.where}: {block.verb} {' '.join(block.args)} ({block.lang})")
        print("\n".join(problems), file=sys.stderr) if problems else None
        return 1 if problems else 0
    url = os.environ.get("DATABASE_URL")
    if not url:
        parser.error("set DATABASE_URL to an empty database (postgresql+psycopg://…)")
    status = 0
    for doc in args.docs:
        with tempfile.TemporaryDirectory(prefix="doc-blocks-") as temp:
            workdir = args.workdir or Path(temp)
            try:
                count = run_document(
                    doc.resolve(),
                    workdir.resolve(),
                    url,
                    part=args.part,
                    extra_path=tuple(args.path),
                    timings=args.timings,
                )
            except BlockFailed as exc:
                print(f"FAILED {exc}", file=sys.stderr)
                status = 1
            else:
                print(f"ok {doc}: {count} marked block(s)")
    return status


if __name__ == "__main__":
    sys.exit(main())

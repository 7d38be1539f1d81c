"""MkDocs hooks (``hooks:`` in mkdocs.yml).

- ``on_pre_build``: regenerate docs/cli-reference.md from ``alembic_samizdat.cli.build_parser()`` (written only
  when its content changes, so ``mkdocs serve`` does not rebuild in a loop).
- ``on_page_content``: the docstrings use Sphinx roles (``:class:`~alembic_samizdat.errors.SamizdatError```),
  which Markdown renders as the role's name followed by code; drop the role and, as Sphinx does for ``~``, keep
  only the last part of the name.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("mkdocs.hooks.samizdat")

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(~?)([^<]*)</code>")


def _generator() -> ModuleType:
    path = Path(__file__).resolve().parent / "gen_cli_reference.py"
    spec = importlib.util.spec_from_file_location("samizdat_gen_cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def on_pre_build(config: Any, **kwargs: Any) -> None:
    """Write docs/cli-reference.md from the CLI's argument parser if it changed."""
    target = Path(config["docs_dir"]) / "cli-reference.md"
    if _generator().write(target):
        log.info("regenerated %s from the CLI's argument parser", target.name)


def _role(match: re.Match[str]) -> str:
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Render Sphinx roles in docstrings as plain code."""
    return _ROLE.sub(_role, html)

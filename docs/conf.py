"""Sphinx configuration of the documentation site.

Build: ``sphinx-build -W --keep-going -b dirhtml docs site`` (needs the ``docs`` extra). The pages are Markdown
(MyST); the API reference is autodoc, which reads the docstrings' reST roles as written. Before each build,
docs/cli-reference.md is regenerated from ``alembic_samizdat.cli.build_parser()`` (written only when it changed).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

project = "alembic-samizdat"
author = "alembic-samizdat contributors"
copyright = "alembic-samizdat contributors"

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links such as [CLI reference](cli-reference.md#samizdat-sync) point at headings by their GitHub-style slug.
myst_heading_anchors = 4
myst_enable_extensions = ["attrs_inline"]

html_theme = "furo"
html_title = "alembic-samizdat"
html_copy_source = False

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "mixed"
autodoc_inherit_docstrings = False
# Annotations name SQLAlchemy and Alembic types that this site does not document.
nitpicky = False


def _write_cli_reference(app: Any) -> None:
    spec = importlib.util.spec_from_file_location("samizdat_gen_cli_reference", ROOT / "tools" / "gen_cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write(Path(app.srcdir) / "cli-reference.md")


def setup(app: Any) -> None:
    """Regenerate the CLI reference before reading the sources."""
    app.connect("builder-inited", _write_cli_reference)

"""Finding the database and the registry that an Alembic environment uses, by running its env.py.

``samizdat -c alembic.ini diff`` (or ``refresh``) then works on exactly what ``alembic upgrade`` works on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..drivers import UnusableUrlError, cli_url
from ..errors import AlembicConfigError, SamizdatError
from ..registry import SamizdatRegistry
from .compare import find_registry


def _env_failure(path: str, configured_url: str | None, exc: Exception) -> SamizdatError:
    """What made env.py fail, in one line: most often the URL in alembic.ini."""
    if configured_url:
        try:
            cli_url(configured_url)
        except UnusableUrlError as bad:
            return AlembicConfigError(f"{path}: sqlalchemy.url: {bad}")
    first = (str(exc).strip().splitlines() or [""])[0]
    return AlembicConfigError(f"{path}: env.py failed: {type(exc).__name__}: {first} (-v shows the traceback)")


def from_alembic_config(path: str) -> tuple[str, SamizdatRegistry]:
    """(database URL, registry) of the Alembic environment configured in ``path`` (an ``alembic.ini``)."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    if not Path(path).is_file():
        raise AlembicConfigError(f"no Alembic configuration at {path}")
    config = Config(path)
    try:
        script = ScriptDirectory.from_config(config)
    except Exception as exc:
        raise AlembicConfigError(f"{path}: {exc}") from exc
    found: dict[str, Any] = {}

    def capture(rev: Any, context: Any) -> list[Any]:
        # Called by env.py's run_migrations(): take what it configured, run no migration.
        found["url"] = context.bind.engine.url.render_as_string(hide_password=False) if context.bind else None
        found["metadata"] = context.opts.get("target_metadata")
        return []

    with EnvironmentContext(config, script, fn=capture, as_sql=False, dont_mutate=True):
        try:
            script.run_env()
        except (SamizdatError, SystemExit):
            raise
        except Exception as exc:
            raise _env_failure(path, config.get_main_option("sqlalchemy.url"), exc) from exc
    if not found.get("url"):
        raise AlembicConfigError(f"{path}: env.py did not open a database connection (online mode)")
    registry = find_registry(found.get("metadata"))
    if registry is None:
        raise AlembicConfigError(
            f"{path}: target_metadata holds no SamizdatRegistry; create one with SamizdatRegistry(metadata)"
        )
    return str(found["url"]), registry

"""The Alembic projects of the alembic contenders: alembic.ini, env.py, the models module, and alembic_utils'
initial revision."""

from __future__ import annotations

from pathlib import Path

from common import BenchError
from contenders import AL_BARE, AL_SZ, AL_UTILS
from workload import Workload

ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
prepend_sys_path = %(here)s
path_separator = os

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

#: What replaces ``target_metadata = None`` in the standard env.py, per contender.
ENV_TARGET: dict[str, str] = {
    AL_SZ: (
        "import alembic_samizdat.alembic  # noqa: F401  (samizdat autogenerate, operations and renderers)\n"
        "from bench_models import metadata  # a MetaData with SamizdatRegistry(metadata) holding the workload\n"
        "\ntarget_metadata = metadata"
    ),
    AL_BARE: "from bench_models import metadata  # the base tables only\n\ntarget_metadata = metadata",
    AL_UTILS: (
        "from alembic_utils.replaceable_entity import register_entities\n"
        "from bench_models import entities, metadata\n\n"
        "register_entities(entities)\n"
        "target_metadata = metadata"
    ),
}


def _alembic_template(name: str) -> str:
    import alembic

    return (Path(alembic.__file__).parent / "templates" / "generic" / name).read_text(encoding="utf-8")


def write_alembic_project(root: Path, mode: str, models: str) -> None:
    """An Alembic project in ``root``: the standard ``alembic init`` env.py and script.py.mako, with the URL
    read from ``BENCH_DATABASE_URL`` and ``target_metadata`` set as :data:`ENV_TARGET` says."""
    (root / "migrations" / "versions").mkdir(parents=True, exist_ok=True)
    (root / "alembic.ini").write_text(ALEMBIC_INI, encoding="utf-8")
    env = _alembic_template("env.py")
    if "target_metadata = None" not in env or "config = context.config\n" not in env:
        raise BenchError("Alembic's generic env.py template has changed; update bench/run.py")
    env = env.replace("target_metadata = None", ENV_TARGET[mode], 1)
    env = env.replace(
        "config = context.config\n",
        'config = context.config\nconfig.set_main_option("sqlalchemy.url", os.environ["BENCH_DATABASE_URL"])\n',
        1,
    )
    (root / "migrations" / "env.py").write_text("import os\n" + env, encoding="utf-8")
    (root / "migrations" / "script.py.mako").write_text(_alembic_template("script.py.mako"), encoding="utf-8")
    (root / "bench_models.py").write_text(models, encoding="utf-8")


def _tables_source(workload: Workload) -> list[str]:
    lines = ["from sqlalchemy import Column, Integer, MetaData, Table", "", "metadata = MetaData()"]
    for table in workload.tables:
        lines.append(
            f'Table("{table}", metadata, Column("id", Integer, primary_key=True, autoincrement=False), '
            'Column("val", Integer, nullable=False))'
        )
    return lines


def alembic_models(workload: Workload, mode: str, module: Path) -> str:
    """The models module of an Alembic project: the base tables, and the workload as the contender wants it."""
    lines = ['"""Benchmark models: the base tables and the workload."""', "", *_tables_source(workload)]
    if mode == AL_SZ:
        lines[2:2] = ["from alembic_samizdat import SamizdatRegistry"]
        lines += ["registry = SamizdatRegistry(metadata)", f"registry.load({str(module)!r})"]
    elif mode == AL_UTILS:
        lines[2:2] = [
            "from alembic_utils.pg_function import PGFunction",
            "from alembic_utils.pg_materialized_view import PGMaterializedView",
            "from alembic_utils.pg_trigger import PGTrigger",
            "from alembic_utils.pg_view import PGView",
        ]
        lines += ["", "entities = ["]
        lines += [f"    {entity}," for entity in alembic_utils_entities(workload)]
        lines += ["]"]
    return "\n".join(lines) + "\n"


def alembic_utils_entities(workload: Workload) -> list[str]:
    """The workload as alembic_utils constructor calls (Python source), in dependency order.

    Materialized views carry no index (alembic_utils has no place for one)."""
    out = []
    for obj in workload.objects:
        body = workload.body(obj)
        if obj.kind == "view":
            out.append(f"PGView(schema='public', signature={obj.name!r}, definition={body!r})")
        elif obj.kind == "matview":
            out.append(
                f"PGMaterializedView(schema='public', signature={obj.name!r}, definition={body!r}, with_data=True)"
            )
        elif obj.kind == "function":
            out.append(f"PGFunction(schema='public', signature={obj.name + '(integer)'!r}, definition={body!r})")
        elif obj.kind == "trigger_function":
            out.append(f"PGFunction(schema='public', signature={obj.name + '()'!r}, definition={body!r})")
        else:
            assert obj.table is not None
            definition = f"BEFORE INSERT OR UPDATE ON public.{obj.table} " + " ".join(body.split())
            out.append(
                f"PGTrigger(schema='public', signature={obj.name!r}, on_entity={'public.' + obj.table!r}, "
                f"definition={definition!r})"
            )
    return out


def alembic_utils_revision(workload: Workload) -> str:
    """The initial revision, as alembic_utils' autogenerate writes it: ``op.create_entity`` in dependency order."""
    lines = [
        '"""initial (written by bench/run.py as alembic_utils\' autogenerate writes it)"""',
        "from alembic import op",
        "from alembic_utils.pg_function import PGFunction",
        "from alembic_utils.pg_materialized_view import PGMaterializedView",
        "from alembic_utils.pg_trigger import PGTrigger",
        "from alembic_utils.pg_view import PGView",
        "",
        'revision = "bench0001"',
        "down_revision = None",
        "branch_labels = None",
        "depends_on = None",
        "",
        "",
        "def upgrade() -> None:",
    ]
    for obj, entity in zip(workload.objects, alembic_utils_entities(workload), strict=True):
        lines.append(f"    public_{obj.name} = {entity}")
        lines.append(f"    op.create_entity(public_{obj.name})")
    lines += ["", "", "def downgrade() -> None:", "    pass", ""]
    return "\n".join(lines)


def count_ops(revision: str) -> int:
    """Operations (``op.…`` calls) in the ``upgrade()`` of a revision file."""
    if "def upgrade()" not in revision:
        return 0
    upgrade = revision.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    return sum(1 for line in upgrade.splitlines() if line.strip().startswith("op."))

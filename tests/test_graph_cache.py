"""The graph cache (alembic_samizdat/graph_cache.py): a later process reuses a graph only when it is provably the
graph it would build.

Every case runs in fresh interpreters, as the command line does: the first builds and saves, the next one either
reuses (and then must hold exactly what a fresh build holds) or builds again. Nothing here measures time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from alembic_samizdat import SamizdatView
from alembic_samizdat.graph_cache import fingerprint

PROBE = textwrap.dedent(
    """
    import json, sys
    from dataclasses import replace
    from alembic_samizdat import graph_cache
    from alembic_samizdat.registry import registry_from_modules
    from alembic_samizdat.signature import definition_hash

    registry = registry_from_modules(sys.argv[1:])
    # Asked before the graph is built (patching the build would itself make the library unprovable).
    built = graph_cache.load(tuple(registry))[1] is None
    g = registry.graph()
    again = registry.graph()
    print(json.dumps({
        "built": built,
        "same_object": again is g,
        "nodes": {
            repr(k): [repr(replace(v, refs=tuple(sorted(v.refs, key=repr)))), definition_hash(v)]
            for k, v in g.nodes.items()
        },
        "order": [repr(k) for k in g.order],
        "deps": {repr(k): [repr(d) for d in v] for k, v in g.deps.items()},
    }))
    """
)


def _graph(tmp_path: Path, *modules: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    environment = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "SAMIZDAT_NO_GRAPH_CACHE")
    }
    environment["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
    environment.update(env or {})
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, modules)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def _fresh(tmp_path: Path, *modules: Path, env: dict[str, str] | None = None) -> dict[str, object]:
    """What a process without the cache builds."""
    return _graph(tmp_path, *modules, env={**(env or {}), "SAMIZDAT_NO_GRAPH_CACHE": "1"})


def _same_graph(a: dict[str, object], b: dict[str, object]) -> bool:
    return all(a[k] == b[k] for k in ("nodes", "order", "deps"))


def _caches(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "pycache").rglob("*.samizdat-graph"))


MODULE = '''
from alembic_samizdat import SamizdatFunction, SamizdatMaterializedView, SamizdatView

class base(SamizdatView):
    deps_on_unmanaged = {"t"}
    grants = {"PUBLIC": {"SELECT"}}
    sql_template = """${preamble} SELECT 1 AS one ${postamble}"""

class f(SamizdatFunction):
    function_arguments_signature = "integer"
    sql_template = """${preamble} RETURNS integer LANGUAGE sql AS $$ SELECT $1 $$"""

class top(SamizdatMaterializedView):
    deps_on = {base, f}
    refresh_triggers = {"t"}
    sql_template = """${preamble} SELECT one FROM "base" WHERE public.f(one) = 1 ${postamble}"""
'''


def test_a_later_process_reuses_exactly_the_graph_it_would_build(tmp_path: Path) -> None:
    module = tmp_path / "views_a.py"
    module.write_text(MODULE)
    first = _graph(tmp_path, module)
    assert first["built"] and len(_caches(tmp_path)) == 1
    second = _graph(tmp_path, module)
    assert not second["built"], "the saved graph was not used"
    # (The order of a deps_on set differs from process to process; the graph compares it as a set.)
    assert second["same_object"]  # and it became the process's memoized graph
    assert _same_graph(second, first) and _same_graph(second, _fresh(tmp_path, module))


def test_editing_the_module_builds_again(tmp_path: Path) -> None:
    module = tmp_path / "views_b.py"
    module.write_text(MODULE)
    _graph(tmp_path, module)
    # Another size: Python's own bytecode cache tells a source file changed by its mtime (in seconds) and size.
    module.write_text(MODULE.replace("SELECT 1 AS one", "SELECT 22 AS one"))
    changed = _graph(tmp_path, module)
    assert changed["built"]
    assert "SELECT 22 AS one" in json.dumps(changed["nodes"])
    assert _same_graph(changed, _fresh(tmp_path, module))


def test_editing_a_module_the_classes_import_builds_again(tmp_path: Path) -> None:
    (tmp_path / "constants_c.py").write_text("LIMIT = 10\n")
    module = tmp_path / "views_c.py"
    module.write_text(
        textwrap.dedent(
            """
            from alembic_samizdat import SamizdatView
            from constants_c import LIMIT

            class limited(SamizdatView):
                sql_template = "${preamble} SELECT 1 AS one LIMIT " + str(LIMIT) + " ${postamble}"
            """
        )
    )
    first = _graph(tmp_path, module)
    assert "LIMIT 10" in json.dumps(first["nodes"])
    assert not _graph(tmp_path, module)["built"]
    (tmp_path / "constants_c.py").write_text("LIMIT = 200\n")  # another size: see above
    changed = _graph(tmp_path, module)
    assert changed["built"] and "LIMIT 200" in json.dumps(changed["nodes"])
    assert _same_graph(changed, _fresh(tmp_path, module))


def test_an_environment_variable_read_at_import_builds_again(tmp_path: Path) -> None:
    module = tmp_path / "views_d.py"
    module.write_text("import os\n" + MODULE.replace('deps_on_unmanaged = {"t"}', 'schema = os.environ["APP_SCHEMA"]'))
    first = _graph(tmp_path, module, env={"APP_SCHEMA": "one"})
    assert "schema='one'" in json.dumps(first["nodes"])
    changed = _graph(tmp_path, module, env={"APP_SCHEMA": "two"})
    assert changed["built"] and "schema='two'" in json.dumps(changed["nodes"])
    again = _graph(tmp_path, module, env={"APP_SCHEMA": "two"})
    assert not again["built"] and _same_graph(again, changed)


def test_a_method_written_outside_the_library_is_never_cached(tmp_path: Path) -> None:
    """It may read anything (here the environment, at every call): such classes are built every time."""
    module = tmp_path / "views_e.py"
    module.write_text(
        "import os\n"
        + MODULE
        + textwrap.dedent(
            """
            class dynamic(SamizdatView):
                @classmethod
                def create(cls):
                    return f"CREATE VIEW {cls.db_object_identity} AS SELECT {os.environ['VALUE']} AS v"
            """
        ).replace("class dynamic(SamizdatView):", 'class dynamic(SamizdatView):\n    sql_template = "unused"')
    )
    first = _graph(tmp_path, module, env={"VALUE": "1"})
    assert first["built"] and not _caches(tmp_path)
    changed = _graph(tmp_path, module, env={"VALUE": "2"})
    assert changed["built"] and "SELECT 2 AS v" in json.dumps(changed["nodes"])


def test_a_value_of_another_type_is_never_cached(tmp_path: Path) -> None:
    module = tmp_path / "views_f.py"
    module.write_text(MODULE + "\nclass Opaque:\n    pass\n\nbase.extra = Opaque()\n")
    assert _graph(tmp_path, module)["built"]
    assert not _caches(tmp_path)


def test_another_library_version_builds_again(tmp_path: Path) -> None:
    module = tmp_path / "views_g.py"
    module.write_text(MODULE)
    _graph(tmp_path, module)
    (cache,) = _caches(tmp_path)
    data = cache.read_bytes()
    # The file of a library whose code differs: same format, another fingerprint.
    header = data.index(b"\n") + 1
    cache.write_bytes(data[:header] + bytes(32) + data[header + 32 :])
    assert _graph(tmp_path, module)["built"]


def test_a_tampered_file_is_never_executed(tmp_path: Path) -> None:
    module = tmp_path / "views_h.py"
    module.write_text(MODULE)
    _graph(tmp_path, module)
    (cache,) = _caches(tmp_path)
    data = cache.read_bytes()
    header = data.index(b"\n") + 1 + 32

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    import pickle

    cache.write_bytes(data[:header] + pickle.dumps(Evil()))
    result = _graph(tmp_path, module)
    assert result["built"] and not (tmp_path / "pwned").exists()
    assert _same_graph(result, _fresh(tmp_path, module))
    cache.write_bytes(data[:header] + b"garbage")
    assert _graph(tmp_path, module)["built"]


def test_fingerprint_follows_class_contents() -> None:
    class cached_a(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble}"

    before = fingerprint([cached_a])
    assert before is not None and fingerprint([cached_a]) == before
    cached_a.sql_template = "${preamble} SELECT 2 ${postamble}"
    assert fingerprint([cached_a]) not in (None, before)
    cached_a.deps_on = {"x"}  # type: ignore[assignment]
    after = fingerprint([cached_a])
    cached_a.deps_on.add("y")  # type: ignore[attr-defined]
    assert fingerprint([cached_a]) != after


@pytest.mark.parametrize("value", [object(), lambda: 1, [object()]])
def test_fingerprint_refuses_what_it_cannot_compare(value: object) -> None:
    class cached_b(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble}"

    cached_b.something = value  # type: ignore[attr-defined]
    assert fingerprint([cached_b]) is None


def test_a_library_function_replaced_at_run_time_is_never_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic_samizdat import template

    class cached_c(SamizdatView):
        sql_template = "${preamble} SELECT 1 ${postamble}"

    assert fingerprint([cached_c]) is not None
    monkeypatch.setattr(template, "render", lambda *args, **kwargs: "CREATE VIEW x AS SELECT 2")
    assert fingerprint([cached_c]) is None

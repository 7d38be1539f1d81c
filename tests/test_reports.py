"""``--format json`` reports (validated against the shipped JSON Schema), ``samizdat explain`` and ``samizdat deps``,
on a real PostgreSQL."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import sqlalchemy as sa
from helpers import unique_role

from alembic_samizdat import report
from alembic_samizdat.cli import main

V1 = '''
from alembic_samizdat import SamizdatView, SamizdatMaterializedView, SamizdatFunction

class Lines(SamizdatView):
    deps_on_unmanaged = {"orders"}
    sql_template = """${preamble} SELECT id, customer, amount FROM orders ${postamble}"""

class CustomerTotals(SamizdatMaterializedView):
    deps_on = {Lines}
    sql_template = """${preamble} SELECT customer, sum(amount) AS total FROM "Lines" GROUP BY customer ${postamble}"""

class double_it(SamizdatFunction):
    function_arguments_signature = "x integer"
    sql_template = """${preamble} RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 2 * x $$"""
'''


def write(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


@pytest.fixture
def orders(engine: sa.Engine) -> sa.Engine:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE orders (id int PRIMARY KEY, customer text, amount int, note text);"
            "INSERT INTO orders VALUES (1, 'a', 5, ''), (2, 'a', 7, ''), (3, 'b', 1, '')"
        )
    return engine


def run_json(capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0) -> dict[str, Any]:
    code = main([*argv, "--format", "json"])
    captured = capsys.readouterr()
    assert code == expect, captured.err
    doc: dict[str, Any] = json.loads(captured.out)  # exactly one document: progress went to stderr
    jsonschema.validate(doc, report.schema())
    assert doc["exit_code"] == expect
    return doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {o["identity"]["name"]: o for o in doc["objects"]}


def test_schema_is_shipped_and_valid() -> None:
    schema = report.schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["version"]["const"] == report.VERSION


def test_json_diff_sync_dryrun_and_change(
    orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = write(tmp_path, "shop_v1", V1)
    doc = run_json(capsys, "diff", db_url, v1, expect=102)
    objects = by_name(doc)
    assert {o["action"] for o in doc["objects"]} == {"create"}
    assert objects["Lines"]["difference"] == "missing_from_database"
    assert objects["Lines"]["new_sql"] is not None and "FROM orders" in objects["Lines"]["new_sql"]
    assert objects["Lines"]["old_sql"] is None
    assert objects["double_it"]["identity"]["extra"] == "x integer"

    dry = run_json(capsys, "sync", "-t", "dryrun", db_url, v1)
    assert dry["dry_run"] is True and dry["committed"] is False
    totals = by_name(dry)["CustomerTotals"]
    assert [s["verb"] for s in totals["steps"]] == ["create", "refresh"]
    assert all(s["applied"] for s in totals["steps"])
    run_json(capsys, "diff", db_url, v1, expect=102)  # the dry run changed nothing

    done = run_json(capsys, "sync", db_url, v1)
    assert done["committed"] is True and done["dry_run"] is False
    assert run_json(capsys, "diff", db_url, v1)["objects"] == []
    assert run_json(capsys, "sync", db_url, v1)["objects"] == []

    # Lines changes a column's type (PostgreSQL cannot replace it in place): it is recreated, and CustomerTotals
    # with it because it reads Lines.
    v2 = write(
        tmp_path,
        "shop_v2",
        V1.replace(
            "SELECT id, customer, amount FROM orders", "SELECT id, customer, amount::bigint AS amount FROM orders"
        ),
    )
    doc = run_json(capsys, "diff", db_url, v2, expect=103)
    lines = by_name(doc)["Lines"]
    assert lines["action"] == "recreate" and lines["difference"] == "changed"
    assert "amount::bigint" not in lines["old_sql"] and "amount::bigint" in lines["new_sql"]
    plan = run_json(capsys, "sync", "-t", "dryrun", db_url, v2)
    objects = by_name(plan)
    assert objects["Lines"]["action"] == "recreate"
    assert objects["CustomerTotals"]["action"] == "recreate"
    assert objects["CustomerTotals"]["difference"] is None
    assert objects["CustomerTotals"]["cause"] == '"public"."Lines"'
    assert '"public"."Lines" changed' in objects["CustomerTotals"]["reason"]
    assert objects["CustomerTotals"]["old_sql"] == objects["CustomerTotals"]["new_sql"]
    assert [s["verb"] for s in objects["Lines"]["steps"]] == ["drop", "create"]


def test_json_old_sql_only_from_trusted_signatures(
    orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signature copied onto another role's object is not ours: its "sql" never reaches the report."""
    v1 = write(tmp_path, "shop_t", V1)
    # Roles are server-wide: names of this run only.
    stranger, runner_role = unique_role("report_stranger"), unique_role("report_runner")
    assert main(["sync", "-q", db_url, v1]) == 0
    with orders.begin() as conn:
        comment = conn.exec_driver_sql("SELECT obj_description('\"Lines\"'::regclass, 'pg_class')").scalar()
        assert isinstance(comment, str)
        planted = json.loads(comment)
        planted["key"] = ["relation", "public", "Planted", ""]
        planted["sql"] = "DROP TABLE orders"
        conn.exec_driver_sql(f"CREATE ROLE \"{stranger}\" LOGIN PASSWORD 'x'")
        conn.exec_driver_sql('CREATE VIEW "Planted" AS SELECT 1 AS one')
        conn.exec_driver_sql('COMMENT ON VIEW "Planted" IS ' + "'" + json.dumps(planted).replace("'", "''") + "'")
        conn.exec_driver_sql(f'ALTER VIEW "Planted" OWNER TO "{stranger}"')
        conn.exec_driver_sql(f"CREATE ROLE \"{runner_role}\" LOGIN PASSWORD 'runner'")
    runner = sa.make_url(db_url).set(username=runner_role, password="runner")
    try:
        # A superuser has every role's privileges, so the object would count as ours: read as a plain role that
        # trusts the deployer only.
        as_runner = ["diff", "--trust-owner", orders.url.username or "postgres", runner.render_as_string(False), v1]
        doc = run_json(capsys, *as_runner)
        assert "DROP TABLE orders" not in json.dumps(doc)
        assert doc["objects"] == []
        # The superuser does have the stranger's privileges: then it is ours, and dropping it is what sync would do.
        mine = run_json(capsys, "diff", db_url, v1, expect=101)
        assert by_name(mine)["Planted"]["action"] == "drop"
    finally:
        with orders.begin() as conn:
            conn.exec_driver_sql('DROP VIEW "Planted"')
            conn.exec_driver_sql(f'DROP ROLE "{stranger}"')
            conn.exec_driver_sql(f'DROP ROLE "{runner_role}"')


def test_json_refresh_nuke_and_adopt(
    orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = write(tmp_path, "shop_r", V1)
    assert main(["sync", "-q", db_url, v1]) == 0
    capsys.readouterr()
    doc = run_json(capsys, "refresh", db_url, v1)
    assert [(o["identity"]["name"], o["action"]) for o in doc["objects"]] == [("CustomerTotals", "refresh")]
    assert doc["objects"][0]["concurrently"] is False

    # Adopt: an unsigned object with the declared definition is signed; one that differs is refused.
    with orders.begin() as conn:
        conn.exec_driver_sql('CREATE VIEW "Extra" AS SELECT 1 AS one')
    extra = (
        V1
        + '''
class Extra(SamizdatView):
    sql_template = """${preamble} SELECT 1 AS one ${postamble}"""

class Later(SamizdatView):
    sql_template = """${preamble} SELECT 2 AS two ${postamble}"""
'''
    )
    v_extra = write(tmp_path, "shop_extra", extra)
    doc = run_json(capsys, "adopt", db_url, v_extra)
    actions = {o["identity"]["name"]: o["action"] for o in doc["objects"]}
    assert actions == {"Extra": "adopt", "Later": "none"}

    with orders.begin() as conn:
        conn.exec_driver_sql('CREATE VIEW "Other" AS SELECT 3 AS three')
    other = (
        extra
        + '''
class Other(SamizdatView):
    sql_template = """${preamble} SELECT 4 AS three ${postamble}"""
'''
    )
    v_other = write(tmp_path, "shop_other", other)
    refused = run_json(capsys, "adopt", db_url, v_other, expect=1)
    (entry,) = refused["objects"]
    assert entry["action"] == "refused" and entry["identity"]["name"] == "Other" and "4" in entry["diff"]
    with orders.begin() as conn:
        conn.exec_driver_sql('DROP VIEW "Other"')

    nuked = run_json(capsys, "nuke", db_url, v1)
    assert {o["identity"]["name"] for o in nuked["objects"]} == {"Lines", "CustomerTotals", "double_it", "Extra"}
    assert all(o["action"] == "drop" and o["old_sql"] for o in nuked["objects"])
    assert nuked["committed"] is True
    with orders.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_views WHERE viewname = 'Lines'").scalar() == 0


def test_json_refuses_sql_on_stdout(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = write(tmp_path, "shop_m", V1)
    assert main(["sync", "-t", "dryrun", "-m", "-", db_url, v1, "--format", "json"]) == 2
    assert "-m plan.sql" in capsys.readouterr().err


def test_explain(orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = write(tmp_path, "shop_e1", V1)
    assert main(["explain", db_url, v1]) == 0
    out = capsys.readouterr().out
    assert 'view "public"."Lines" (shop_e1.Lines) is created\n  because missing from the database' in out
    assert main(["sync", "-q", db_url, v1]) == 0
    capsys.readouterr()
    assert main(["explain", db_url, v1]) == 0
    assert "nothing to do" in capsys.readouterr().out

    v2 = write(
        tmp_path,
        "shop_e2",
        V1.replace("amount FROM orders", "amount::bigint * 2 AS amount FROM orders")
        .replace("class double_it", "class _gone")
        .replace("SamizdatFunction):", "SamizdatFunction):\n    __abstract__ = True"),
    )
    assert main(["explain", db_url, v2]) == 0
    out = capsys.readouterr().out
    assert "is recreated\n  because its declaration changed" in out
    assert "\n    -" in out and "amount::bigint * 2 AS amount FROM orders" in out
    assert 'matview "public"."CustomerTotals" (shop_e2.CustomerTotals) is recreated' in out
    assert 'because "public"."Lines" changed (it depends on "public"."Lines")' in out
    assert 'it reads "public"."Lines"' in out
    assert (
        'function "public"."double_it"(x integer) (no longer declared) is dropped\n  because no longer declared' in out
    )
    # Only the objects asked about.
    assert main(["explain", db_url, v2, "CustomerTotals"]) == 0
    only = capsys.readouterr().out
    assert "CustomerTotals" in only and "double_it" not in only and "--- " not in only

    # Drift: the same reasons reach `sync` output.
    with orders.begin() as conn:
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION double_it(x integer) RETURNS integer LANGUAGE sql IMMUTABLE AS $$ SELECT 3 * x $$"
        )
    assert main(["explain", db_url, v1]) == 0
    assert "because changed by hand in the database since it was signed (drift)" in capsys.readouterr().out
    assert main(["sync", "-v", db_url, v1]) == 0
    assert "changed by hand since it was signed" in capsys.readouterr().out


def test_explain_unified_diff(
    orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = write(tmp_path, "shop_d1", V1)
    assert main(["sync", "-q", db_url, v1]) == 0
    v2 = write(tmp_path, "shop_d2", V1.replace("GROUP BY customer", "WHERE total > 0 GROUP BY customer"))
    capsys.readouterr()
    assert main(["explain", db_url, v2, "public.CustomerTotals"]) == 0
    out = capsys.readouterr().out
    assert '--- "public"."CustomerTotals" (database)' in out
    assert '+++ "public"."CustomerTotals" (declared)' in out
    minus = [line.strip() for line in out.splitlines() if line.strip().startswith("-") and "GROUP BY" in line]
    plus = [line.strip() for line in out.splitlines() if line.strip().startswith("+") and "GROUP BY" in line]
    assert minus and "WHERE total" not in minus[0]
    assert plus and "WHERE total > 0" in plus[0]


def test_explain_grants(orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    v1 = write(tmp_path, "shop_g1", V1)
    assert main(["sync", "-q", db_url, v1]) == 0
    granted = V1.replace(
        "class Lines(SamizdatView):", 'class Lines(SamizdatView):\n    grants = {"PUBLIC": ["SELECT"]}'
    )
    v2 = write(tmp_path, "shop_g2", granted)
    capsys.readouterr()
    assert main(["explain", db_url, v2]) == 0
    assert capsys.readouterr().out == (
        'view "public"."Lines" (shop_g2.Lines) is re-granted\n'
        "  because grants differ: declared SELECT to PUBLIC; in the database none\n"
    )
    assert main(["explain", db_url, v2, "CustomerTotals"]) == 0
    assert capsys.readouterr().out == "none of these objects is touched by the next sync\n"


def test_deps_declared_and_catalog(
    orders: sa.Engine, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1 = write(tmp_path, "shop_l", V1)
    # Declarations only.
    assert main(["deps", "CustomerTotals", v1]) == 0
    out = capsys.readouterr().out
    assert '"public"."Lines" (view, shop_l.Lines)' in out and '"public"."orders" (table)' in out
    assert main(["deps", "orders", v1, "--down", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert '"public"."Lines"' in out and "CustomerTotals" not in out

    assert main(["sync", "-q", db_url, v1]) == 0
    with orders.begin() as conn:
        # An unmanaged view reading the managed one: only the catalog knows it.
        conn.exec_driver_sql('CREATE VIEW big_customers AS SELECT customer FROM "CustomerTotals" WHERE total > 5')
        # A trigger on the table: found under the table, and its name does not make "orders" ambiguous.
        conn.exec_driver_sql(
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;"
            "CREATE TRIGGER orders_touch BEFORE INSERT ON orders FOR EACH ROW EXECUTE FUNCTION touch()"
        )
        # A function whose body PostgreSQL parsed (BEGIN ATOMIC) records what it reads.
        conn.exec_driver_sql(
            'CREATE FUNCTION all_amounts() RETURNS bigint LANGUAGE sql BEGIN ATOMIC SELECT sum(amount) FROM "Lines"; END'
        )
    capsys.readouterr()
    assert main(["deps", "orders", db_url, v1, "--down", "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    edges = {(e["reader"], e["reads"]): e for e in doc["edges"]}
    lines_orders = edges[('"public"."Lines"', '"public"."orders"')]
    assert lines_orders["columns"] == ["amount", "customer", "id"]  # "note" is not read
    assert lines_orders["source"] == ["catalog", "declared"]
    assert ('"public"."big_customers"', '"public"."CustomerTotals"') in edges
    kinds = {n["name"]: n["kind"] for n in doc["nodes"]}
    assert kinds['"public"."big_customers"'] == "view"
    assert kinds['"public"."all_amounts"()'] == "function"
    assert ('"public"."all_amounts"()', '"public"."Lines"') in edges
    assert ('"orders_touch" ON "public"."orders"', '"public"."orders"') in edges
    assert kinds['"orders_touch" ON "public"."orders"'] == "trigger"

    # From the catalog alone (no modules): the same chain.
    assert main(["deps", "public.big_customers", db_url, "--up"]) == 0
    out = capsys.readouterr().out
    assert (
        '"public"."CustomerTotals" (matview)' in out
        and '"public"."orders" (table) [columns: amount, customer, id]' in out
    )

    assert main(["deps", "Lines", db_url, v1, "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph lineage {") and '"\\"public\\".\\"orders\\"" -> "\\"public\\".\\"Lines\\""' in dot

    assert main(["deps", "nosuch", v1]) == 1
    assert "no object 'nosuch'" in capsys.readouterr().err


MODELS = '''
import sqlalchemy as sa
from helpers import unique_role
from alembic_samizdat import SamizdatMaterializedView, SamizdatRegistry, SamizdatView

metadata = sa.MetaData()
sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("amount", sa.Integer))
registry = SamizdatRegistry(metadata)


@registry.register
class Lines(SamizdatView):
    deps_on_unmanaged = {"orders"}
    GRANTS
    sql_template = """${preamble} SELECT id, amount FROM orders ${postamble}"""


@registry.register
class Totals(SamizdatMaterializedView):
    deps_on = {Lines}
    sql_template = """${preamble} SELECT sum(amount) AS total FROM "Lines" ${postamble}"""
'''


def test_autogenerated_revisions_say_why_above_each_operation(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from alembic import command
    from helpers import alembic_project

    monkeypatch.setenv("DATABASE_URL", db_url)
    cfg = alembic_project(tmp_path, "reasons_models")
    models = tmp_path / "reasons_models.py"
    versions = tmp_path / "migrations" / "versions"

    def revision(source: str, message: str) -> list[str]:
        models.write_text(source)
        sys.modules.pop("reasons_models", None)
        try:
            command.revision(cfg, message=message, autogenerate=True, rev_id=message)
            command.upgrade(cfg, "head")
        finally:
            sys.modules.pop("reasons_models", None)
        (path,) = versions.glob(f"{message}_*.py")
        upgrade = path.read_text().split("def upgrade()")[1].split("def downgrade()")[0]
        return [line.strip() for line in upgrade.splitlines() if line.strip()]

    def comment_above(lines: list[str], operation: str, name: str) -> str:
        for index, line in enumerate(lines):
            if (
                line.startswith(f"op.{operation}(")
                and index + 2 < len(lines)
                and name in " ".join(lines[index : index + 3])
            ):
                above = lines[index - 1]
                assert above.startswith("# "), (operation, name, lines[index - 3 : index + 3])
                return above
        raise AssertionError(f"no {operation} of {name} in {lines}")

    first = revision(MODELS.replace("GRANTS", ""), "one")
    assert comment_above(first, "create_samizdat", '"public"."Lines"') == "# missing from the database"

    changed = MODELS.replace("GRANTS", "").replace(
        "SELECT id, amount FROM orders", "SELECT id, amount::bigint AS amount FROM orders"
    )  # a new column type: PostgreSQL cannot replace the view in place, so the stack is rebuilt
    second = revision(changed, "two")
    assert comment_above(second, "drop_samizdat", '"public"."Lines"').startswith(
        "# changed; recreated because PostgreSQL refused to replace it in place (cannot change data type"
    )
    assert comment_above(second, "create_samizdat", '"public"."Totals"') == (
        '# recreated because "public"."Lines" changed (it depends on "public"."Lines")'
    )

    granted = MODELS.replace("GRANTS", 'grants = {"PUBLIC": ["SELECT"]}').replace(
        "SELECT id, amount FROM orders", "SELECT id, amount::bigint AS amount FROM orders"
    )
    third = revision(granted, "three")
    assert comment_above(third, "regrant_samizdat", '"public"."Lines"') == "# grants differ"

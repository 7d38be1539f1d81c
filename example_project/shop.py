"""A small shop: two tables (SQLAlchemy Core) and a stack of samizdats on top of them.

``samizdat sync example_project/shop.py`` with no database URL runs this on a throwaway PostgreSQL: the
tables of ``metadata`` are created (with a few demo rows), then the samizdats.
"""

from decimal import Decimal

from sqlalchemy import DDL, Column, ForeignKey, Integer, MetaData, Numeric, String, Table, event
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alembic_samizdat import (
    SamizdatFunction,
    SamizdatMaterializedView,
    SamizdatRegistry,
    SamizdatTrigger,
    SamizdatView,
)

metadata = MetaData()
registry = SamizdatRegistry(metadata)

customers = Table(
    "customers",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("country", String(2), nullable=False),
)
orders = Table(
    "orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer_id", ForeignKey("customers.id"), nullable=False),
    Column("amount", Numeric(10, 2), nullable=False),
)

# Demo rows, so that the views show something on a throwaway database.
event.listen(customers, "after_create", DDL("INSERT INTO customers VALUES (1, 'Ada', 'NL'), (2, 'Linus', 'FI')"))
event.listen(orders, "after_create", DDL("INSERT INTO orders VALUES (1, 1, 10.50), (2, 1, 4.50), (3, 2, 99)"))


@registry.register
class with_vat(SamizdatFunction):
    """Gross amount; the body uses $$ quoting and $1 exactly as PostgreSQL wants them."""

    function_arguments_signature = "amount numeric"
    sql_template = """
        ${preamble}
        RETURNS numeric LANGUAGE sql IMMUTABLE AS $$ SELECT round($1 * 1.21, 2) $$
    """


@registry.register
class OrderLines(SamizdatView):
    deps_on = {with_vat}
    deps_on_unmanaged = {"orders", "customers"}
    sql_template = """
        ${preamble}
        SELECT o.id, c.name AS customer, c.country, o.amount, public.with_vat(o.amount) AS gross
        FROM orders o JOIN customers c ON c.id = o.customer_id
        ${postamble}
    """


@registry.register
class CustomerTotals(SamizdatMaterializedView):
    """Refreshed automatically whenever orders or customers change."""

    deps_on = {OrderLines}
    refresh_concurrently = True
    refresh_triggers = {"orders", "customers"}
    sql_template = """
        ${preamble}
        SELECT customer, count(*) AS orders, sum(gross) AS gross FROM "OrderLines" GROUP BY customer
        ${postamble}
        CREATE UNIQUE INDEX ON ${samizdatname} (customer)
    """


@registry.register
class CountryTotals(SamizdatMaterializedView):
    deps_on = {CustomerTotals, OrderLines}
    refresh_triggers = {"orders", "customers"}
    sql_template = """
        ${preamble}
        SELECT l.country, sum(t.gross) AS gross
        FROM "CustomerTotals" t JOIN (SELECT DISTINCT customer, country FROM "OrderLines") l USING (customer)
        GROUP BY l.country
        ${postamble}
    """


@registry.register
class check_amount(SamizdatFunction):
    sql_template = """
        ${preamble}
        RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.amount < 0 THEN
                RAISE EXCEPTION 'order % has a negative amount', NEW.id;
            END IF;
            RETURN NEW;
        END
        $$
    """


@registry.register
class OrdersCheckAmount(SamizdatTrigger):
    on_table = "orders"
    condition = "BEFORE INSERT OR UPDATE"
    deps_on = {check_amount}
    sql_template = """${preamble} FOR EACH ROW EXECUTE FUNCTION public.check_amount()"""


class Base(DeclarativeBase):
    metadata = metadata


class CustomerTotal(Base):
    """An ORM model reading the CustomerTotals materialized view: no table is ever created for it."""

    __tablename__ = CustomerTotals.__name__

    customer: Mapped[str] = mapped_column(primary_key=True)
    orders: Mapped[int]
    gross: Mapped[Decimal]

    def __repr__(self) -> str:
        return f"CustomerTotal(customer={self.customer!r}, orders={self.orders!r}, gross={self.gross!r})"

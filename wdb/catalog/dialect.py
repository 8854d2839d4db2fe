"""The few SQL constructs that differ between DuckDB and PostgreSQL, in one place.

Everything else wdb sends to its catalog is plain SQL both understand (or SQLAlchemy Core). What
differs, and is therefore only ever written through this module:

- **id lists as bound parameters** (never pasted literals): DuckDB ``x IN (SELECT
  unnest(CAST(:ids AS BIGINT[])))``, PostgreSQL ``x = ANY(CAST(:ids AS BIGINT[]))``;
- **JSON access** to the catalog's JSON text columns (``runs.config``, ``generator_runs.config``
  and ``train_ids``): DuckDB's ``json_extract_string`` / ``from_json`` vs PostgreSQL's ``->>`` /
  ``jsonb_array_elements_text``;
- **replacing a table from a query**: DuckDB ``CREATE OR REPLACE TABLE``; PostgreSQL has no such
  statement, so ``DROP TABLE IF EXISTS`` + ``CREATE TABLE ... AS`` in one transaction;
- **bulk inserts**: DuckDB inserts thousands of rows ~10x faster as one ``INSERT ... SELECT
  unnest(list)``; PostgreSQL takes SQLAlchemy's ``executemany`` (psycopg pipelines it).

Each function takes anything with a ``catalog`` (a ``Database``) or a ``Catalog`` itself.
"""

from __future__ import annotations

from typing import Any


def name(db_or_catalog: Any) -> str:
    """``"duckdb"`` or ``"postgresql"`` (or another SQLAlchemy dialect name); given a database,
    a catalog, or that name itself."""
    if isinstance(db_or_catalog, str):
        return db_or_catalog
    catalog = getattr(db_or_catalog, "catalog", db_or_catalog)
    return catalog.dialect


def is_duckdb(db_or_catalog: Any) -> bool:
    return name(db_or_catalog) == "duckdb"


def in_list(db_or_catalog: Any, column: str, param: str = "ids", sql_type: str = "BIGINT") -> str:
    """``column`` is one of the values bound to ``:param`` (a Python list)."""
    if is_duckdb(db_or_catalog):
        return f"{column} IN (SELECT unnest(CAST(:{param} AS {sql_type}[])))"
    return f"{column} = ANY(CAST(:{param} AS {sql_type}[]))"


def json_text(db_or_catalog: Any, expr: str, key: str) -> str:
    """The text value of top-level ``key`` in the JSON text ``expr`` (NULL when absent)."""
    if not key.replace("_", "").isalnum():
        raise ValueError(f"JSON key {key!r} must be a plain identifier")
    if is_duckdb(db_or_catalog):
        return f"json_extract_string({expr}, '$.{key}')"
    return f"(CAST({expr} AS jsonb) ->> '{key}')"


def json_ids(db_or_catalog: Any, expr: str, source: str) -> str:
    """A subquery of the BIGINTs in the JSON list ``expr`` of the rows of ``source`` (a FROM
    clause, e.g. ``generator_runs g WHERE g.id = 7``)."""
    if is_duckdb(db_or_catalog):
        return f"(SELECT unnest(from_json({expr}, '[\"BIGINT\"]')) FROM {source})"
    return (
        f"(SELECT CAST(jsonb_array_elements_text(CAST({expr} AS jsonb)) AS BIGINT) FROM {source})"
    )


def replace_table_sql(db_or_catalog: Any, table: str, select_sql: str) -> list[str]:
    """Statements that replace ``table`` with the result of ``select_sql`` (run them in one
    transaction)."""
    if is_duckdb(db_or_catalog):
        return [f"CREATE OR REPLACE TABLE {table} AS {select_sql}"]
    return [f"DROP TABLE IF EXISTS {table}", f"CREATE TABLE {table} AS {select_sql}"]


def insert_many(conn: Any, table: Any, rows: list[dict]) -> None:
    """Insert ``rows`` (dicts with the same keys) into SQLAlchemy ``table`` on ``conn``."""
    import sqlalchemy as sa

    if not rows:
        return
    if conn.dialect.name != "duckdb" or len(rows) == 1:
        conn.execute(table.insert(), rows)
        return
    cols = list(rows[0])
    types = {c: table.c[c].type.compile(dialect=conn.dialect) for c in cols}
    select = ", ".join(f"unnest(CAST(:{c} AS {types[c]}[]))" for c in cols)
    conn.execute(
        sa.text(f"INSERT INTO {table.name} ({', '.join(cols)}) SELECT {select}"),
        {c: [r[c] for r in rows] for c in cols},
    )


def next_ids(conn: Any, sequence: str, n: int) -> list[int]:
    """``n`` fresh values of a sequence in one round trip (ascending)."""
    import sqlalchemy as sa

    if n == 0:
        return []
    rows = conn.execute(
        sa.text(f"SELECT nextval('{sequence}') FROM generate_series(1, :n)"), {"n": n}
    )
    return sorted(int(r[0]) for r in rows)

"""Alembic environment for the wdb catalog.

wdb runs migrations in-process (``wdb.catalog.connect.upgrade``) and hands its connection over through
``config.attributes["connection"]``. Run by hand, ``sqlalchemy.url`` (or ``WDB_CATALOG_URL``) is used.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from alembic import context
from alembic.ddl.impl import DefaultImpl
from sqlalchemy.pool import NullPool


class DuckDBImpl(DefaultImpl):
    """Alembic has no DuckDB dialect impl; DuckDB's DDL is close enough to the default one."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def run_migrations() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = context.config.get_main_option("sqlalchemy.url") or os.environ["WDB_CATALOG_URL"]
    engine = sa.create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()

"""Which catalog the suite runs on: DuckDB by default, a real PostgreSQL server on the
PostgreSQL run (``WDB_TEST_CATALOG=postgresql``, see ``tests/pgserver.py``)."""

from __future__ import annotations

import wdb
from tests.conftest import ON_POSTGRES
from wdb.catalog.schema import SCHEMA_HEAD


def test_the_suite_runs_on_the_catalog_it_says(tmp_path):
    db = wdb.open(tmp_path / "db")
    assert db.catalog.dialect == ("postgresql" if ON_POSTGRES else "duckdb")
    assert (tmp_path / "db" / "catalog.duckdb").exists() != ON_POSTGRES
    assert db.catalog.current_revision() == SCHEMA_HEAD
    (row,) = db.sql("SELECT version() AS v")
    assert ("PostgreSQL" in row["v"]) == ON_POSTGRES

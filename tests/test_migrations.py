"""Catalog schema: Alembic revisions, upgrades that keep data, and refusal of newer databases."""

from __future__ import annotations

import os

import numpy as np
import pytest

import wdb
from wdb.catalog.connect import Catalog, migrations_dir
from wdb.catalog.schema import SCHEMA_HEAD, metadata
from wdb.db import Database
from wdb.errors import SchemaError
from wdb.store.spaces import Layout


def _script():
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(migrations_dir()))


def test_schema_head_constant_matches_alembic():
    assert _script().get_current_head() == SCHEMA_HEAD


def test_tables_created_by_migrations_match_schema_module(db):
    cols = db.sql(
        "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
    )
    created: dict[str, set[str]] = {}
    for r in cols:
        created.setdefault(r["table_name"], set()).add(r["column_name"])
    for name, table in metadata.tables.items():
        assert name in created, f"table {name} not created by migrations"
        assert {c.name for c in table.columns} == created[name], name


def test_upgrade_from_first_revision_keeps_every_row(tmp_path):
    path = tmp_path / "old"
    path.mkdir()
    cat = Catalog(os.environ.get("WDB_CATALOG_URL") or f"duckdb:///{path / 'catalog.duckdb'}")
    first = [r.revision for r in _script().walk_revisions()][-1]
    cat.upgrade(first)
    assert cat.current_revision() == first

    # populate the first-revision schema through the store, as an old wdb would have
    old = Database(path)
    layout = Layout.from_arrays({"w": np.zeros((3, 3), np.float32), "b": np.zeros(3, np.float32)})
    rows = np.random.default_rng(1).standard_normal((10, 12)).astype(np.float32)
    ids = old.add_checkpoints(layout, rows, run="old_run", kind="training", zoo="z")
    old.add_checkpoints(layout, rows[:2] + 5, kind="generated")
    before = {
        t: old.sql(f"SELECT * FROM {t} ORDER BY id") for t in ("spaces", "runs", "checkpoints")
    }

    db = wdb.open(path)  # opening upgrades
    assert db.catalog.current_revision() == SCHEMA_HEAD
    for table, rows_before in before.items():
        after = db.sql(f"SELECT * FROM {table} ORDER BY id")
        assert [{k: r[k] for k in rows_before[0]} for r in after] == rows_before, table
    np.testing.assert_array_equal(db.weights(ids), rows)
    assert len(db.checkpoints()) == 12
    # the new tables work on the upgraded database
    db.add_metrics([{"checkpoint_id": ids[0], "eval_set_id": 1, "name": "accuracy", "value": 0.5}])


def test_downgrade_then_upgrade_round_trips(db):
    first = [r.revision for r in _script().walk_revisions()][-1]
    db.catalog.downgrade(first)
    assert db.catalog.current_revision() == first
    db.catalog.upgrade("head")
    assert db.catalog.current_revision() == SCHEMA_HEAD


def test_newer_database_is_refused_with_a_clear_message(db):
    db.sql("UPDATE alembic_version SET version_num = '9999_future'", write=True)
    with pytest.raises(SchemaError, match="newer than this wdb"):
        wdb.open(db.path)

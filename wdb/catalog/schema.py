"""The catalog schema as SQLAlchemy Core tables: the one home of every table's shape.

Users write SQL against these tables, so their column names are a public interface. The tables
are *created* by the hand-written Alembic revisions in ``migrations/`` (reflection and
autogenerate do not work with duckdb-engine, see STACK.md); these objects are what the code uses
to read and write them, and a test checks that both agree.

Primary keys use explicit sequences (``server_default=nextval``): DuckDB supports neither
``IDENTITY`` nor ``SERIAL``, and the same DDL works on PostgreSQL.
"""

from __future__ import annotations

import sqlalchemy as sa

from wdb.catalog.connect import SCHEMA_HEAD  # noqa: F401  (re-exported: the revision these tables are at)

metadata = sa.MetaData()


def _id(table: str) -> sa.Column:
    seq = sa.Sequence(f"{table}_id_seq", metadata=metadata)
    return sa.Column("id", sa.BigInteger, seq, server_default=seq.next_value(), primary_key=True)


def _now() -> sa.Column:
    return sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp())


spaces = sa.Table(
    "spaces",
    metadata,
    _id("spaces"),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("hash", sa.Text, nullable=False, unique=True),
    sa.Column("n_params", sa.BigInteger, nullable=False),
    sa.Column("dtype", sa.Text, nullable=False),  # storage dtype of the Zarr array
    sa.Column("layout", sa.Text, nullable=False),  # JSON list of {name, shape, dtype, offset}
    sa.Column("array_path", sa.Text, nullable=False),
    _now(),
)

generator_runs = sa.Table(
    "generator_runs",
    metadata,
    _id("generator_runs"),
    sa.Column("method", sa.Text, nullable=False),
    sa.Column("config", sa.Text),  # JSON: the full resolved config
    sa.Column("status", sa.Text, nullable=False),  # running | done | failed
    sa.Column("train_selection", sa.Text),  # the SQL filter the training set came from
    sa.Column("train_ids", sa.Text),  # JSON list of the exact checkpoint ids trained on
    sa.Column("seed", sa.BigInteger),
    sa.Column("code_version", sa.Text),
    sa.Column("wall_time_s", sa.Double),
    sa.Column("model_checkpoint_id", sa.BigInteger),  # the generator's own network, if stored
    sa.Column("error", sa.Text),
    _now(),
    sa.Column("finished_at", sa.DateTime),
)

runs = sa.Table(
    "runs",
    metadata,
    _id("runs"),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("zoo", sa.Text),
    sa.Column("kind", sa.Text, nullable=False),  # training|generated|baseline|reconstructed|model
    sa.Column("generator_run_id", sa.BigInteger),
    sa.Column("config", sa.Text),  # JSON
    sa.Column("source", sa.Text),  # where it was ingested from
    _now(),
    sa.Column("note", sa.Text),  # free text, `wdb note RUN "..."` (revision 0007)
)

# Free key=value labels on runs (revision 0007): `wdb tag RUN key=value`; view run_info shows them.
run_tags = sa.Table(
    "run_tags",
    metadata,
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("value", sa.Text),
    sa.PrimaryKeyConstraint("run_id", "key"),
)

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    _id("checkpoints"),
    sa.Column("run_id", sa.BigInteger, nullable=False),
    sa.Column("space_id", sa.BigInteger, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("row", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("split", sa.Text),  # train | test | ... when the source says so
    sa.Column("source", sa.Text),
    _now(),
    sa.Column("meta", sa.Text),  # JSON: a source's non-tensor entries (revision 0005)
    # xxh3_128 of each column block of the row, checked on every read (revision 0006;
    # ``wdb.store.verify``)
    sa.Column("chunk_hashes", sa.Text),
    sa.Column("damaged", sa.Text),  # why `wdb fsck --fix` could not restore the bytes (0006)
    sa.UniqueConstraint("run_id", "space_id", "step", name="uq_checkpoint_run_space_step"),
    # (space_id, row) is not unique since revision 0007: equal rows are stored once
)

eval_sets = sa.Table(
    "eval_sets",
    metadata,
    _id("eval_sets"),
    sa.Column("name", sa.Text, nullable=False, unique=True),
    sa.Column("task", sa.Text),
    sa.Column("split", sa.Text),
    sa.Column("n_items", sa.BigInteger),
    sa.Column("labels_sha256", sa.Text),
    _now(),
    sa.Column("task_source", sa.Text),  # the file a task plugin came from (revision 0005)
)

metrics = sa.Table(
    "metrics",
    metadata,
    sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
    sa.Column("eval_set_id", sa.BigInteger, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("value", sa.Double),
    sa.PrimaryKeyConstraint("checkpoint_id", "eval_set_id", "name"),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
    sa.Column("eval_set_id", sa.BigInteger, nullable=False),
    sa.Column(
        "array_path", sa.Text, nullable=False
    ),  # Zarr path under the database's outputs store
    sa.Column("row", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("checkpoint_id", "eval_set_id", "array_path"),
)

# Derived relations (revision 0003): materialised by the query engines, each row tied to the
# computation (``relation_id``) that produced it so stale results can be recognised.
relations = sa.Table(
    "relations",
    metadata,
    _id("relations"),
    sa.Column("kind", sa.Text, nullable=False),  # nearest | novelty | ...
    sa.Column("metric", sa.Text, nullable=False),  # l2 | aligned_l2 | error_iou | chamfer
    sa.Column("space_id", sa.BigInteger),
    sa.Column("target_selection", sa.Text),
    sa.Column("reference_selection", sa.Text),
    sa.Column("reference_fingerprint", sa.Text),  # hash of the reference ids + their sha256
    sa.Column("index_version", sa.Text),
    sa.Column("params", sa.Text),  # JSON
    _now(),
)

neighbors = sa.Table(
    "neighbors",
    metadata,
    sa.Column("relation_id", sa.BigInteger, nullable=False),
    sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("neighbor_id", sa.BigInteger, nullable=False),
    sa.Column("distance", sa.Double, nullable=False),
    sa.PrimaryKeyConstraint("relation_id", "checkpoint_id", "rank"),
)

similarity = sa.Table(
    "similarity",
    metadata,
    sa.Column("relation_id", sa.BigInteger, nullable=False),
    sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
    sa.Column("min_l2", sa.Double),
    sa.Column("nearest_id", sa.BigInteger),
    sa.Column("max_iou", sa.Double),
    sa.Column("max_iou_id", sa.BigInteger),
    sa.Column("accuracy", sa.Double),
    # the nearest reference is the target's prompt/source/parent or derived from it (0009)
    sa.Column("own_lineage", sa.Boolean),
    sa.PrimaryKeyConstraint("relation_id", "checkpoint_id"),
)

# Families of checkpoints (revision 0007, ``wdb.store.family``)
family_rows = sa.Table(
    "family_rows",
    metadata,
    sa.Column("space_id", sa.BigInteger, nullable=False, autoincrement=False),
    sa.Column("row", sa.BigInteger, nullable=False, autoincrement=False),
    sa.Column("parent_row", sa.BigInteger),
    sa.Column("delta_chunks", sa.Text),
    sa.Column("depth", sa.Integer, nullable=False),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("sketch", sa.LargeBinary),
    sa.PrimaryKeyConstraint("space_id", "row"),
)

lineage = sa.Table(
    "lineage",
    metadata,
    sa.Column("child_id", sa.BigInteger, nullable=False, autoincrement=False),
    sa.Column("parent_id", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("distance", sa.Float),
    sa.Column("bytes_saved", sa.BigInteger),
    sa.PrimaryKeyConstraint("child_id"),
)

# Reference sets (revision 0009, ``wdb.study.reference``): the checkpoints a generator run's
# samples are compared against by default (the paper's reference set of its method).
reference_sets = sa.Table(
    "reference_sets",
    metadata,
    sa.Column("generator_run_id", sa.BigInteger, nullable=False, autoincrement=False),
    sa.Column("checkpoint_id", sa.BigInteger, nullable=False, autoincrement=False),
    sa.PrimaryKeyConstraint("generator_run_id", "checkpoint_id"),
)

#: Name → Table, for code that addresses tables by name.
TABLES: dict[str, sa.Table] = dict(metadata.tables)

#: The human view of checkpoints that ``where=`` filters are written against.
CHECKPOINT_INFO_VIEW = """
CREATE VIEW checkpoint_info AS
SELECT c.id AS checkpoint_id, r.name AS run, c.step, r.kind, r.zoo, s.name AS space,
       c.space_id, c.run_id, c.row, c.sha256, c.split, r.generator_run_id, c.source,
       c.created_at, c.damaged
FROM checkpoints c JOIN runs r ON r.id = c.run_id JOIN spaces s ON s.id = c.space_id
"""

"""Verified reads: block hashes every read is checked against, and damaged checkpoints.

- ``checkpoints.chunk_hashes``: ``"<width>:<hex>..."``, the xxh3_128 digest of each
  ``width``-column block of the row as stored (``wdb.store.verify``). Filled on write; NULL for
  rows written before this revision, whose reads fall back to ``sha256`` until ``wdb fsck``
  records their block hashes (the migration sees only the catalog, not the bytes).
- ``checkpoints.damaged``: NULL, or why ``wdb fsck --fix`` could not restore the checkpoint's
  bytes (no source file, or one that no longer hashes to ``sha256``).
- ``checkpoint_info`` gains ``damaged`` as its last column (PostgreSQL's ``CREATE OR REPLACE
  VIEW`` may only append columns; the views built on it keep working).

Revision ID: 0006_verified_reads
Revises: 0005_plugins
"""

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0006_verified_reads"
down_revision = "0005_plugins"
branch_labels = None
depends_on = None

INFO = """
    CREATE OR REPLACE VIEW checkpoint_info AS
    SELECT c.id AS checkpoint_id, r.name AS run, c.step, r.kind, r.zoo, s.name AS space,
           c.space_id, c.run_id, c.row, c.sha256, c.split, r.generator_run_id, c.source,
           c.created_at{extra}
    FROM checkpoints c JOIN runs r ON r.id = c.run_id JOIN spaces s ON s.id = c.space_id
"""

#: 0004's view, as it was created there (the views of 0005 are imported from it)
METRICS_WIDE = """
    CREATE VIEW metrics_wide AS
    SELECT c.checkpoint_id, c.run, c.step, c.kind, c.zoo, c.space, e.name AS eval_set,
           max(CASE WHEN m.name = 'accuracy' THEN m.value END) AS accuracy,
           max(CASE WHEN m.name = 'loss' THEN m.value END) AS loss,
           max(CASE WHEN m.name = 'chamfer' THEN m.value END) AS chamfer
    FROM metrics m
    JOIN eval_sets e ON e.id = m.eval_set_id
    JOIN checkpoint_info c ON c.checkpoint_id = m.checkpoint_id
    GROUP BY c.checkpoint_id, c.run, c.step, c.kind, c.zoo, c.space, e.name
"""


def upgrade() -> None:
    op.add_column("checkpoints", sa.Column("chunk_hashes", sa.Text))
    op.add_column("checkpoints", sa.Column("damaged", sa.Text))
    op.execute(INFO.format(extra=", c.damaged"))


def downgrade() -> None:
    # a view cannot lose a column in place on PostgreSQL: drop the views built on
    # checkpoint_info, put the old one back, and rebuild them
    later = importlib.import_module("migrations.versions.0005_plugins").VIEWS
    for name in [*reversed(list(later)), "metrics_wide", "checkpoint_info"]:
        op.execute(f"DROP VIEW {name}")
    op.execute(INFO.format(extra="").replace("CREATE OR REPLACE", "CREATE"))
    op.execute(METRICS_WIDE)
    for sql in later.values():
        op.execute(sql)
    op.drop_column("checkpoints", "damaged")
    op.drop_column("checkpoints", "chunk_hashes")

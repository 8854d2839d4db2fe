"""Tags and notes on runs.

- ``run_tags(run_id, key, value)``: free ``key=value`` labels (``wdb tag RUN key=value``), one
  value per key and run; filter with ``SELECT ... FROM run_tags``;
- ``runs.note``: one free-text note per run (``wdb note RUN "text"``);
- ``run_info``: one row per run with its note and its tags as one ``k=v, k=v`` string (sorted by
  key), plus checkpoint counts: what ``wdb ls runs`` shows and ``--where`` filters.

Revision ID: 0008_tags
Revises: 0006_verified_reads
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_tags"
down_revision = "0007_family"
branch_labels = None
depends_on = None

RUN_INFO = """
    CREATE VIEW run_info AS
    SELECT r.id AS run_id, r.name AS run, r.zoo, r.kind, r.generator_run_id,
           (SELECT count(*) FROM checkpoints c WHERE c.run_id = r.id) AS checkpoints,
           (SELECT min(c.step) FROM checkpoints c WHERE c.run_id = r.id) AS first_step,
           (SELECT max(c.step) FROM checkpoints c WHERE c.run_id = r.id) AS last_step,
           (SELECT string_agg(t.key || '=' || coalesce(t.value, ''), ', ' ORDER BY t.key)
            FROM run_tags t WHERE t.run_id = r.id) AS tags,
           r.note, r.config, r.source, r.created_at
    FROM runs r
"""


def upgrade() -> None:
    op.add_column("runs", sa.Column("note", sa.Text))
    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
        sa.PrimaryKeyConstraint("run_id", "key"),
    )
    op.execute(RUN_INFO)


def downgrade() -> None:
    op.execute("DROP VIEW run_info")
    op.drop_table("run_tags")
    op.drop_column("runs", "note")

"""Reference sets: what each generator run's samples are compared against, and whether a
sample's nearest reference is in its own lineage.

- ``reference_sets(generator_run_id, checkpoint_id)``: the checkpoints a generator run's method
  declares as the paper's reference set for its samples (G.pt: the final checkpoint of each
  training run; Hyper-Representations: the reconstructions of the last epoch; HyperDiffusion:
  the training-split fields; P-diff: its training checkpoints), recorded when the run finishes
  (``wdb.study.reference``). ``wdb query novelty``, ``wdb analyze`` and the report use it by
  default for that run's samples;
- ``reference_info``: one row per reference checkpoint with its generator run's method and the
  checkpoint's run, step, kind, zoo, split and space;
- ``similarity.own_lineage``: whether the nearest reference is one of the target's ancestors (its
  prompt, source or parent) or was derived from one of them (NULL for rows computed before);
  the ``novelty`` view shows it.

Revision ID: 0009_reference
Revises: 0008_tags
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_reference"
down_revision = "0008_tags"
branch_labels = None
depends_on = None

REFERENCE_INFO = """
    CREATE VIEW reference_info AS
    SELECT s.generator_run_id, g.method, c.checkpoint_id, c.run, c.step, c.kind, c.zoo,
           c.split, c.space, c.space_id
    FROM reference_sets s
    JOIN generator_runs g ON g.id = s.generator_run_id
    JOIN checkpoint_info c ON c.checkpoint_id = s.checkpoint_id
"""

_NOVELTY = """
    CREATE VIEW novelty AS
    WITH latest AS (
        SELECT s.checkpoint_id, split_part(r.metric, '+', 1) AS metric,
               max(s.relation_id) AS relation_id
        FROM similarity s JOIN relations r ON r.id = s.relation_id
        GROUP BY s.checkpoint_id, split_part(r.metric, '+', 1)
    )
    SELECT s.checkpoint_id, c.run, c.kind, c.space, l.metric, s.min_l2, s.nearest_id,
           s.max_iou, s.max_iou_id, s.accuracy, s.relation_id, r.reference_selection,
           r.created_at{extra}
    FROM latest l
    JOIN similarity s ON s.relation_id = l.relation_id AND s.checkpoint_id = l.checkpoint_id
    JOIN relations r ON r.id = s.relation_id
    JOIN checkpoint_info c ON c.checkpoint_id = s.checkpoint_id
"""


def upgrade() -> None:
    op.create_table(
        "reference_sets",
        sa.Column("generator_run_id", sa.BigInteger, nullable=False),
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("generator_run_id", "checkpoint_id"),
    )
    op.execute(REFERENCE_INFO)
    op.execute("DROP VIEW novelty")
    op.add_column("similarity", sa.Column("own_lineage", sa.Boolean))
    op.execute(_NOVELTY.format(extra=", s.own_lineage"))


def downgrade() -> None:
    op.execute("DROP VIEW novelty")
    op.drop_column("similarity", "own_lineage")
    op.execute(_NOVELTY.format(extra=""))
    op.execute("DROP VIEW reference_info")
    op.drop_table("reference_sets")

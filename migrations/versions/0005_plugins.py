"""Bring-your-own support: where a task plugin came from, per-checkpoint metadata, and the views
that make the catalog's common questions one-row-per-checkpoint SQL.

- ``eval_sets.task_source``: the file a task plugin was loaded from (``--task ./my_task.py``),
  so analyses find the task of a space no installed plugin knows;
- ``checkpoints.meta``: JSON of a source's non-tensor entries (epoch, optimizer step, ...);
- ``checkpoint_metrics``: one row per checkpoint (every checkpoint, NULLs when unevaluated) with
  accuracy / loss / chamfer from one eval set: a wdb-computed one beats a source-reported one,
  the newest computed one beats older ones;
- ``latest_neighbors`` / ``novelty``: per checkpoint and distance metric (``l2`` or
  ``aligned_l2``), the rows of the most recent relation that covered it (``neighbors`` and
  ``similarity`` keep every relation ever computed; ``relations.metric`` also names the
  error-set similarity, e.g. ``l2+error_iou``).

Revision ID: 0005_plugins
Revises: 0004_views
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_plugins"
down_revision = "0004_views"
branch_labels = None
depends_on = None

VIEWS = {
    "checkpoint_metrics": """
        CREATE VIEW checkpoint_metrics AS
        WITH sets AS (
            SELECT DISTINCT m.checkpoint_id, m.eval_set_id, e.name AS eval_set, e.split
            FROM metrics m JOIN eval_sets e ON e.id = m.eval_set_id
        ), pick AS (
            SELECT checkpoint_id, eval_set_id, eval_set,
                   row_number() OVER (
                       PARTITION BY checkpoint_id
                       ORDER BY CASE WHEN split = 'reported' THEN 1 ELSE 0 END, eval_set_id DESC
                   ) AS choice
            FROM sets
        )
        SELECT c.checkpoint_id, c.run, c.step, c.kind, c.zoo, c.space, p.eval_set,
               max(CASE WHEN m.name = 'accuracy' THEN m.value END) AS accuracy,
               max(CASE WHEN m.name = 'loss' THEN m.value END) AS loss,
               max(CASE WHEN m.name = 'chamfer' THEN m.value END) AS chamfer
        FROM checkpoint_info c
        LEFT JOIN pick p ON p.checkpoint_id = c.checkpoint_id AND p.choice = 1
        LEFT JOIN metrics m ON m.checkpoint_id = p.checkpoint_id AND m.eval_set_id = p.eval_set_id
        GROUP BY c.checkpoint_id, c.run, c.step, c.kind, c.zoo, c.space, p.eval_set
    """,
    "latest_neighbors": """
        CREATE VIEW latest_neighbors AS
        WITH latest AS (
            SELECT n.checkpoint_id, split_part(r.metric, '+', 1) AS metric,
                   max(n.relation_id) AS relation_id
            FROM neighbors n JOIN relations r ON r.id = n.relation_id
            GROUP BY n.checkpoint_id, split_part(r.metric, '+', 1)
        )
        SELECT n.checkpoint_id, c.run, c.kind, l.metric, n.rank, n.neighbor_id,
               nc.run AS neighbor_run, nc.kind AS neighbor_kind, n.distance, n.relation_id,
               r.kind AS relation_kind, r.reference_selection
        FROM latest l
        JOIN neighbors n ON n.relation_id = l.relation_id AND n.checkpoint_id = l.checkpoint_id
        JOIN relations r ON r.id = n.relation_id
        JOIN checkpoint_info c ON c.checkpoint_id = n.checkpoint_id
        JOIN checkpoint_info nc ON nc.checkpoint_id = n.neighbor_id
    """,
    "novelty": """
        CREATE VIEW novelty AS
        WITH latest AS (
            SELECT s.checkpoint_id, split_part(r.metric, '+', 1) AS metric,
                   max(s.relation_id) AS relation_id
            FROM similarity s JOIN relations r ON r.id = s.relation_id
            GROUP BY s.checkpoint_id, split_part(r.metric, '+', 1)
        )
        SELECT s.checkpoint_id, c.run, c.kind, c.space, l.metric, s.min_l2, s.nearest_id,
               s.max_iou, s.max_iou_id, s.accuracy, s.relation_id, r.reference_selection,
               r.created_at
        FROM latest l
        JOIN similarity s ON s.relation_id = l.relation_id AND s.checkpoint_id = l.checkpoint_id
        JOIN relations r ON r.id = s.relation_id
        JOIN checkpoint_info c ON c.checkpoint_id = s.checkpoint_id
    """,
}


def upgrade() -> None:
    op.add_column("eval_sets", sa.Column("task_source", sa.Text))
    op.add_column("checkpoints", sa.Column("meta", sa.Text))
    for sql in VIEWS.values():
        op.execute(sql)


def downgrade() -> None:
    for name in reversed(list(VIEWS)):
        op.execute(f"DROP VIEW {name}")
    op.drop_column("checkpoints", "meta")
    op.drop_column("eval_sets", "task_source")

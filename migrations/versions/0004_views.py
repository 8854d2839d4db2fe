"""Human views: metrics in wide form (one column per common metric, one row per checkpoint and
eval set), joined with the checkpoint's run and kind.

Revision ID: 0004_views
Revises: 0003_relations
"""

from alembic import op

revision = "0004_views"
down_revision = "0003_relations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Conditional aggregation instead of PIVOT: portable to PostgreSQL.
    op.execute(
        """
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
    )


def downgrade() -> None:
    op.execute("DROP VIEW metrics_wide")

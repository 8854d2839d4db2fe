"""Evaluation: eval sets (dataset identity), metrics in long form, and prediction rows.

Revision ID: 0002_evaluation
Revises: 0001_core
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_evaluation"
down_revision = "0001_core"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seq = sa.Sequence("eval_sets_id_seq")
    op.execute(sa.schema.CreateSequence(seq))
    op.create_table(
        "eval_sets",
        sa.Column("id", sa.BigInteger, server_default=seq.next_value(), primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("task", sa.Text),
        sa.Column("split", sa.Text),
        sa.Column("n_items", sa.BigInteger),
        sa.Column("labels_sha256", sa.Text),
        sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    )
    op.create_table(
        "metrics",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("eval_set_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Double),
        sa.PrimaryKeyConstraint("checkpoint_id", "eval_set_id", "name"),
    )
    op.create_table(
        "predictions",
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("eval_set_id", sa.BigInteger, nullable=False),
        sa.Column("array_path", sa.Text, nullable=False),
        sa.Column("row", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "eval_set_id", "array_path"),
    )


def downgrade() -> None:
    op.drop_table("predictions")
    op.drop_table("metrics")
    op.drop_table("eval_sets")
    op.execute("DROP SEQUENCE eval_sets_id_seq")

"""Derived relations: provenance of each computation, nearest neighbours, novelty/similarity.

Revision ID: 0003_relations
Revises: 0002_evaluation
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_relations"
down_revision = "0002_evaluation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seq = sa.Sequence("relations_id_seq")
    op.execute(sa.schema.CreateSequence(seq))
    op.create_table(
        "relations",
        sa.Column("id", sa.BigInteger, server_default=seq.next_value(), primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("metric", sa.Text, nullable=False),
        sa.Column("space_id", sa.BigInteger),
        sa.Column("target_selection", sa.Text),
        sa.Column("reference_selection", sa.Text),
        sa.Column("reference_fingerprint", sa.Text),
        sa.Column("index_version", sa.Text),
        sa.Column("params", sa.Text),
        sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    )
    op.create_table(
        "neighbors",
        sa.Column("relation_id", sa.BigInteger, nullable=False),
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("neighbor_id", sa.BigInteger, nullable=False),
        sa.Column("distance", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("relation_id", "checkpoint_id", "rank"),
    )
    op.create_table(
        "similarity",
        sa.Column("relation_id", sa.BigInteger, nullable=False),
        sa.Column("checkpoint_id", sa.BigInteger, nullable=False),
        sa.Column("min_l2", sa.Double),
        sa.Column("nearest_id", sa.BigInteger),
        sa.Column("max_iou", sa.Double),
        sa.Column("max_iou_id", sa.BigInteger),
        sa.Column("accuracy", sa.Double),
        sa.PrimaryKeyConstraint("relation_id", "checkpoint_id"),
    )


def downgrade() -> None:
    op.drop_table("similarity")
    op.drop_table("neighbors")
    op.drop_table("relations")
    op.execute("DROP SEQUENCE relations_id_seq")

"""Core store: weight spaces, runs, checkpoints, generator runs, and the checkpoint_info view.

Revision ID: 0001_core
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001_core"
down_revision = None
branch_labels = None
depends_on = None


def _seq_id(name: str) -> sa.Column:
    seq = sa.Sequence(f"{name}_id_seq")
    op.execute(sa.schema.CreateSequence(seq))
    return sa.Column("id", sa.BigInteger, server_default=seq.next_value(), primary_key=True)


def _now() -> sa.Column:
    return sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp())


def upgrade() -> None:
    op.create_table(
        "spaces",
        _seq_id("spaces"),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("hash", sa.Text, nullable=False, unique=True),
        sa.Column("n_params", sa.BigInteger, nullable=False),
        sa.Column("dtype", sa.Text, nullable=False),
        sa.Column("layout", sa.Text, nullable=False),
        sa.Column("array_path", sa.Text, nullable=False),
        _now(),
    )
    op.create_table(
        "generator_runs",
        _seq_id("generator_runs"),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("config", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("train_selection", sa.Text),
        sa.Column("train_ids", sa.Text),
        sa.Column("seed", sa.BigInteger),
        sa.Column("code_version", sa.Text),
        sa.Column("wall_time_s", sa.Double),
        sa.Column("model_checkpoint_id", sa.BigInteger),
        sa.Column("error", sa.Text),
        _now(),
        sa.Column("finished_at", sa.DateTime),
    )
    op.create_table(
        "runs",
        _seq_id("runs"),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("zoo", sa.Text),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("generator_run_id", sa.BigInteger),
        sa.Column("config", sa.Text),
        sa.Column("source", sa.Text),
        _now(),
    )
    op.create_table(
        "checkpoints",
        _seq_id("checkpoints"),
        sa.Column("run_id", sa.BigInteger, nullable=False),
        sa.Column("space_id", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("row", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("split", sa.Text),
        sa.Column("source", sa.Text),
        _now(),
        sa.UniqueConstraint("run_id", "space_id", "step", name="uq_checkpoint_run_space_step"),
        sa.UniqueConstraint("space_id", "row", name="uq_checkpoint_space_row"),
    )
    op.execute(
        """
        CREATE VIEW checkpoint_info AS
        SELECT c.id AS checkpoint_id, r.name AS run, c.step, r.kind, r.zoo, s.name AS space,
               c.space_id, c.run_id, c.row, c.sha256, c.split, r.generator_run_id, c.source,
               c.created_at
        FROM checkpoints c JOIN runs r ON r.id = c.run_id JOIN spaces s ON s.id = c.space_id
        """
    )


def downgrade() -> None:
    op.execute("DROP VIEW checkpoint_info")
    for table in ("checkpoints", "runs", "generator_runs", "spaces"):
        op.drop_table(table)
        op.execute(f"DROP SEQUENCE {table}_id_seq")

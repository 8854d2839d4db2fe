"""Families of checkpoints: shared rows, delta rows, sketches and lineage (``wdb.store.family``).

- ``checkpoints``: the unique constraint on ``(space_id, row)`` goes: a checkpoint whose bytes
  equal a stored row of its space points to that row (an exact re-save costs its catalog row).
  PostgreSQL drops the constraint; DuckDB cannot (``ALTER TABLE ... DROP CONSTRAINT`` is not
  implemented), so the table is rebuilt with the same columns, whatever revisions before this
  one added (read from ``duckdb_columns()``), and the views are rebound by name.
- ``family_rows``: per stored row of a one-row-per-chunk (wide) space, its sketch (a seeded
  sample of its values), its xxh3_128 digest as decoded, and, when some of its chunks are
  stored as XOR against the same chunks of a parent row, that parent row, which chunks, and
  the chain depth (bounded by ``wdb.store.family.MAX_DEPTH``).
- ``lineage``: child checkpoint, parent checkpoint, why (``previous_step`` | ``declared`` |
  ``found``), sketch distance, bytes saved; the ``lineage_info`` view names runs and steps.

Merge note: this revision follows 0005 on its branch; where 0006 (verified reads) exists,
``down_revision`` is ``"0006_verified_reads"``.

Revision ID: 0007_family
Revises: 0005_plugins
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_family"
down_revision = "0006_verified_reads"
branch_labels = None
depends_on = None

LINEAGE_INFO = """
    CREATE VIEW lineage_info AS
    SELECT l.child_id, rc.name AS child_run, cc.step AS child_step,
           l.parent_id, rp.name AS parent_run, cp.step AS parent_step,
           l.reason, l.distance, l.bytes_saved, cc.space_id
    FROM lineage l
    JOIN checkpoints cc ON cc.id = l.child_id JOIN runs rc ON rc.id = cc.run_id
    JOIN checkpoints cp ON cp.id = l.parent_id JOIN runs rp ON rp.id = cp.run_id
"""


def _rebuild_checkpoints(keep_row_unique: bool) -> None:
    """DuckDB: rebuild ``checkpoints`` with or without the (space_id, row) constraint."""
    conn = op.get_bind()
    cols = conn.execute(
        sa.text(
            "SELECT column_name, data_type FROM duckdb_columns() "
            "WHERE table_name = 'checkpoints' ORDER BY column_index"
        )
    ).all()
    defs = []
    for name, kind in cols:
        extra = ""
        if name == "id":
            extra = " DEFAULT nextval('checkpoints_id_seq') PRIMARY KEY"
        elif name == "created_at":
            extra = " DEFAULT current_timestamp"
        elif name in ("run_id", "space_id", "step", "row", "sha256"):
            extra = " NOT NULL"
        defs.append(f'"{name}" {kind}{extra}')
    defs.append("CONSTRAINT uq_checkpoint_run_space_step UNIQUE (run_id, space_id, step)")
    if keep_row_unique:
        defs.append("CONSTRAINT uq_checkpoint_space_row UNIQUE (space_id, row)")
    names = ", ".join(f'"{n}"' for n, _ in cols)
    op.execute(f"CREATE TABLE checkpoints_rebuilt ({', '.join(defs)})")
    op.execute(f"INSERT INTO checkpoints_rebuilt ({names}) SELECT {names} FROM checkpoints")
    op.execute("DROP TABLE checkpoints")
    op.execute("ALTER TABLE checkpoints_rebuilt RENAME TO checkpoints")


def upgrade() -> None:
    if op.get_bind().dialect.name == "duckdb":
        _rebuild_checkpoints(keep_row_unique=False)
    else:
        op.drop_constraint("uq_checkpoint_space_row", "checkpoints", type_="unique")
    op.create_table(
        "family_rows",
        sa.Column("space_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("row", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("parent_row", sa.BigInteger),
        sa.Column("delta_chunks", sa.Text),  # comma-separated column-chunk indices
        sa.Column("depth", sa.Integer, nullable=False, server_default="0"),
        sa.Column("digest", sa.Text, nullable=False),  # xxh3_128 of the decoded row
        sa.Column("sketch", sa.LargeBinary),
        sa.PrimaryKeyConstraint("space_id", "row", name="pk_family_rows"),
    )
    op.create_table(
        "lineage",
        sa.Column("child_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("parent_id", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("distance", sa.Float),
        sa.Column("bytes_saved", sa.BigInteger),
        sa.PrimaryKeyConstraint("child_id", name="pk_lineage"),
    )
    op.execute(LINEAGE_INFO)


def downgrade() -> None:
    op.execute("DROP VIEW lineage_info")
    op.drop_table("lineage")
    op.drop_table("family_rows")
    # shared rows cannot keep a unique (space_id, row): refuse rather than lose checkpoints
    shared = (
        op.get_bind()
        .execute(
            sa.text(
                "SELECT count(*) FROM (SELECT space_id, row FROM checkpoints "
                "GROUP BY space_id, row HAVING count(*) > 1) AS s"
            )
        )
        .scalar()
    )
    if shared:
        raise RuntimeError(f"{shared} rows are shared by several checkpoints: cannot downgrade")
    if op.get_bind().dialect.name == "duckdb":
        _rebuild_checkpoints(keep_row_unique=True)
    else:
        op.create_unique_constraint("uq_checkpoint_space_row", "checkpoints", ["space_id", "row"])

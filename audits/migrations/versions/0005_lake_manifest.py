"""The lake's manifest: the Parquet files a store opened with a lake keeps its events in, and the
lines taken back from them (`lake_files`, `lake_forgotten`)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lake_files",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("table_name", sa.String(32), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("source_id", sa.Integer),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("first_line", sa.BigInteger),
        sa.Column("last_line", sa.BigInteger),
    )
    op.create_index("lake_files_table", "lake_files", ["table_name", "id"])
    op.create_table(
        "lake_forgotten",
        sa.Column("source_id", sa.Integer, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("source_id", "line"),
    )


def downgrade() -> None:
    op.drop_table("lake_forgotten")
    op.drop_index("lake_files_table", "lake_files")
    op.drop_table("lake_files")

"""Source ids handed out ahead of their sources (`source_ids`), so that a lake's writers can write
their files at once and record their sources only when each commits."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("source_ids", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))
    # The ids given so far are those of the sources recorded so far.
    op.execute("INSERT INTO source_ids (id) SELECT id FROM ingested_sources")


def downgrade() -> None:
    op.drop_table("source_ids")

"""Attributes of users and movies beyond the typed ones, and predictions of a team's own model.

`user_attributes` and `movie_attributes` keep any extra column of users.csv or movies.csv (and
MovieLens' zip code) as text, one row per entity and attribute. `predictions` holds what a
team's model predicted, keyed like every event by (source_id, line). Databases made before this
revision simply gain the three empty tables.

The tables are written out here rather than taken from recaudit.audits.schema, for the reason
0001 gives.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recaudit.audits.schema import UTCTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_attributes",
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
        sa.PrimaryKeyConstraint("user_id", "name"),
    )
    op.create_table(
        "movie_attributes",
        sa.Column("movie_key", sa.Integer, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
        sa.PrimaryKeyConstraint("movie_key", "name"),
    )
    op.create_table(
        "predictions",
        sa.Column("source_id", sa.Integer, nullable=False),
        sa.Column("line", sa.BigInteger, nullable=False),
        sa.Column("time", UTCTime, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("movie_key", sa.Integer, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("prediction", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("source_id", "line"),
    )
    op.create_index("predictions_time", "predictions", ["time"])
    op.create_index("predictions_lookup", "predictions", ["model", "user_id", "movie_key", "time"])


def downgrade() -> None:
    raise NotImplementedError("recaudit's revisions are not undone: restore a backup of the database instead")

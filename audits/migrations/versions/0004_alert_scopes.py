"""Alerts judged per schedule: each audit run records the scheduled job that ran it, and each
open condition the scope that judges it; freshness conditions have no run.

`audit_runs.schedule` names the job (NULL: an ad-hoc run), and the index `audit_runs_newest`
finds the newest runs without sorting them all. Runs made before this revision get it
from the job run that recorded them (its detail names the run id), so that their conditions
keep being judged by the job that opened them; `open_conditions.condition` gains that scope as a
prefix (`schedule:<job>/…`, `adhoc/…`). `alerts.run_id` and `open_conditions.opened_run_id` may
be NULL: a freshness condition comes from no run.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_runs") as batch:
        batch.add_column(sa.Column("schedule", sa.String(32)))
        batch.create_index("audit_runs_newest", ["until", "id"])
    for table, column in (("alerts", "run_id"), ("open_conditions", "opened_run_id")):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, existing_type=sa.Integer, nullable=True)
    conn = op.get_bind()
    runs = sa.table("audit_runs", sa.column("id", sa.Integer), sa.column("schedule", sa.String))
    jobs = sa.table("job_runs", sa.column("job", sa.String), sa.column("status", sa.String),
                    sa.column("detail", sa.Text))
    by_run: dict[int, str] = {}
    for job, detail in conn.execute(sa.select(jobs.c.job, jobs.c.detail).where(jobs.c.status == "ok")).all():
        try:
            run_id = json.loads(detail or "null")["run_id"]
        except (ValueError, TypeError, KeyError):
            continue  # not an audit job's outcome
        by_run[int(run_id)] = job
    for run_id, job in by_run.items():
        conn.execute(runs.update().where(runs.c.id == run_id).values(schedule=job))
    opened = sa.table("open_conditions", sa.column("condition", sa.Text), sa.column("opened_run_id", sa.Integer))
    for condition, run_id in conn.execute(sa.select(opened.c.condition, opened.c.opened_run_id)).all():
        scope = f"schedule:{by_run[run_id]}" if run_id in by_run else "adhoc"
        conn.execute(opened.update().where(opened.c.condition == condition).values(condition=f"{scope}/{condition}"))


def downgrade() -> None:
    raise NotImplementedError("recaudit's revisions are not undone: restore a backup of the database instead")

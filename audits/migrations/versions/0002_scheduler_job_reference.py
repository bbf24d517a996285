"""The scheduler's stored jobs call recaudit.scheduler.service:run_job.

APScheduler keeps each job in its own table (schema.SCHEDULER_JOBS, which it creates) as a
pickled state naming the job's function by import path. Before recaudit was installed as one
package that path was scheduler.service:run_job, which no longer imports: APScheduler would fail
on every such job. Each is rewritten in place, keeping its trigger and next run time, so that a
service started on an older database carries on where the old one stopped.
"""

from __future__ import annotations

import pickle

import sqlalchemy as sa
from alembic import op

from recaudit.audits.schema import SCHEDULER_JOBS

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD, NEW = "scheduler.service:run_job", "recaudit.scheduler.service:run_job"


def upgrade() -> None:
    conn = op.get_bind()
    if SCHEDULER_JOBS not in sa.inspect(conn).get_table_names():
        return
    jobs = sa.table(SCHEDULER_JOBS, sa.column("id", sa.Unicode), sa.column("job_state", sa.LargeBinary))
    for job_id, blob in conn.execute(sa.select(jobs.c.id, jobs.c.job_state)).all():
        state = pickle.loads(blob)  # as APScheduler's job store reads it back
        if state.get("func") == OLD:
            state["func"] = NEW
            conn.execute(jobs.update().where(jobs.c.id == job_id)
                         .values(job_state=pickle.dumps(state, pickle.HIGHEST_PROTOCOL)))


def downgrade() -> None:
    raise NotImplementedError("recaudit's revisions are not undone: restore a backup of the database instead")

"""jobs: the job history of the version that stored protos (tables jobs / events) copied into
job_records / job_events, so ListJobs shows the jobs of before the upgrade

Each serialized ``swiftmesh.jobs.v1.Job`` / ``JobEvent`` is decoded by the jobs servicer's
translation (swiftmesh.jobkit.servicer.job_from_proto / event_from_proto) and stored as its JSON
record with service "" (taken over by the service that opens the file). Jobs already present
under the same name are left as they are. The old tables are kept, unread.

Revision ID: 0102
Revises: 0101
"""
import json

import sqlalchemy as sa
from alembic import op

revision = "0102"
down_revision = "0101"
branch_labels = None
depends_on = None


def _dump(record) -> str:
    return json.dumps(record.to_json(), separators=(",", ":"))


def upgrade() -> None:
    bind = op.get_bind()
    tables = set(sa.inspect(bind).get_table_names())
    if "jobs" not in tables:
        return
    from swiftmesh.jobkit.servicer import event_from_proto, job_from_proto
    from swiftmesh.jobs.v1 import jobs_pb2

    present = {r[0] for r in bind.execute(sa.text("SELECT name FROM job_records"))}
    moved = set()
    for name, plan, blob in bind.execute(sa.text("SELECT name, plan, proto FROM jobs")).fetchall():
        if name in present:
            continue
        job = job_from_proto(jobs_pb2.Job.FromString(bytes(blob)))
        bind.execute(
            sa.text("INSERT INTO job_records (service, name, uid, kind, state, create_time, record, plan) "
                    "VALUES ('', :name, :uid, :kind, :state, :ct, :record, :plan)"),
            {"name": name, "uid": job.uid, "kind": job.kind, "state": int(job.state), "ct": job.create_time,
             "record": _dump(job), "plan": plan},
        )
        moved.add(name)
    if "events" not in tables or not moved:
        return
    for job_name, seq, t, blob in bind.execute(sa.text("SELECT job, seq, time, proto FROM events")).fetchall():
        if job_name not in moved:
            continue
        ev = event_from_proto(jobs_pb2.JobEvent.FromString(bytes(blob)))
        ev.job, ev.sequence, ev.time = job_name, int(seq), ev.time or float(t)
        bind.execute(
            sa.text("INSERT INTO job_events (service, job, seq, time, record) VALUES ('', :job, :seq, :time, :record)"),
            {"job": job_name, "seq": int(seq), "time": ev.time, "record": _dump(ev)},
        )

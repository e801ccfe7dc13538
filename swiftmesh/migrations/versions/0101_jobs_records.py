"""jobs: job_records / job_events with a service column (trainer and aligner may share a database)

A jobs.db of the previous version (the same tables without ``service``, written through
swiftmesh.runtime.sqlite) is adopted in place: its rows are copied over with service "" (taken
over by the service that opens the file, see swiftmesh.jobkit.store).

Revision ID: 0101
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0101"
down_revision = None
branch_labels = ("jobs",)
depends_on = None

_COPY = {
    "job_records": "name, uid, kind, state, create_time, record, plan",
    "job_events": "job, seq, time, record",
}


def _create(name: str) -> None:
    if name == "job_records":
        op.create_table(
            "job_records",
            sa.Column("service", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("uid", sa.Text, nullable=False),
            sa.Column("kind", sa.Text, nullable=False),
            sa.Column("state", sa.Integer, nullable=False),
            sa.Column("create_time", sa.Float, nullable=False),
            sa.Column("record", sa.Text, nullable=False),
            sa.Column("plan", sa.Text),
        )
        op.create_index("job_records_by_service_time", "job_records", ["service", "create_time"])
    else:
        op.create_table(
            "job_events",
            sa.Column("service", sa.Text, primary_key=True),
            sa.Column("job", sa.Text, primary_key=True),
            sa.Column("seq", sa.Integer, primary_key=True),
            sa.Column("time", sa.Float, nullable=False),
            sa.Column("record", sa.Text, nullable=False),
        )


def upgrade() -> None:
    insp = sa.inspect(op.get_bind())
    tables = set(insp.get_table_names())
    for name, cols in _COPY.items():
        if name not in tables:
            _create(name)
            continue
        if "service" in {c["name"] for c in insp.get_columns(name)}:
            continue  # already current
        # The previous version's table: move it aside, create the new one, copy, drop the old.
        if name == "job_records":
            op.drop_index("job_records_by_time", table_name=name, if_exists=True)
        op.rename_table(name, f"{name}_v1")
        _create(name)
        op.execute(f"INSERT INTO {name} (service, {cols}) SELECT '', {cols} FROM {name}_v1")
        op.drop_table(f"{name}_v1")

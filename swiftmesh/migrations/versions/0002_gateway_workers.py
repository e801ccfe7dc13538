"""gateway: workers (the worker registry shared by gateway replicas)

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gateway_workers",
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("register_time", sa.Float, nullable=False),
    )

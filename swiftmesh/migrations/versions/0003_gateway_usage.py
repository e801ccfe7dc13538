"""gateway: api_key_usage (requests and tokens per API key, shared by replicas)

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_key_usage",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("requests", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_use_time", sa.Float, nullable=False, server_default="0"),
    )

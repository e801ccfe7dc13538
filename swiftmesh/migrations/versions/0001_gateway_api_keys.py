"""gateway: api_keys (created only if missing: a keys.sqlite from before Alembic is adopted as is)

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = ("gateway",)
depends_on = None


def upgrade() -> None:
    if "api_keys" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("display_name", sa.Text, nullable=False),
        sa.Column("secret_sha256", sa.Text, nullable=False, unique=True),
        sa.Column("prefix", sa.Text, nullable=False),
        sa.Column("requests_per_minute", sa.Integer, nullable=False, server_default="0"),
        sa.Column("tokens_per_minute", sa.Integer, nullable=False, server_default="0"),
        sa.Column("admin", sa.Integer, nullable=False, server_default="0"),
        sa.Column("create_time", sa.Float, nullable=False),
    )

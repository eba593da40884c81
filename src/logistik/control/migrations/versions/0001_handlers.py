"""The handlers table.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the handlers table."""
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "handlers",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(255), nullable=False, unique=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("service_id", sa.String(255), nullable=False),
        sa.Column("group_id", sa.String(255), nullable=False, index=True),
        sa.Column("event", sa.String(255), nullable=False, index=True),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("port", sa.Integer, nullable=False),
        sa.Column("path", sa.String(1024), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("version", sa.String(255), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        sa.Column("model_type", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("traffic", sa.Float, nullable=False),
        sa.Column("timeout_s", sa.Float),
        sa.Column("retries", sa.Integer),
        sa.Column("return_to", sa.String(255)),
        sa.Column("failed_topic", sa.String(255)),
        sa.Column("environment", sa.String(255), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("consul_service_id", sa.String(255), nullable=False),
        sa.Column("startup", tz),
        sa.Column("retired", sa.Boolean, nullable=False),
        sa.Column("disabled_by_admin", sa.Boolean, nullable=False),
        sa.Column("admin_model_type", sa.String(16)),
        sa.Column("admin_traffic", sa.Float),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("problem", sa.Text),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("updated_at", tz, nullable=False),
        sa.Column("last_seen_at", tz),
    )


def downgrade() -> None:
    """Drop the handlers table."""
    op.drop_table("handlers")

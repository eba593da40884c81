"""Decoy agreement counts.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Count decoy answers compared with production, and those equal to it."""
    with op.batch_alter_table("handlers") as batch:
        batch.add_column(
            sa.Column("decoy_compared", sa.BigInteger, nullable=False, server_default="0")
        )
        batch.add_column(
            sa.Column("decoy_agreed", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    """Drop the decoy counts."""
    with op.batch_alter_table("handlers") as batch:
        batch.drop_column("decoy_agreed")
        batch.drop_column("decoy_compared")

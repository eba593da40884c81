"""Micro-batching fields of a handler.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """How many events a batching model takes in one request, and how long a batch waits."""
    with op.batch_alter_table("handlers") as batch:
        batch.add_column(sa.Column("batch_max_size", sa.Integer, nullable=True))
        batch.add_column(sa.Column("batch_max_wait_ms", sa.Float, nullable=True))


def downgrade() -> None:
    """Drop the batching fields."""
    with op.batch_alter_table("handlers") as batch:
        batch.drop_column("batch_max_wait_ms")
        batch.drop_column("batch_max_size")

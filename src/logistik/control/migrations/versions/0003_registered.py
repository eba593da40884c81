"""Whether a handler is still registered with its source (gone vs down).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add `registered`: false once the source no longer lists the handler."""
    with op.batch_alter_table("handlers") as batch:
        batch.add_column(
            sa.Column("registered", sa.Boolean, nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    """Drop `registered`."""
    with op.batch_alter_table("handlers") as batch:
        batch.drop_column("registered")

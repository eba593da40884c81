"""Rollouts: their state, each process's per-window counts, and every decision with its figures.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# SQLite numbers rows only with INTEGER PRIMARY KEY; PostgreSQL gets 64-bit ids.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create rollouts, rollout_counts and rollout_decisions."""
    tz = sa.DateTime(timezone=True)
    op.create_table(
        "rollouts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(255), nullable=False, index=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("group_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("steps", sa.JSON, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("from_decoy", sa.Boolean, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("created_at", tz, nullable=False),
        sa.Column("updated_at", tz, nullable=False),
        sa.Column("step_started_at", tz, nullable=False),
        sa.Column("ended_at", tz),
    )
    op.create_table(
        "rollout_counts",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column(
            "rollout_id",
            ID,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("process", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("at", tz, nullable=False),
        sa.Column("counts", sa.JSON, nullable=False),
    )
    op.create_index("ix_rollout_counts_window", "rollout_counts", ["rollout_id", "step"])
    op.create_table(
        "rollout_decisions",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column(
            "rollout_id",
            ID,
            sa.ForeignKey("rollouts.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("share", sa.Float, nullable=False),
        sa.Column("at", tz, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("process", sa.String(255), nullable=False),
    )


def downgrade() -> None:
    """Drop the rollout tables."""
    op.drop_table("rollout_decisions")
    op.drop_index("ix_rollout_counts_window", "rollout_counts")
    op.drop_table("rollout_counts")
    op.drop_table("rollouts")

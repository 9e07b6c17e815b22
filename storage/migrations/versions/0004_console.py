"""The console: routing explanations kept per series, and pauses of rules and destinations.

Revision ID: 0004_console
Revises: 0003_security
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_console"
down_revision = "0003_security"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("routing", sa.JSON))
        batch.add_column(sa.Column("routed_at", _TS))
    op.create_table(
        "pause",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("paused_by", sa.String(128)),
        sa.Column("reason", sa.Text),
        sa.Column("paused_at", _TS, nullable=False),
        sa.UniqueConstraint("kind", "name", name="uq_pause_kind_name"),
    )


def downgrade() -> None:
    op.drop_table("pause")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("routed_at")
        batch.drop_column("routing")

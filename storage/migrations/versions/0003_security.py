"""Users and sessions of the web console, the audit trail, and purge marks (retention).

Revision ID: 0003_security
Revises: 0002_jobs
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_security"
down_revision = "0002_jobs"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_PURGE_MARKED = ("series", "instance", "job", "result")


def upgrade() -> None:
    op.create_table(
        "web_user",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_login_at", _TS),
    )
    op.create_table(
        "web_session",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "user_id",
            sa.Integer,
            sa.ForeignKey("web_user.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64)),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
    )
    op.create_index("ix_web_session_user_id", "web_session", ["user_id"])
    op.create_table(
        "audit_event",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", _TS, nullable=False),
        sa.Column("event", sa.String(48), nullable=False),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("actor", sa.String(128)),
        sa.Column("actor_kind", sa.String(16), nullable=False),
        sa.Column("address", sa.String(64)),
        sa.Column("node", sa.String(128)),
        sa.Column("study_instance_uid", sa.String(64)),
        sa.Column("detail", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_event_at", "audit_event", ["at"])
    op.create_index("ix_audit_event_event", "audit_event", ["event"])
    op.create_index("ix_audit_event_study_instance_uid", "audit_event", ["study_instance_uid"])
    for table in _PURGE_MARKED:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("purged_at", _TS))


def downgrade() -> None:
    for table in reversed(_PURGE_MARKED):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("purged_at")
    op.drop_table("audit_event")
    op.drop_table("web_session")
    op.drop_table("web_user")

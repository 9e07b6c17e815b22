"""Completions, jobs, results and deliveries (routing and delivery).

Revision ID: 0002_jobs
Revises: 0001_received
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_jobs"
down_revision = "0001_received"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("study") as batch:
        batch.add_column(sa.Column("collected_at", _TS))
    with op.batch_alter_table("series") as batch:
        batch.add_column(sa.Column("collected_at", _TS))
    op.create_table(
        "completion",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column(
            "study_id", sa.Integer, sa.ForeignKey("study.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("series_id", sa.Integer, sa.ForeignKey("series.id", ondelete="CASCADE")),
        sa.Column("instance_count", sa.Integer, nullable=False),
        sa.Column("last_instance_at", _TS, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False),
        sa.Column("completed_at", _TS, nullable=False),
        sa.UniqueConstraint("level", "uid", "rule", name="uq_completion_level_uid_rule"),
    )
    op.create_index("ix_completion_study_id", "completion", ["study_id"])
    op.create_table(
        "job",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "completion_id",
            sa.Integer,
            sa.ForeignKey("completion.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("pipeline", sa.String(64), nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column(
            "study_id", sa.Integer, sa.ForeignKey("study.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("series_ids", sa.JSON, nullable=False),
        sa.Column("outputs", sa.JSON, nullable=False),
        sa.Column("destinations", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("not_before", _TS, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", _TS),
        sa.Column("heartbeat_at", _TS),
        sa.Column("uid_seed", sa.String(64), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("started_at", _TS),
        sa.Column("finished_at", _TS),
        sa.Column("error", sa.Text),
        sa.Column("timings", sa.JSON, nullable=False),
        sa.UniqueConstraint("completion_id", "revision", "pipeline", name="uq_job_completion_rev"),
    )
    op.create_index("ix_job_completion_id", "job", ["completion_id"])
    op.create_index("ix_job_study_id", "job", ["study_id"])
    op.create_index("ix_job_status", "job", ["status"])
    op.create_table(
        "result",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "job_id", sa.Integer, sa.ForeignKey("job.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("source_series_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
    )
    op.create_index("ix_result_job_id", "result", ["job_id"])
    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "result_id", sa.Integer, sa.ForeignKey("result.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("destination", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", _TS),
        sa.Column("last_status", sa.Integer),
        sa.Column("error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("sent_at", _TS),
        sa.UniqueConstraint("result_id", "destination", name="uq_delivery_result_destination"),
    )
    op.create_index("ix_delivery_result_id", "delivery", ["result_id"])
    op.create_index("ix_delivery_status", "delivery", ["status"])


def downgrade() -> None:
    op.drop_table("delivery")
    op.drop_table("result")
    op.drop_table("job")
    op.drop_table("completion")
    with op.batch_alter_table("series") as batch:
        batch.drop_column("collected_at")
    with op.batch_alter_table("study") as batch:
        batch.drop_column("collected_at")

"""Received studies, series and instances.

Revision ID: 0001_received
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_received"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("patient_name", sa.String(324)),
        sa.Column("study_date", sa.String(8)),
        sa.Column("accession_number", sa.String(16)),
        sa.Column("study_description", sa.String(64)),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_study_study_instance_uid", "study", ["study_instance_uid"], unique=True)
    op.create_index("ix_study_last_received_at", "study", ["last_received_at"])
    op.create_table(
        "series",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("series_instance_uid", sa.String(64), nullable=False),
        sa.Column(
            "study_id", sa.Integer, sa.ForeignKey("study.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("modality", sa.String(16)),
        sa.Column("body_part_examined", sa.String(64)),
        sa.Column("series_description", sa.String(64)),
        sa.Column("series_number", sa.Integer),
        sa.Column("manufacturer", sa.String(64)),
        sa.Column("manufacturer_model_name", sa.String(64)),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("called_ae", sa.String(16)),
        sa.Column("peer_address", sa.String(64)),
        sa.Column("attributes", sa.JSON, nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_series_series_instance_uid", "series", ["series_instance_uid"], unique=True)
    op.create_index("ix_series_study_id", "series", ["study_id"])
    op.create_index("ix_series_last_received_at", "series", ["last_received_at"])
    op.create_table(
        "instance",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column(
            "series_id", sa.Integer, sa.ForeignKey("series.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("sop_class_uid", sa.String(64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(64), nullable=False),
        sa.Column("instance_number", sa.Integer),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("calling_ae", sa.String(16)),
        sa.Column("peer_address", sa.String(64)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("receive_count", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_instance_sop_instance_uid", "instance", ["sop_instance_uid"], unique=True)
    op.create_index("ix_instance_series_id", "instance", ["series_id"])


def downgrade() -> None:
    op.drop_table("instance")
    op.drop_table("series")
    op.drop_table("study")

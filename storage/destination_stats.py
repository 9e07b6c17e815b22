"""Deliveries counted per destination (``dicom-node destinations list``)."""

from __future__ import annotations

from sqlalchemy import func, select

from storage.db import Database
from storage.models import Delivery

__all__ = ["delivery_counts"]


def delivery_counts(db: Database) -> dict[str, dict[str, int]]:
    """Deliveries per destination and status, e.g. ``{"pacs": {"pending": 3, "sent": 40}}``
    (statuses without a row left out)."""
    counts: dict[str, dict[str, int]] = {}
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(Delivery.destination, Delivery.status, func.count()).group_by(
                Delivery.destination, Delivery.status
            )
        )
        for destination, status, n in rows:
            counts.setdefault(str(destination), {})[str(status)] = int(n)
    return counts

"""A node's settings with one CT rule, its database, and a stored CT series of placeholder files.

For tests of what happens to a job (executors, retries, refusals) where the
pixels are never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_node.config import Settings
from storage.db import Database
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool

SERIES_UID = "1.2.3.4"
"""The stored series' Series Instance UID."""


def stored_ct_series(
    tmp_path: Path, pipeline: str, *, instances: int = 1, worker: dict[str, Any] | None = None
) -> tuple[Settings, Database, ReceivedStore]:
    """Settings (SQLite, spool and results under *tmp_path*, one rule: CT -> *pipeline*,
    ``[worker]`` *worker*), the migrated database and the store holding series
    :data:`SERIES_UID` of *instances* one-byte files."""
    settings = Settings.model_validate(
        {
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": f"sqlite:///{tmp_path / 'node.db'}",
            },
            "worker": worker or {},
            "rules": [{"name": "r", "match": {"Modality": "CT"}, "pipelines": [pipeline]}],
        }
    )
    db = Database(settings.storage.database_url)
    db.upgrade()
    store = ReceivedStore(db, Spool(settings.storage.spool_dir))
    for n in range(1, instances + 1):
        store.store(
            InstanceRecord(
                study_instance_uid="1.2.3",
                series_instance_uid=SERIES_UID,
                sop_instance_uid=f"{SERIES_UID}.{n}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                modality="CT",
                attributes={"Modality": "CT"},
            ),
            store.spool.write_temp([b"x"]),
        )
    return settings, db, store

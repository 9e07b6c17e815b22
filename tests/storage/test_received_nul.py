"""NUL characters in received text attributes (found by ``bench.fuzz``, family ``charset``).

No text VR may hold a NUL (PS3.5 6.2) but senders do send them; PostgreSQL text
and JSON cannot hold one, so before the fix such an instance was stored on
SQLite and refused (0xC004, with a traceback) on PostgreSQL.  The database
copies drop the NULs; the spool file keeps the bytes as received.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from storage.db import Database
from storage.models import Series, Study
from storage.received import InstanceRecord, ReceivedStore, StoreOutcome
from storage.spool import Spool


def test_nul_in_text_attributes_is_stored_on_every_database(
    database: Database, tmp_path: Path
) -> None:
    store = ReceivedStore(database, Spool(tmp_path / "spool"))
    payload = b"as received: A\x00B"
    record = InstanceRecord(
        study_instance_uid="1.2.3.1",
        series_instance_uid="1.2.3.2",
        sop_instance_uid="1.2.3.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        patient_name="A\x00B^C",
        patient_id="ID\x00",
        study_description="CHEST\x00",
        series_description="AX\x00IAL",
        attributes={"SeriesDescription": "AX\x00IAL", "ImageType": ["ORIG\x00INAL"]},
    )
    result = store.store(record, store.spool.write_temp([payload]))
    assert result.outcome is StoreOutcome.STORED
    assert store.spool.absolute(result.path).read_bytes() == payload
    with database.session() as s:
        study = s.scalars(select(Study)).one()
        series = s.scalars(select(Series)).one()
        assert (study.patient_name, study.patient_id) == ("AB^C", "ID")
        assert study.study_description == "CHEST"
        assert series.series_description == "AXIAL"
        assert series.attributes == {"SeriesDescription": "AXIAL", "ImageType": ["ORIGINAL"]}

"""The patient identifiers of received studies, read apart from the study summaries.

:mod:`storage.queries` leaves patient names, IDs and accession numbers out of
what most readers get; the web surface reads them here, for the roles allowed
to see them (``[web] phi_roles``), one query for a page of studies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import select

from storage.db import Database
from storage.models import Study

__all__ = ["PatientFields", "patient_fields"]


@dataclass(frozen=True, slots=True)
class PatientFields:
    """Identifying attributes of one study (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study)."""

    patient_name: str | None
    patient_id: str | None
    accession_number: str | None


def patient_fields(db: Database, study_uids: Iterable[str]) -> dict[str, PatientFields]:
    """Study Instance UID -> its :class:`PatientFields`, for the studies of *study_uids*."""
    uids = list(dict.fromkeys(study_uids))
    if not uids:
        return {}
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(
                Study.study_instance_uid,
                Study.patient_name,
                Study.patient_id,
                Study.accession_number,
            ).where(Study.study_instance_uid.in_(uids))
        ).all()
    return {
        row.study_instance_uid: PatientFields(
            row.patient_name, row.patient_id, row.accession_number
        )
        for row in rows
    }

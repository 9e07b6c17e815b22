"""What the web console reads: studies searched and paged, one study's series with
how the rules judged them, a job's timeline, destinations and queues now.

Storage owns the SQL; :mod:`dicom_node.web.console` renders these records.
Every function is a few queries whatever the size of the tables (no query
per row), and pages are bounded by their ``limit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, exists, func, or_, select

from storage.db import Database
from storage.destination_stats import delivery_counts
from storage.jobs import DeliveryStatus, JobStatus, as_utc
from storage.models import Completion, Delivery, Instance, Job, Result, Series, Study

__all__ = [
    "DestinationState",
    "JobFiles",
    "JobTimeline",
    "PipelineActivity",
    "PipelineQueue",
    "SeriesDetail",
    "StudyDetail",
    "StudyFilter",
    "StudyPage",
    "StudyRow",
    "TimelineEvent",
    "destination_states",
    "instances_since",
    "job_files",
    "job_timeline",
    "pipeline_activity",
    "pipeline_queues",
    "recent_series",
    "series_routing_attributes",
    "search_studies",
    "study_detail",
    "study_of",
]


# -- studies -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StudyFilter:
    """What the studies page searches for (every field optional; all must hold)."""

    text: str | None = None
    """A StudyInstanceUID, or a substring of the study description; with
    ``patient_fields`` also of PatientID, PatientName and AccessionNumber."""
    patient_fields: bool = False
    """Whether *text* may match patient identifiers (only for roles that see them)."""
    modality: str | None = None
    """Studies with a series of this modality."""
    state: str | None = None
    """Studies with a job in this state (``queued``, ``failed``, ...), or
    ``unrouted``: studies with a series that no rule matched."""
    date_from: str | None = None
    """StudyDate on or after (``YYYYMMDD``)."""
    date_to: str | None = None


@dataclass(frozen=True, slots=True)
class StudyRow:
    """One study in the list."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    last_received_at: datetime | None
    modalities: tuple[str, ...]
    series: int
    instances: int
    jobs: dict[str, int]
    """Its jobs counted by status."""


@dataclass(frozen=True, slots=True)
class StudyPage:
    """One page of :func:`search_studies`."""

    total: int
    rows: list[StudyRow]


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _study_where(where: StudyFilter) -> list[Any]:
    clauses: list[Any] = []
    if where.text:
        text = where.text.strip()
        pattern = _like(text.lower())
        options = [
            Study.study_instance_uid == text,
            func.lower(Study.study_description).like(pattern, escape="\\"),
        ]
        if where.patient_fields:
            options += [
                Study.patient_id == text,
                Study.accession_number == text,
                func.lower(Study.patient_name).like(pattern, escape="\\"),
            ]
        clauses.append(or_(*options))
    if where.modality:
        clauses.append(
            exists().where(
                Series.study_id == Study.id, func.upper(Series.modality) == where.modality.upper()
            )
        )
    if where.state == "unrouted":
        clauses.append(
            exists().where(
                Series.study_id == Study.id,
                Series.routing.is_not(None),
                ~exists().where(Completion.series_id == Series.id),
                ~exists().where(Completion.level == "study", Completion.study_id == Study.id),
            )
        )
    elif where.state:
        clauses.append(exists().where(Job.study_id == Study.id, Job.status == where.state))
    if where.date_from:
        clauses.append(Study.study_date >= where.date_from)
    if where.date_to:
        clauses.append(Study.study_date <= where.date_to)
    return clauses


def search_studies(db: Database, where: StudyFilter, limit: int = 25, offset: int = 0) -> StudyPage:
    """Studies matching *where*, most recently received first, a page at a time."""
    clauses = _study_where(where)
    with db.engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(Study).where(*clauses)).scalar_one()
        studies = conn.execute(
            select(Study.__table__)
            .where(*clauses)
            .order_by(Study.last_received_at.desc(), Study.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        ids = [s.id for s in studies]
        series: dict[int, list[Any]] = {}
        jobs: dict[int, dict[str, int]] = {}
        if ids:
            for row in conn.execute(
                select(
                    Series.study_id,
                    Series.modality,
                    func.count(Instance.id).label("instances"),
                )
                .outerjoin(Instance, Instance.series_id == Series.id)
                .where(Series.study_id.in_(ids))
                .group_by(Series.id)
            ):
                series.setdefault(row.study_id, []).append(row)
            for study_id, status, n in conn.execute(
                select(Job.study_id, Job.status, func.count())
                .where(Job.study_id.in_(ids))
                .group_by(Job.study_id, Job.status)
            ):
                jobs.setdefault(int(study_id), {})[str(status)] = int(n)
    rows = []
    for s in studies:
        its = series.get(s.id, [])
        rows.append(
            StudyRow(
                study_instance_uid=s.study_instance_uid,
                patient_id=s.patient_id,
                patient_name=s.patient_name,
                accession_number=s.accession_number,
                study_date=s.study_date,
                study_description=s.study_description,
                last_received_at=as_utc(s.last_received_at),
                modalities=tuple(sorted({str(r.modality) for r in its if r.modality})),
                series=len(its),
                instances=sum(int(r.instances) for r in its),
                jobs=dict(sorted(jobs.get(s.id, {}).items())),
            )
        )
    return StudyPage(int(total), rows)


# -- one study ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SeriesDetail:
    """One series of a study, with how the rules judged it."""

    series_instance_uid: str
    series_number: int | None
    modality: str | None
    series_description: str | None
    body_part_examined: str | None
    manufacturer: str | None
    calling_ae: str | None
    instances: int
    bytes: int
    first_received_at: datetime | None
    last_received_at: datetime | None
    collected_at: datetime | None
    purged_at: datetime | None
    routing: dict[str, Any] | None
    """``series.routing`` as the collector kept it; ``None`` before it judged the series."""
    routed_at: datetime | None
    completions: tuple[str, ...]
    """The rules it was completed for."""


@dataclass(frozen=True, slots=True)
class StudyDetail:
    """One study with its series (by Series Number) and the ids of its jobs (newest first)."""

    study_instance_uid: str
    patient_id: str | None
    patient_name: str | None
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    first_received_at: datetime | None
    last_received_at: datetime | None
    series: tuple[SeriesDetail, ...]
    job_ids: tuple[int, ...]


def study_detail(db: Database, study_instance_uid: str) -> StudyDetail | None:
    """One study (:class:`StudyDetail`); ``None`` when it was not received."""
    with db.engine.connect() as conn:
        study = conn.execute(
            select(Study.__table__).where(Study.study_instance_uid == study_instance_uid)
        ).one_or_none()
        if study is None:
            return None
        series = conn.execute(
            select(
                Series.__table__,
                func.count(Instance.id).label("instances"),
                func.coalesce(func.sum(Instance.size_bytes), 0).label("bytes"),
            )
            .outerjoin(Instance, Instance.series_id == Series.id)
            .where(Series.study_id == study.id)
            .group_by(Series.id)
            .order_by(Series.series_number, Series.id)
        ).all()
        completed: dict[int, list[str]] = {}
        for series_id, rule in conn.execute(
            select(Completion.series_id, Completion.rule).where(
                Completion.study_id == study.id, Completion.series_id.is_not(None)
            )
        ):
            completed.setdefault(int(series_id or 0), []).append(str(rule))
        job_ids = conn.execute(
            select(Job.id).where(Job.study_id == study.id).order_by(Job.id.desc())
        ).scalars()
        job_ids_t = tuple(int(i) for i in job_ids)
    return StudyDetail(
        study_instance_uid=study.study_instance_uid,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        accession_number=study.accession_number,
        study_date=study.study_date,
        study_description=study.study_description,
        first_received_at=as_utc(study.first_received_at),
        last_received_at=as_utc(study.last_received_at),
        series=tuple(
            SeriesDetail(
                series_instance_uid=s.series_instance_uid,
                series_number=s.series_number,
                modality=s.modality,
                series_description=s.series_description,
                body_part_examined=s.body_part_examined,
                manufacturer=s.manufacturer,
                calling_ae=s.calling_ae,
                instances=int(s.instances),
                bytes=int(s.bytes),
                first_received_at=as_utc(s.first_received_at),
                last_received_at=as_utc(s.last_received_at),
                collected_at=as_utc(s.collected_at),
                purged_at=as_utc(s.purged_at),
                routing=s.routing,
                routed_at=as_utc(s.routed_at),
                completions=tuple(sorted(completed.get(s.id, []))),
            )
            for s in series
        ),
        job_ids=job_ids_t,
    )


def study_of(db: Database, uid: str) -> str | None:
    """The StudyInstanceUID of a series or study UID (``None``: neither was received)."""
    with db.engine.connect() as conn:
        found = conn.execute(
            select(Study.study_instance_uid)
            .join(Series, Series.study_id == Study.id)
            .where(Series.series_instance_uid == uid)
        ).scalar_one_or_none()
        if found is None:
            found = conn.execute(
                select(Study.study_instance_uid).where(Study.study_instance_uid == uid)
            ).scalar_one_or_none()
    return None if found is None else str(found)


def recent_series(db: Database, limit: int = 50) -> list[tuple[str, str | None, str | None]]:
    """``(SeriesInstanceUID, Modality, SeriesDescription)`` of the latest series received."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(Series.series_instance_uid, Series.modality, Series.series_description)
            .order_by(Series.last_received_at.desc(), Series.id.desc())
            .limit(limit)
        ).all()
    return [(str(r[0]), r[1], r[2]) for r in rows]


def series_routing_attributes(db: Database, series_instance_uid: str) -> Any | None:
    """The row the collector routes a series by (``None`` when not received):
    its columns and ``attributes``, as :func:`dicom_node.collect.collector.series_attributes`
    reads them."""
    with db.engine.connect() as conn:
        return conn.execute(
            select(Series.__table__).where(Series.series_instance_uid == series_instance_uid)
        ).one_or_none()


# -- one job -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """One step of a job's life."""

    at: datetime | None
    what: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class JobTimeline:
    """From the first instance received to the last object sent, in order."""

    events: tuple[TimelineEvent, ...]
    stages: dict[str, float] = field(default_factory=dict)
    """Seconds per stage of the last attempt (the job's ``timings``)."""


def job_timeline(db: Database, job_id: int) -> JobTimeline | None:
    """The timeline of one job (``None`` for an unknown job)."""
    with db.engine.connect() as conn:
        job = conn.execute(select(Job.__table__).where(Job.id == job_id)).one_or_none()
        if job is None:
            return None
        received = conn.execute(
            select(func.min(Series.first_received_at), func.max(Series.last_received_at)).where(
                Series.id.in_([int(s) for s in job.series_ids or ()])
            )
        ).one()
        completion = conn.execute(
            select(Completion.completed_at, Completion.forced, Completion.instance_count).where(
                Completion.id == job.completion_id
            )
        ).one_or_none()
        sent = conn.execute(
            select(
                Delivery.destination,
                func.count(),
                func.min(Delivery.sent_at),
                func.max(Delivery.sent_at),
            )
            .join(Result, Result.id == Delivery.result_id)
            .where(Result.job_id == job_id, Delivery.status == DeliveryStatus.SENT.value)
            .group_by(Delivery.destination)
        ).all()
        written = conn.execute(
            select(func.count(), func.max(Result.created_at)).where(Result.job_id == job_id)
        ).one()
    events = [
        TimelineEvent(as_utc(received[0]), "first instance received"),
        TimelineEvent(as_utc(received[1]), "last instance received"),
    ]
    if completion is not None:
        how = "forced by an operator" if completion.forced else "quiet period over"
        events.append(
            TimelineEvent(
                as_utc(completion.completed_at),
                "complete",
                f"{completion.instance_count} instance(s), {how}",
            )
        )
    events.append(TimelineEvent(as_utc(job.created_at), "queued", f"rule {job.rule}"))
    if job.started_at is not None:
        events.append(
            TimelineEvent(as_utc(job.started_at), "started", f"attempt {job.attempts}")
        )
    if written[0]:
        events.append(
            TimelineEvent(as_utc(written[1]), "results written", f"{written[0]} object(s)")
        )
    if job.finished_at is not None:
        events.append(TimelineEvent(as_utc(job.finished_at), f"finished: {job.status}"))
    for destination, n, first, last in sent:
        first_at = as_utc(first)
        since = f", the first at {first_at:%H:%M:%S}" if first_at is not None and n > 1 else ""
        what = f"sent to {destination}"
        events.append(TimelineEvent(as_utc(last), what, f"{n} object(s){since}"))
    ordered = sorted(
        (e for e in events if e.at is not None), key=lambda e: e.at or datetime.min
    )
    return JobTimeline(tuple(ordered), dict(job.timings or {}))


@dataclass(frozen=True, slots=True)
class JobFiles:
    """Where a job's source instances and result objects are (paths as stored:
    instances relative to the spool, results relative to the results folder)."""

    source_paths: tuple[str, ...]
    result_paths: tuple[tuple[str, str], ...]
    """``(kind, path)`` of each result object not purged."""


def job_files(db: Database, job_id: int) -> JobFiles | None:
    """The files of a job's series and results (``None`` for an unknown job)."""
    with db.engine.connect() as conn:
        series_ids = conn.execute(select(Job.series_ids).where(Job.id == job_id)).scalar()
        if series_ids is None:
            return None
        sources = conn.execute(
            select(Instance.path)
            .where(
                Instance.series_id.in_([int(s) for s in series_ids]),
                Instance.purged_at.is_(None),
            )
            .order_by(Instance.id)
        ).scalars()
        source_paths = tuple(str(p) for p in sources)
        results = conn.execute(
            select(Result.kind, Result.path)
            .where(Result.job_id == job_id, Result.purged_at.is_(None))
            .order_by(Result.id)
        ).all()
    return JobFiles(source_paths, tuple((str(k), str(p)) for k, p in results))


# -- the node now ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class DestinationState:
    """The deliveries of one destination now."""

    name: str
    by_status: dict[str, int]
    oldest_pending_at: datetime | None
    last_sent_at: datetime | None
    last_error: str | None
    """The error of its most recent failed or retried delivery."""
    last_error_at: datetime | None


def destination_states(db: Database, names: Sequence[str]) -> dict[str, DestinationState]:
    """Every destination of *names* (and any other one deliveries name), by name."""
    counts = delivery_counts(db)
    with db.engine.connect() as conn:
        times = conn.execute(
            select(
                Delivery.destination,
                func.min(Delivery.created_at).filter(
                    Delivery.status == DeliveryStatus.PENDING.value
                ),
                func.max(Delivery.sent_at),
            ).group_by(Delivery.destination)
        ).all()
        latest_error = (
            select(Delivery.destination, func.max(Delivery.id).label("id"))
            .where(Delivery.error.is_not(None), Delivery.status != DeliveryStatus.CANCELLED.value)
            .group_by(Delivery.destination)
            .subquery()
        )
        errors = conn.execute(
            select(Delivery.destination, Delivery.error, Delivery.next_attempt_at).join(
                latest_error,
                and_(
                    Delivery.id == latest_error.c.id,
                    Delivery.destination == latest_error.c.destination,
                ),
            )
        ).all()
    by_name: dict[str, dict[str, Any]] = {n: {"by_status": {}} for n in names}
    for dest, by_status in counts.items():
        by_name.setdefault(dest, {"by_status": {}})["by_status"].update(by_status)
    for dest, oldest, last in times:
        by_name.setdefault(dest, {"by_status": {}}).update(oldest=oldest, last=last)
    for dest, error, at in errors:
        by_name.setdefault(dest, {"by_status": {}}).update(error=error, error_at=at)
    return {
        name: DestinationState(
            name=name,
            by_status=dict(sorted(v["by_status"].items())),
            oldest_pending_at=as_utc(v.get("oldest")),
            last_sent_at=as_utc(v.get("last")),
            last_error=v.get("error"),
            last_error_at=as_utc(v.get("error_at")),
        )
        for name, v in by_name.items()
    }


@dataclass(frozen=True, slots=True)
class PipelineQueue:
    """Jobs of one pipeline waiting and running now."""

    pipeline: str
    queued: int
    running: int


def pipeline_queues(db: Database) -> list[PipelineQueue]:
    """Queued and running jobs per pipeline, by pipeline name."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(Job.pipeline, Job.status, func.count())
            .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
            .group_by(Job.pipeline, Job.status)
        ).all()
    found: dict[str, dict[str, int]] = {}
    for pipeline, status, n in rows:
        found.setdefault(str(pipeline), {})[str(status)] = int(n)
    return [
        PipelineQueue(p, v.get(JobStatus.QUEUED.value, 0), v.get(JobStatus.RUNNING.value, 0))
        for p, v in sorted(found.items())
    ]


def instances_since(db: Database, since: datetime, scan: int = 50_000) -> int:
    """Instances received at or after *since* (the live instances/s), among the
    latest *scan* rows: a range of the primary key, so the query stays cheap on a
    table of millions without an index on ``received_at`` (which every C-STORE
    would pay for)."""
    with db.engine.connect() as conn:
        newest = conn.execute(select(func.max(Instance.id))).scalar_one_or_none()
        if newest is None:
            return 0
        return int(
            conn.execute(
                select(func.count())
                .select_from(Instance)
                .where(Instance.id > int(newest) - scan, Instance.received_at >= since)
            ).scalar_one()
        )


@dataclass(frozen=True, slots=True)
class PipelineActivity:
    """What one pipeline did last."""

    pipeline: str
    last_finished_at: datetime | None
    last_status: str | None
    last_load_s: float | None
    """The ``load`` stage of its last finished job (near 0 when the model was warm)."""
    result_path: str | None
    """Its newest SEG or SR not purged (relative to the results folder): the
    Device UID it was written with is read from there."""


def pipeline_activity(db: Database) -> dict[str, PipelineActivity]:
    """The last finished job and newest SEG/SR of every pipeline that ran, by name."""
    with db.engine.connect() as conn:
        last_job = (
            select(Job.pipeline, func.max(Job.id).label("id"))
            .where(Job.finished_at.is_not(None))
            .group_by(Job.pipeline)
            .subquery()
        )
        jobs = conn.execute(
            select(Job.pipeline, Job.finished_at, Job.status, Job.timings).join(
                last_job, Job.id == last_job.c.id
            )
        ).all()
        newest = (
            select(Job.pipeline, func.max(Result.id).label("id"))
            .join(Job, Job.id == Result.job_id)
            .where(Result.kind.in_(["seg", "sr"]), Result.purged_at.is_(None))
            .group_by(Job.pipeline)
            .subquery()
        )
        results: dict[str, str] = {
            str(pipeline): str(path)
            for pipeline, path in conn.execute(
                select(newest.c.pipeline, Result.path).join(newest, Result.id == newest.c.id)
            )
        }
    out: dict[str, PipelineActivity] = {}
    for pipeline, finished, status, timings in jobs:
        load = (timings or {}).get("load")
        out[str(pipeline)] = PipelineActivity(
            pipeline=str(pipeline),
            last_finished_at=as_utc(finished),
            last_status=str(status),
            last_load_s=float(load) if isinstance(load, (int, float)) else None,
            result_path=results.get(pipeline),
        )
    return out

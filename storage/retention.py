"""Retention in the database: which series may be purged, marking them, deleting their files.

A series is *purgeable* when everything the node does with it is over:

* it is settled: the collector has seen every instance it holds (its
  ``collected_at`` covers its ``last_received_at``, and so does its study's),
  so no completion is pending;
* no job of its study is ``queued`` or ``running`` (a job waiting for a
  retry is ``queued``);
* no result of a job of its study has a ``pending`` delivery.  ``sent``,
  ``cancelled`` and ``failed`` (failed for good, after the last attempt)
  deliveries are final: a failed delivery does not hold its files forever;
  ``dicom-node jobs retry`` re-sends it as long as the files are there, and
  refuses with :class:`storage.jobs.JobPurged` once they are gone.

Purging a series deletes the files of its instances and those of the results
of the jobs that ran on it (series-level jobs of that series, study-level
jobs of its study); every row stays, with ``purged_at`` set, so history, the
job lists and the audit trail keep working.

Crash-safe order: the rows are **marked first** (one transaction), then the
files are deleted.  From the mark on, nothing reads them: a job reads only
instances without a mark (:meth:`storage.jobs.JobQueue.series_instances`),
and a purged job cannot be retried.  A crash between the two steps leaves
files of marked rows behind, which :meth:`RetentionStore.sweep` deletes at
the next start.  The deletion holds the rows' write locks, and the receiver
takes the same lock before it restores a re-sent copy of a purged instance
(:mod:`storage.received` clears its mark), so a file received again is never
deleted.  A *new* instance of a purged series gets a row of its own, without
a mark: it is kept, the series is collected again (a new revision), and it is
purged in its turn once that is processed and old enough.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, true, update
from sqlalchemy.engine import Connection

from storage.db import Database
from storage.jobs import DeliveryStatus, JobStatus, as_utc
from storage.models import Completion, Delivery, Instance, Job, Result, Series, Study, utcnow

__all__ = [
    "MarkedSeries",
    "PurgeCandidate",
    "RetentionStore",
    "job_purged_at",
    "purged_jobs",
]

LOGGER = logging.getLogger(__name__)

_ACTIVE_JOB = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass(frozen=True)
class PurgeCandidate:
    """A purgeable series and what purging it would free."""

    series_id: int
    series_instance_uid: str
    study_id: int
    study_instance_uid: str
    last_received_at: datetime
    instances: int
    instance_bytes: int
    results: int = 0
    result_bytes: int = 0

    @property
    def bytes(self) -> int:
        """Bytes of instance and result files together."""
        return self.instance_bytes + self.result_bytes


@dataclass
class MarkedSeries:
    """A series whose rows were marked purged: the files still to delete."""

    candidate: PurgeCandidate
    instance_ids: list[int] = field(default_factory=list)
    result_ids: list[int] = field(default_factory=list)
    job_ids: list[int] = field(default_factory=list)


def _settled(series: bool, study: bool) -> Any:
    """Series (joined with their study) whose completion is not pending.

    *series*: the collector settles series (the node has rules); *study*: it
    settles studies too (study-level rules).  A node without rules never
    collects anything, and nothing of it is pending.
    """
    checks: list[Any] = []
    if series:
        checks += [
            Series.collected_at.is_not(None),
            Series.last_received_at <= Series.collected_at,
        ]
    if study:
        checks += [
            Study.collected_at.is_not(None),
            Study.last_received_at <= Study.collected_at,
        ]
    return and_(true(), *checks)


def _study_busy() -> Any:
    """The study (of the joined series) has a queued/running job or a pending delivery."""
    active_job = exists().where(Job.study_id == Series.study_id, Job.status.in_(_ACTIVE_JOB))
    pending = exists().where(
        Delivery.status == DeliveryStatus.PENDING.value,
        Delivery.result_id == Result.id,
        Result.job_id == Job.id,
        Job.study_id == Series.study_id,
    )
    return or_(active_job, pending)


class RetentionStore:
    """Purgeable series, purge marks and file deletion on *db*.

    Parameters
    ----------
    db:
        The node's database (schema upgraded).
    spool_root, results_root:
        The folders instance paths and result paths are relative to.
    series_rules, study_rules:
        Whether the collector settles series (the node has rules) and studies
        (study-level rules): what "completion pending" means.
    """

    def __init__(
        self,
        db: Database,
        spool_root: Path,
        results_root: Path,
        *,
        series_rules: bool = True,
        study_rules: bool = False,
    ) -> None:
        self.db = db
        self.series_rules = series_rules
        self.study_rules = study_rules
        self.spool_root = Path(spool_root)
        self.results_root = Path(results_root)

    # -- reading ----------------------------------------------------------------
    def candidates(
        self,
        *,
        older_than: datetime | None = None,
        limit: int = 100,
        after: PurgeCandidate | None = None,
    ) -> list[PurgeCandidate]:
        """Purgeable series, the least recently received first.

        *older_than*: only series last received before it (``None``: any age).
        *after*: only series that come after this one in that order (to page
        on, e.g. in a dry run, which purges nothing).
        """
        with self.db.engine.connect() as conn:
            return self._candidates(conn, older_than=older_than, limit=limit, after=after)

    def _candidates(
        self,
        conn: Connection,
        *,
        older_than: datetime | None = None,
        limit: int | None = 100,
        after: PurgeCandidate | None = None,
        series_ids: Sequence[int] | None = None,
    ) -> list[PurgeCandidate]:
        # Pick the series first (index on last_received_at, an EXISTS per series),
        # then count the instances of those only: no pass over the whole table.
        has_live = exists().where(Instance.series_id == Series.id, Instance.purged_at.is_(None))
        query = (
            select(
                Series.id,
                Series.series_instance_uid,
                Series.study_id,
                Study.study_instance_uid,
                Series.last_received_at,
            )
            .join(Study, Study.id == Series.study_id)
            .where(has_live, _settled(self.series_rules, self.study_rules), ~_study_busy())
            .order_by(Series.last_received_at, Series.id)
        )
        if older_than is not None:
            query = query.where(Series.last_received_at < older_than)
        if after is not None:
            query = query.where(
                or_(
                    Series.last_received_at > after.last_received_at,
                    and_(
                        Series.last_received_at == after.last_received_at,
                        Series.id > after.series_id,
                    ),
                )
            )
        if series_ids is not None:
            query = query.where(Series.id.in_(list(series_ids)))
        if limit is not None:
            query = query.limit(limit)
        picked = conn.execute(query).all()
        counts = {
            int(r.series_id): (int(r.n), int(r.nbytes))
            for r in conn.execute(
                select(
                    Instance.series_id,
                    func.count().label("n"),
                    func.coalesce(func.sum(Instance.size_bytes), 0).label("nbytes"),
                )
                .where(
                    Instance.series_id.in_([row.id for row in picked]),
                    Instance.purged_at.is_(None),
                )
                .group_by(Instance.series_id)
            )
        }
        jobs = conn.execute(
            select(Job.id, Job.study_id, Completion.series_id, Completion.level)
            .join(Completion, Completion.id == Job.completion_id)
            .where(Job.study_id.in_({int(row.study_id) for row in picked}))
        ).all()
        per_job = {
            int(r.job_id): (int(r.n), int(r.nbytes))
            for r in conn.execute(
                select(
                    Result.job_id,
                    func.count().label("n"),
                    func.coalesce(func.sum(Result.size_bytes), 0).label("nbytes"),
                )
                .where(Result.job_id.in_([j.id for j in jobs]), Result.purged_at.is_(None))
                .group_by(Result.job_id)
            )
        }
        out: list[PurgeCandidate] = []
        for row in picked:
            n_live, live_bytes = counts.get(int(row.id), (0, 0))
            mine = [  # its series-level jobs, its study's study-level ones
                per_job.get(int(j.id), (0, 0))
                for j in jobs
                if j.study_id == row.study_id and (j.series_id == row.id or j.level == "study")
            ]
            n_results, result_bytes = sum(n for n, _ in mine), sum(b for _, b in mine)
            out.append(
                PurgeCandidate(
                    series_id=int(row.id),
                    series_instance_uid=str(row.series_instance_uid),
                    study_id=int(row.study_id),
                    study_instance_uid=str(row.study_instance_uid),
                    last_received_at=as_utc(row.last_received_at) or utcnow(),
                    instances=n_live,
                    instance_bytes=live_bytes,
                    results=int(n_results),
                    result_bytes=int(result_bytes),
                )
            )
        return out

    # -- purging ----------------------------------------------------------------
    def mark(
        self, candidates: Sequence[PurgeCandidate], now: datetime | None = None
    ) -> list[MarkedSeries]:
        """Mark the rows of *candidates* purged (step one), in one transaction.

        The transaction first takes the write locks of the candidates' series
        and jobs (an ``UPDATE`` that changes nothing: on SQLite the database's
        write lock, on PostgreSQL those rows'), so a concurrent ``jobs retry``
        waits, then is refused, or has already made its deliveries pending;
        then every candidate is checked again, and one that is no longer
        purgeable (a late instance, a retried delivery) is left alone.
        Returns what was marked, with the figures as they were at marking.
        """
        now = now or utcnow()
        ids = [c.series_id for c in candidates]
        if not ids:
            return []
        with self.db.engine.begin() as conn:
            conn.execute(
                update(Series).where(Series.id.in_(ids)).values(purged_at=Series.purged_at)
            )
            jobs = conn.execute(
                select(Job.id, Job.study_id, Completion.series_id, Completion.level)
                .join(Completion, Completion.id == Job.completion_id)
                .where(Job.study_id.in_({c.study_id for c in candidates}))
            ).all()
            if jobs:
                conn.execute(
                    update(Job)
                    .where(Job.id.in_([j.id for j in jobs]))
                    .values(purged_at=Job.purged_at)
                )
            current = self._candidates(conn, limit=None, series_ids=ids)
            if len(current) < len(ids):
                LOGGER.info(
                    "retention: %d series changed since they were picked; kept",
                    len(ids) - len(current),
                )
            if not current:
                return []
            kept = [c.series_id for c in current]
            instances: dict[int, list[int]] = {}
            for inst_id, series_id in conn.execute(
                select(Instance.id, Instance.series_id).where(
                    Instance.series_id.in_(kept), Instance.purged_at.is_(None)
                )
            ):
                instances.setdefault(int(series_id), []).append(int(inst_id))
            conn.execute(
                update(Instance)
                .where(Instance.series_id.in_(kept), Instance.purged_at.is_(None))
                .values(purged_at=now)
            )
            conn.execute(update(Series).where(Series.id.in_(kept)).values(purged_at=now))
            marked: list[MarkedSeries] = []
            for cand in current:
                job_ids = [
                    int(j.id)
                    for j in jobs
                    if j.study_id == cand.study_id
                    and (j.series_id == cand.series_id or j.level == "study")
                ]
                marked.append(MarkedSeries(cand, instances.get(cand.series_id, []), [], job_ids))
            purged_job_ids = sorted({j for m in marked for j in m.job_ids})
            if purged_job_ids:
                results: dict[int, list[int]] = {}
                for res_id, job_id in conn.execute(
                    select(Result.id, Result.job_id).where(
                        Result.job_id.in_(purged_job_ids), Result.purged_at.is_(None)
                    )
                ):
                    results.setdefault(int(job_id), []).append(int(res_id))
                conn.execute(
                    update(Result)
                    .where(Result.job_id.in_(purged_job_ids), Result.purged_at.is_(None))
                    .values(purged_at=now)
                )
                conn.execute(
                    update(Job)
                    .where(Job.id.in_(purged_job_ids))
                    .values(purged_at=func.coalesce(Job.purged_at, now))
                )
                taken: set[int] = set()
                for m in marked:  # a study-level job's results go with the first series
                    for job_id in m.job_ids:
                        if job_id not in taken:
                            m.result_ids += results.get(job_id, [])
                            taken.add(job_id)
        return marked

    def delete_files(self, marked: Sequence[MarkedSeries]) -> int:
        """Delete the files of rows that are still marked purged (step two).

        Runs in a transaction that first takes the write locks of those rows
        (an ``UPDATE`` that changes nothing), so a receiver restoring a re-sent
        instance waits, or has already cleared its mark and its file stays.
        Returns how many files were deleted.
        """
        instance_ids = [i for m in marked for i in m.instance_ids]
        result_ids = [i for m in marked for i in m.result_ids]
        return self._delete(instance_ids, result_ids)

    def _delete(self, instance_ids: list[int], result_ids: list[int]) -> int:
        deleted = 0
        chunk = 500
        for start in range(0, max(len(instance_ids), len(result_ids)), chunk):
            inst = instance_ids[start : start + chunk]
            res = result_ids[start : start + chunk]
            with self.db.engine.begin() as conn:
                paths: list[Path] = []
                if inst:
                    conn.execute(
                        update(Instance)
                        .where(Instance.id.in_(inst), Instance.purged_at.is_not(None))
                        .values(purged_at=Instance.purged_at)
                    )
                    paths += [
                        self.spool_root / p
                        for p in conn.execute(
                            select(Instance.path).where(
                                Instance.id.in_(inst), Instance.purged_at.is_not(None)
                            )
                        ).scalars()
                    ]
                if res:
                    conn.execute(
                        update(Result)
                        .where(Result.id.in_(res), Result.purged_at.is_not(None))
                        .values(purged_at=Result.purged_at)
                    )
                    paths += [
                        self.results_root / p
                        for p in conn.execute(
                            select(Result.path).where(
                                Result.id.in_(res), Result.purged_at.is_not(None)
                            )
                        ).scalars()
                    ]
                for path in paths:
                    try:
                        path.unlink()
                        deleted += 1
                    except FileNotFoundError:
                        pass
                    if self.results_root in path.parents:
                        # Result folders only: a receiver may be placing a late
                        # instance in a spool folder right now.
                        _remove_empty_parents(path.parent, (self.results_root,))
        return deleted

    def sweep(self, batch: int = 5000) -> int:
        """Delete files left behind by a purge interrupted between its two steps.

        Looks at every row marked purged (in batches of *batch*) and deletes
        its file when it is still there; returns how many were deleted.
        """
        deleted = 0
        for model, root, is_instance in (
            (Instance, self.spool_root, True),
            (Result, self.results_root, False),
        ):
            last = 0
            while True:
                with self.db.engine.connect() as conn:
                    rows = conn.execute(
                        select(model.id, model.path)
                        .where(model.purged_at.is_not(None), model.id > last)
                        .order_by(model.id)
                        .limit(batch)
                    ).all()
                if not rows:
                    break
                last = int(rows[-1].id)
                left = [int(r.id) for r in rows if (root / r.path).exists()]
                if left:
                    deleted += self._delete(left, []) if is_instance else self._delete([], left)
        if deleted:
            LOGGER.warning("retention: deleted %d file(s) left by an interrupted purge", deleted)
        return deleted

    # -- reading ----------------------------------------------------------------
    def usage(self) -> tuple[int, int]:
        """(files, bytes) of instances and results not purged: what the node keeps on disk."""
        with self.db.engine.connect() as conn:
            n_i, b_i = conn.execute(
                select(func.count(), func.coalesce(func.sum(Instance.size_bytes), 0)).where(
                    Instance.purged_at.is_(None)
                )
            ).one()
            n_r, b_r = conn.execute(
                select(func.count(), func.coalesce(func.sum(Result.size_bytes), 0)).where(
                    Result.purged_at.is_(None)
                )
            ).one()
        return int(n_i) + int(n_r), int(b_i) + int(b_r)


def purged_jobs(db: Database, job_ids: Iterable[int]) -> dict[int, datetime]:
    """Of *job_ids*, the purged ones and when (for lists: ``jobs list``, the API)."""
    ids = list(job_ids)
    if not ids:
        return {}
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, Job.purged_at).where(Job.id.in_(ids), Job.purged_at.is_not(None))
        ).all()
    return {int(r.id): as_utc(r.purged_at) or utcnow() for r in rows}


def job_purged_at(db: Database, job_id: int) -> datetime | None:
    """When retention deleted the job's files (``None``: not purged, or no such job)."""
    with db.engine.connect() as conn:
        value = conn.execute(select(Job.purged_at).where(Job.id == job_id)).scalar()
    return as_utc(value)


def _remove_empty_parents(folder: Path, roots: tuple[Path, ...]) -> None:
    """Remove *folder* and its parents while they are empty, stopping at a root."""
    while folder not in roots and any(r in folder.parents for r in roots):
        try:
            os.rmdir(folder)
        except OSError:
            return
        folder = folder.parent

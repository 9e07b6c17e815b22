"""Running jobs: load the series -> pipeline -> result objects -> deliveries.

:func:`run_job` is the job function: a plain callable taking a job ID, so an
executor elsewhere (a Celery task on a GPU machine sharing the database and
the spool volume) can run it as it is.  :class:`WorkerPool` is the embedded
default: threads in ``serve`` that claim due jobs from the database.

A job's result objects are written under ``storage.results_dir`` with UIDs
derived from the seed stored in the job row when it was made, so running it
again after a crash produces the same objects and a re-send is idempotent at
the archive.  Result files are flushed before the rows that point at them are
committed, and the delivery rows are written in that same transaction.

A series on which the pipeline finds nothing (no finding, no segment) still
gets a result: the negative report SR (:func:`dicom_node.results.write_negative_sr`),
unless the job's rule turns it off (``negative_report = false``); the job then
ends with no object for that series and says why in its ``error`` column
(``"<series UID>: no findings; negative report disabled by rule <name>"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node import audit
from dicom_node.config import Settings
from dicom_node.errors import SpoolFileMissing
from dicom_node.logs import redact_quoted_values
from dicom_node.results import PreviousVersion, kind_of, nothing_to_report
from dicom_node.work.gpu_memory import GpuMemoryGate, GpuMemoryTooSmall
from dicom_node.work.series_run import ResultOptions, SeriesFiles, run_series
from storage.db import Database
from storage.durability import fsync_path
from storage.jobs import ClaimedJob, JobQueue, JobStatus, LeaseLost, NewResult, worker_name
from storage.models import utcnow

__all__ = ["JobRunner", "WorkerPool", "job_queue", "run_job"]

LOGGER = logging.getLogger(__name__)


@dataclass
class _SeriesOutcome:
    uid: str
    results: list[NewResult] = field(default_factory=list)
    skipped: str | None = None
    note: str | None = None
    study_uid: str | None = None


def _audit_job(
    job: ClaimedJob,
    status: JobStatus,
    outcomes: list[_SeriesOutcome],
    *,
    results: int = 0,
    error: str | None = None,
) -> None:
    """Record the end of one attempt of *job* in the audit trail (PS3.15 A.5.3.2)."""
    failed = status not in (JobStatus.SUCCEEDED, JobStatus.SKIPPED)
    audit.auditor().record(
        audit.AuditEvent.JOB_RUN,
        outcome=audit.Outcome.SERIOUS_FAILURE if failed else audit.Outcome.SUCCESS,
        actor=job.owner,
        actor_kind="node",
        study_instance_uid=next((o.study_uid for o in outcomes if o.study_uid), None),
        job_id=job.id,
        pipeline=job.pipeline,
        rule=job.rule,
        attempt=job.attempts,
        status=status.value,
        series=[o.uid for o in outcomes],
        results=results,
        error=error[:500] if error else None,
    )


class JobRunner:
    """Runs claimed jobs with the node's settings.

    Parameters
    ----------
    settings:
        The node's settings (pipelines, device, results folder).
    db:
        The node's database.
    queue:
        The job queue (for heartbeats and the final state).
    """

    def __init__(self, settings: Settings, db: Database, queue: JobQueue) -> None:
        self.settings = settings
        self.db = db
        self.queue = queue
        self.spool_root = settings.storage.spool_dir
        self.results_root = settings.storage.results_dir
        self._pipelines: dict[str, Any] = {}
        self._pipeline_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self.gpu = GpuMemoryGate(
            settings.worker.device, headroom_mb=settings.worker.gpu_headroom_mb
        )

    # -- pipelines -------------------------------------------------------------
    def _pipeline(self, name: str) -> tuple[Any, threading.Lock]:
        from ai_models.pipelines import get_pipeline

        with self._lock:
            if name not in self._pipelines:
                device = self.settings.worker.device
                options: dict[str, Any] = {} if device == "auto" else {"device": device}
                self._pipelines[name] = get_pipeline(
                    name, configured=self.settings.pipeline_specs(), **options
                )
                self._pipeline_locks[name] = threading.Lock()
            return self._pipelines[name], self._pipeline_locks[name]

    # -- one job -----------------------------------------------------------------
    def run(self, job: ClaimedJob) -> JobStatus:
        """Run a claimed job to its end state (heart-beating meanwhile)."""
        timings: dict[str, float] = {"wait": max(0.0, (utcnow() - job.created_at).total_seconds())}
        # Imported here: the first job pays for importing torch, not the node's start.
        from ai_models.errors import AIModelsError, PipelineNotApplicable, VolumeError
        from ai_models.pipelines import UnknownPipelineError

        LOGGER.info(
            "job %d started: %s on %d series (rule %s, attempt %d of %d)",
            job.id,
            job.pipeline,
            len(job.series_ids),
            job.rule,
            job.attempts,
            job.max_attempts,
        )
        beat = _Heartbeat(self.queue, job)
        beat.start()
        outcomes: list[_SeriesOutcome] = []
        try:
            pipeline, lock = self._pipeline(job.pipeline)
            for series_id in job.series_ids:
                outcomes.append(self._run_series(job, series_id, pipeline, lock, timings))
            results = [r for o in outcomes for r in o.results]
            skipped = [o for o in outcomes if o.skipped]
            if skipped and len(skipped) == len(outcomes):
                reason = redact_quoted_values("; ".join(f"{o.uid}: {o.skipped}" for o in skipped))
                self.queue.skip(job, reason, timings)
                LOGGER.info("job %d skipped: %s", job.id, reason)
                _audit_job(job, JobStatus.SKIPPED, outcomes, error=reason)
                return JobStatus.SKIPPED
            notes = "; ".join(f"{o.uid}: {o.note}" for o in outcomes if o.note)
            finish = self.queue.complete(job, results, timings, note=notes or None)
        except LeaseLost as exc:
            LOGGER.warning("job %d: %s; another worker has it", job.id, exc)
            return JobStatus.RUNNING
        except UnknownPipelineError as exc:
            return self._fail(job, f"{exc}", timings, outcomes, retryable=False)
        except SpoolFileMissing as exc:  # a shared volume not mounted (yet): try again later
            return self._fail(job, f"{exc}", timings, outcomes, retryable=True)
        except GpuMemoryTooSmall as exc:  # another worker's GPU may be larger
            return self._fail(job, f"{exc}", timings, outcomes, retryable=True)
        except (VolumeError, PipelineNotApplicable) as exc:  # pragma: no cover - per series
            error = f"{type(exc).__name__}: {exc}"
            return self._fail(job, error, timings, outcomes, retryable=False)
        except (AIModelsError, ValueError, TypeError, RuntimeError, OSError, MemoryError) as exc:
            LOGGER.exception("job %d failed", job.id)
            error = f"{type(exc).__name__}: {exc}"
            return self._fail(job, error, timings, outcomes, retryable=True)
        finally:
            beat.stop()
        LOGGER.info(
            "job %d %s: %d result object(s), %d deliverie(s) queued, %s",
            job.id,
            finish.status.value,
            len(finish.result_ids),
            finish.deliveries,
            ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()),
        )
        _audit_job(job, finish.status, outcomes, results=len(finish.result_ids))
        return finish.status

    def _fail(
        self,
        job: ClaimedJob,
        error: str,
        timings: dict[str, float],
        outcomes: list[_SeriesOutcome],
        *,
        retryable: bool,
    ) -> JobStatus:
        error = redact_quoted_values(error)  # a pydicom message may quote patient data
        try:
            status = self.queue.fail(job, error, timings, retryable=retryable)
        except LeaseLost as exc:
            LOGGER.warning("job %d: %s", job.id, exc)
            return JobStatus.RUNNING
        _audit_job(job, status, outcomes, error=error)
        LOGGER.warning(
            "job %d attempt %d failed (%s): %s",
            job.id,
            job.attempts,
            "will retry" if status is JobStatus.QUEUED else "no attempts left",
            error,
        )
        return status

    def _series(self, series_id: int) -> SeriesFiles:
        """The series' image instances as the database knows them (no header is read)."""
        from ai_models.dicom_files import DicomFile, non_image_sop_class

        stored = self.queue.series_instances(series_id)
        files = [
            DicomFile(
                path=self.spool_root / inst.path,
                sop_instance_uid=inst.sop_instance_uid,
                sop_class_uid=inst.sop_class_uid,
                series_instance_uid=stored.series_instance_uid,
                study_instance_uid=stored.study_instance_uid,
                modality=stored.modality,
                number_of_frames=None,
                transfer_syntax_uid=inst.transfer_syntax_uid,
            )
            for inst in stored.instances
            if non_image_sop_class(inst.sop_class_uid) is None
        ]
        missing = [f.path for f in files if not f.path.is_file()]
        if missing:
            raise SpoolFileMissing(
                f"{len(missing)} of {len(files)} file(s) of series {stored.series_instance_uid} "
                f"are not visible on this host (e.g. {missing[0]}): the spool folder "
                f"{self.spool_root} must be the volume the receivers write to"
            )
        return SeriesFiles(stored.series_instance_uid, stored.modality, files)

    def _negative_report(self, job: ClaimedJob) -> bool:
        """The ``negative_report`` option of the job's rule (on for a rule no longer
        in the configuration, as by default)."""
        for rule in self.settings.rules:
            if rule.name == job.rule:
                return rule.negative_report
        return True

    def _previous_versions(self, job: ClaimedJob, source_series_uid: str) -> list[PreviousVersion]:
        """The SRs of the latest earlier revision of this job that produced one."""
        return [PreviousVersion(*r) for r in self.queue.earlier_srs(job, source_series_uid)]

    def _run_series(
        self,
        job: ClaimedJob,
        series_id: int,
        pipeline: Any,
        lock: threading.Lock,
        timings: dict[str, float],
    ) -> _SeriesOutcome:
        series = self._series(series_id)
        uid = series.series_instance_uid
        outcome = _SeriesOutcome(uid)
        if series.files:
            outcome.study_uid = series.files[0].study_instance_uid
        negative_report = self._negative_report(job)
        options = ResultOptions(
            outputs=tuple(job.outputs),
            uid_seed=f"{job.uid_seed}:{uid}",
            previous_sr=self._previous_versions(job, uid) if job.revision else None,
            revision=job.revision,
            sc_slices=self.settings.worker.sc_slices,
            negative_report=negative_report,
        )
        folder = self.results_root / f"job-{job.id}"
        need = int(getattr(pipeline, "gpu_memory_mb", 0) or 0)
        with self.gpu.hold(need, f"job {job.id} ({job.pipeline})") as waited:
            if waited:
                _add(timings, "gpu_wait", waited)
            run = run_series(pipeline, series, options, folder, lock=lock)
        for stage, seconds in run.timings.items():
            _add(timings, stage, seconds)
        if run.skipped is not None or run.result is None:
            outcome.skipped = run.skipped or "no result"
            return outcome
        if nothing_to_report(run.result):
            outcome.note = _no_findings_note(job, negative_report)
            LOGGER.info(
                "job %d, series %s: %s",
                job.id,
                uid,
                outcome.note or "no findings; negative report written",
            )
        t0 = time.perf_counter()
        _flush(run.files, folder)
        for ds, path in zip(run.datasets, run.files, strict=True):
            outcome.results.append(
                NewResult(
                    kind=kind_of(ds),
                    source_series_uid=uid,
                    study_instance_uid=str(ds.StudyInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    sop_class_uid=str(ds.SOPClassUID),
                    path=str(path.relative_to(self.results_root)),
                    size_bytes=path.stat().st_size,
                )
            )
        _add(timings, "write", time.perf_counter() - t0)
        return outcome


def _no_findings_note(job: ClaimedJob, negative_report: bool) -> str | None:
    """Why a series on which the pipeline found nothing has no result object
    (kept with the job); ``None`` when its negative report was written."""
    if not negative_report:
        return f"no findings; negative report disabled by rule {job.rule}"
    if "sr" not in job.outputs:
        return f"no findings; no negative report: rule {job.rule} has no sr output"
    return None


def _add(timings: dict[str, float], stage: str, seconds: float) -> None:
    timings[stage] = round(timings.get(stage, 0.0) + seconds, 4)


def _flush(paths: list[Path], folder: Path) -> None:
    """fsync the result files and their folder (they must outlive a crash)."""
    for path in [*paths, folder]:
        fsync_path(path)


class _Heartbeat:
    """Renews a job's lease every quarter lease while it runs."""

    def __init__(self, queue: JobQueue, job: ClaimedJob) -> None:
        self.queue = queue
        self.job = job
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        interval = max(0.5, self.queue.lease.total_seconds() / 4)
        while not self._stop.wait(interval):
            try:
                if not self.queue.heartbeat(self.job.id, self.job.owner):
                    LOGGER.warning("job %d: lease lost", self.job.id)
                    return
            except Exception:
                LOGGER.exception("job %d: heartbeat failed", self.job.id)


def job_queue(settings: Settings, db: Database) -> JobQueue:
    """The job queue with the ``[worker]`` settings."""
    w = settings.worker
    return JobQueue(db, lease_s=w.lease_s, retry_base_s=w.retry_base_s, retry_max_s=w.retry_max_s)


def run_job(job_id: int, settings: Settings, db: Database | None = None) -> str:
    """The job function: claim job *job_id* and run it; returns its state after.

    For executors other than the local pool.  A job that is not due (already
    running with a live lease, finished, or waiting for its retry time)
    is left alone and its current state returned.
    """
    own_db = db is None
    database = db or Database(settings.storage.database_url)
    try:
        queue = job_queue(settings, database)
        job = queue.claim(worker_name("job"), job_id=job_id)
        if job is None:
            state = queue.status_of(job_id)
            LOGGER.info("job %d is %s: nothing to run", job_id, state)
            return state
        return JobRunner(settings, database, queue).run(job).value
    finally:
        if own_db:
            database.dispose()


class WorkerPool:
    """``[worker] concurrency`` threads that claim and run due jobs.

    Parameters
    ----------
    settings, db:
        The node's settings and database.
    on_idle:
        Called after each job (tests and the sender use it to wake up).
    """

    def __init__(
        self, settings: Settings, db: Database, on_idle: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.queue = job_queue(settings, db)
        self.runner = JobRunner(settings, db, self.queue)
        self.on_idle = on_idle
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []

    def wake(self) -> None:
        """Look for due jobs now (the collector just queued some)."""
        with self._wake:
            self._wake.notify_all()

    def start(self) -> None:
        """Release leases of dead local workers, then start the threads."""
        self.queue.release_dead()
        for i in range(self.settings.worker.concurrency):
            t = threading.Thread(target=self._loop, name=f"worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        if self._threads:
            LOGGER.info(
                "worker pool started: %d thread(s), device %s",
                len(self._threads),
                self.settings.worker.device,
            )

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop claiming; a running job keeps its lease and is resumed later if cut off."""
        self._stop.set()
        self.wake()
        for t in self._threads:
            t.join(timeout=timeout_s)

    def _loop(self) -> None:
        owner = worker_name("worker")
        poll = self.settings.worker.poll_interval_s
        while not self._stop.is_set():
            try:
                job = self.queue.claim(owner)
            except Exception:
                LOGGER.exception("claiming a job failed")
                self._stop.wait(poll * 4)
                continue
            if job is None:
                with self._wake:
                    if not self._stop.is_set():
                        self._wake.wait(poll)
                continue
            try:
                self.runner.run(job)
            except Exception:
                LOGGER.exception("job %d: unexpected error", job.id)
            if self.on_idle is not None:
                self.on_idle()

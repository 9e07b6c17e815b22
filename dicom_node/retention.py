"""Retention: deleting received instances and results the node has finished with.

Two rules (``[retention]``, :class:`dicom_node.config.RetentionSettings`):

* **age**: a purgeable series last received more than ``keep_days`` ago is
  deleted with the results made from it;
* **watermark**: while the spool's or the results folder's file system is
  fuller than ``disk_high_watermark_percent``, the least recently received
  purgeable series go first, however young, until usage is down to the low
  mark.

What is purgeable, and the crash-safe order (rows marked first, files
deleted second), is :mod:`storage.retention`'s.  Each purge is audited as
``retention-purge`` (one event per study: series UIDs, instances, results,
bytes, reason), after DICOM PS3.15 A.5.3.2 (DICOM Study Deleted).  The node
runs :class:`RetentionLoop` in its collector role; ``dicom-node retention
run`` runs one pass.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from dicom_node import audit
from dicom_node.config import Settings
from storage.db import Database
from storage.models import utcnow
from storage.retention import MarkedSeries, PurgeCandidate, RetentionStore

__all__ = ["DiskUsage", "RetentionLoop", "RetentionReport", "Retention", "disk_usage"]

LOGGER = logging.getLogger(__name__)

DiskUsage = Callable[[], tuple[int, int]]
"""Returns (used bytes, total bytes) of the file system retention watches."""


def disk_usage(folders: Sequence[Path]) -> DiskUsage:
    """(used, total) of the fullest file system among *folders* (by percentage)."""

    def usage() -> tuple[int, int]:
        best = (0, 1)
        for folder in folders:
            probe = Path(folder)
            while not probe.exists() and probe != probe.parent:
                probe = probe.parent
            total, used, _free = shutil.disk_usage(probe)
            if total and used / total > best[0] / best[1]:
                best = (used, total)
        return best

    return usage


@dataclass
class ReasonCount:
    """What one rule purged (or would purge)."""

    series: int = 0
    instances: int = 0
    results: int = 0
    bytes: int = 0
    oldest: datetime | None = None

    def add(self, cand: PurgeCandidate) -> None:
        self.series += 1
        self.instances += cand.instances
        self.results += cand.results
        self.bytes += cand.bytes
        if self.oldest is None or cand.last_received_at < self.oldest:
            self.oldest = cand.last_received_at


@dataclass
class RetentionReport:
    """One pass: counts per reason (``age``, ``watermark``), files deleted, disk usage."""

    dry_run: bool
    by_reason: dict[str, ReasonCount] = field(default_factory=dict)
    files_deleted: int = 0
    swept: int = 0
    usage_before: float | None = None
    usage_after: float | None = None

    def reason(self, name: str) -> ReasonCount:
        return self.by_reason.setdefault(name, ReasonCount())

    @property
    def series(self) -> int:
        return sum(r.series for r in self.by_reason.values())


class Retention:
    """One retention pass over *db* with *settings* (``[retention]``, ``[storage]``).

    Parameters
    ----------
    usage:
        Disk usage of the watched file system (default: the fullest of the
        spool's and the results folder's); tests pass their own.
    actor, actor_kind:
        Who the audit trail names (the node, or the user of the CLI).
    """

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        usage: DiskUsage | None = None,
        actor: str = "retention",
        actor_kind: str = "node",
    ) -> None:
        self.settings = settings.retention
        self.store = RetentionStore(
            db,
            settings.storage.spool_dir,
            settings.storage.results_dir,
            series_rules=bool(settings.rules),
            study_rules=any(r.trigger == "study" for r in settings.rules),
        )
        self.usage = usage or disk_usage([settings.storage.spool_dir, settings.storage.results_dir])
        self.actor = actor
        self.actor_kind = actor_kind

    def percent(self) -> float:
        used, total = self.usage()
        return 100.0 * used / total if total else 0.0

    def run(
        self, *, dry_run: bool = False, sweep: bool = True, now: datetime | None = None
    ) -> RetentionReport:
        """Purge by age, then by watermark; with *dry_run* only count what would go.

        *sweep* first deletes files an interrupted purge left behind
        (:meth:`storage.retention.RetentionStore.sweep`; once per process is enough).
        """
        now = now or utcnow()
        report = RetentionReport(dry_run=dry_run)
        cfg = self.settings
        batch = cfg.batch_size
        if sweep and not dry_run:
            report.swept = self.store.sweep()
        # A real pass pages on by itself (what it purged is no longer a candidate,
        # what changed meanwhile is passed over); a dry run pages with a cursor.
        last: PurgeCandidate | None = None
        if cfg.keep_days is not None:
            cutoff = now - timedelta(days=cfg.keep_days)
            while cands := self.store.candidates(older_than=cutoff, limit=batch, after=last):
                self._purge(cands, "age", report, now)
                last = cands[-1]
        high, low = cfg.disk_high_watermark_percent, cfg.low_watermark
        if high is not None and low is not None:
            used, total = self.usage()
            if dry_run and "age" in report.by_reason:
                used -= report.by_reason["age"].bytes  # what the age rule would free
            report.usage_before = 100.0 * used / total if total else 0.0
            floor = int(total * low / 100.0)
            last = None
            while report.usage_before > high and used > floor:
                cands = self.store.candidates(limit=batch, after=last)
                if not cands:
                    LOGGER.warning(
                        "retention: disk %.1f%% full, above the %.0f%% watermark, and "
                        "nothing more may be purged (the rest is still being processed)",
                        100.0 * used / total if total else 0.0,
                        high,
                    )
                    break
                picked: list[PurgeCandidate] = []
                for cand in cands:
                    picked.append(cand)
                    used -= cand.bytes
                    if used <= floor:
                        break
                self._purge(picked, "watermark", report, now)
                last = picked[-1]
                if not dry_run:
                    used, total = self.usage()
            report.usage_after = 100.0 * used / total if total else 0.0
        return report

    def _purge(
        self, cands: list[PurgeCandidate], reason: str, report: RetentionReport, now: datetime
    ) -> None:
        if report.dry_run:
            for cand in cands:
                report.reason(reason).add(cand)
            return
        marked = self.store.mark(cands, now)
        report.files_deleted += self.store.delete_files(marked)
        for m in marked:
            report.reason(reason).add(m.candidate)
        self._audit(marked, reason)
        if marked:
            LOGGER.info(
                "retention (%s): purged %d series, %d instance(s), %d result(s), %d bytes",
                reason,
                len(marked),
                sum(m.candidate.instances for m in marked),
                sum(m.candidate.results for m in marked),
                sum(m.candidate.bytes for m in marked),
            )

    def _audit(self, marked: list[MarkedSeries], reason: str) -> None:
        by_study: dict[str, list[MarkedSeries]] = {}
        for m in marked:
            by_study.setdefault(m.candidate.study_instance_uid, []).append(m)
        for study_uid, items in by_study.items():
            audit.auditor().record(
                audit.AuditEvent.RETENTION_PURGE,
                outcome=audit.Outcome.SUCCESS,
                actor=self.actor,
                actor_kind=self.actor_kind,
                study_instance_uid=study_uid,
                series=[m.candidate.series_instance_uid for m in items],
                instances=sum(m.candidate.instances for m in items),
                results=sum(m.candidate.results for m in items),
                bytes=sum(m.candidate.bytes for m in items),
                jobs=sorted({j for m in items for j in m.job_ids}),
                reason=reason,
            )


class RetentionLoop:
    """Runs :class:`Retention` every ``[retention] interval_s`` in a thread of its own."""

    def __init__(self, settings: Settings, db: Database, *, usage: DiskUsage | None = None):
        self.retention = Retention(settings, db, usage=usage)
        self.interval_s = settings.retention.interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        first = True
        while not self._stop.is_set():
            try:
                self.retention.run(sweep=first)
                first = False
            except Exception:  # noqa: BLE001 - the loop must survive a bad pass
                LOGGER.exception("retention pass failed; trying again later")
            self._stop.wait(self.interval_s)

"""Completion: when is a series (or study) whole, and which jobs does it make.

DICOM has no end-of-series signal (PS3.4 B.2 stores instances one by one),
so a series is complete when no instance of it arrived for the quiet period
of a rule that matches it (``quiet_period_s``); for a rule with
``trigger = "study"`` the whole study must be quiet.  Completion is recorded
as a :class:`~storage.models.Completion` row (the instance count and the time
of the last instance) together with one queued job per pipeline of the rule,
in one transaction.

An instance that arrives after completion changes that snapshot; once the
series is quiet again the completion's ``revision`` goes up and new jobs are
made: their results supersede the earlier ones (the SR names its
predecessor).  Queued jobs of the earlier revision are marked superseded and
their unsent deliveries cancelled.  ``dicom-node complete UID`` forces
completion without waiting.

The collector polls the database, so it works the same when receivers run in
other processes; it only reads rows the receivers wrote.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError, OperationalError

from dicom_node.config import RuleSettings, Settings
from dicom_node.routing import evaluate_rules
from storage.db import Database
from storage.jobs import DeliveryStatus, JobStatus, as_utc
from storage.models import Completion, Delivery, Instance, Job, Result, Series, Study, utcnow

__all__ = ["Collector", "CompletionReport", "series_attributes"]

LOGGER = logging.getLogger(__name__)

MIN_QUIET_S = 1.0
"""Receivers record a series' last arrival at most once a second, so quiet
periods shorter than this are treated as this long."""


def series_attributes(row: Any) -> dict[str, Any]:
    """Routing attributes of a series row: its first instance's attributes + the association."""
    attrs = dict(row.attributes or {})
    for key, column in (
        ("Modality", "modality"),
        ("BodyPartExamined", "body_part_examined"),
        ("SeriesDescription", "series_description"),
    ):
        value = getattr(row, column, None)
        if value and key not in attrs:
            attrs[key] = value
    attrs["calling_ae"] = row.calling_ae
    attrs["called_ae"] = row.called_ae
    attrs["peer_address"] = row.peer_address
    return attrs


@dataclass
class CompletionReport:
    """What one collector pass (or a forced completion) did."""

    completed: list[str] = field(default_factory=list)
    """``level uid rule rev N`` for each completion made or revised."""
    job_ids: list[int] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    """Forced completions that were already complete with the same instances."""


class Collector:
    """Turns quiet series and studies into jobs.

    Parameters
    ----------
    db:
        The node's database.
    settings:
        Rules, destinations (to narrow outputs) and ``[worker]`` limits.
    """

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        poll_s: float = 0.5,
        on_jobs: Callable[[], None] | None = None,
    ) -> None:
        self.db = db
        self.on_jobs = on_jobs
        """Called after a pass that queued jobs (the local pool wakes at once)."""
        self.rules: list[RuleSettings] = list(settings.rules)
        self.by_name = {r.name: r for r in self.rules}
        self.destination_outputs = {d.name: d.outputs for d in settings.destinations}
        self.max_attempts = settings.worker.max_attempts
        self.poll_s = poll_s
        series_quiet = [r.quiet_period_s for r in self.rules if r.trigger == "series"]
        study_quiet = [r.quiet_period_s for r in self.rules if r.trigger == "study"]
        self._series_horizon = max(MIN_QUIET_S, min(series_quiet, default=MIN_QUIET_S))
        self._study_horizon = max(MIN_QUIET_S, min(study_quiet, default=MIN_QUIET_S))
        self._has_study_rules = bool(study_quiet)

    # -- the loop ------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll until *stop* is set (the node runs this in a thread)."""
        LOGGER.info("collector started: %d rule(s)", len(self.rules))
        while not stop.wait(self.poll_s):
            try:
                if self.tick().job_ids and self.on_jobs is not None:
                    self.on_jobs()
            except (IntegrityError, OperationalError) as exc:
                LOGGER.debug("collector pass retried next time: %s", exc)
            except Exception:
                LOGGER.exception("collector pass failed; trying again")

    def tick(self, now: datetime | None = None) -> CompletionReport:
        """One pass: settle every series and study whose quiet period may be over."""
        now = now or utcnow()
        report = CompletionReport()
        if not self.rules:
            return report
        for row in self._unsettled(Series, self._series_horizon, now):
            with self.db.engine.begin() as conn:
                self._settle_series(conn, row, now, False, report)
        if self._has_study_rules:
            for study in self._unsettled(Study, self._study_horizon, now):
                with self.db.engine.begin() as conn:
                    self._settle_study(conn, study, now, False, report)
        return report

    def _unsettled(
        self, model: type[Series] | type[Study], horizon_s: float, now: datetime
    ) -> list[Any]:
        """Rows with instances since the collector last settled them, quiet for *horizon_s*."""
        with self.db.engine.connect() as conn:
            return list(
                conn.execute(
                    select(model.__table__).where(
                        model.last_received_at <= now - timedelta(seconds=horizon_s),
                        or_(
                            model.collected_at.is_(None),
                            model.last_received_at > model.collected_at,
                        ),
                    )
                ).all()
            )

    def complete(self, uid: str, now: datetime | None = None) -> CompletionReport:
        """Force completion of a series (its series-level rules) or a study (all its rules).

        Raises
        ------
        LookupError
            No series or study with that UID was received.
        """
        now = now or utcnow()
        report = CompletionReport()
        with self.db.engine.begin() as conn:
            series = conn.execute(
                select(Series.__table__).where(Series.series_instance_uid == uid)
            ).one_or_none()
            if series is not None:
                self._settle_series(conn, series, now, True, report)
                return report
            study = conn.execute(
                select(Study.__table__).where(Study.study_instance_uid == uid)
            ).one_or_none()
            if study is None:
                raise LookupError(f"no series or study {uid} has been received")
            for row in conn.execute(
                select(Series.__table__).where(Series.study_id == study.id).order_by(Series.id)
            ).all():
                self._settle_series(conn, row, now, True, report)
            self._settle_study(conn, study, now, True, report)
        return report

    # -- series ----------------------------------------------------------------
    def _matching(self, attrs: dict[str, Any], trigger: str) -> list[RuleSettings]:
        matched = [m.rule for m in evaluate_rules(self.rules, attrs) if m.matched]
        return [self.by_name[n] for n in matched if self.by_name[n].trigger == trigger]

    def _settle_series(
        self, conn: Any, row: Any, now: datetime, force: bool, report: CompletionReport
    ) -> None:
        attrs = series_attributes(row)
        rules = self._matching(attrs, "series")
        count, last = conn.execute(
            select(func.count(), func.max(Instance.received_at)).where(Instance.series_id == row.id)
        ).one()
        last = as_utc(last)
        settled = True
        if not rules and not force and row.collected_at is None:
            study_rules = self._matching(attrs, "study")
            if not study_rules:
                LOGGER.info(
                    "series %s (%s, %r, %d instance(s)) matches no rule",
                    row.series_instance_uid,
                    attrs.get("Modality", "?"),
                    attrs.get("SeriesDescription", ""),
                    count,
                )
        for rule in rules:
            if count == 0 or last is None:
                continue
            quiet = (now - last).total_seconds()
            if not force and quiet < max(MIN_QUIET_S, rule.quiet_period_s):
                settled = False
                continue
            self._complete(
                conn,
                "series",
                row.series_instance_uid,
                rule,
                row.study_id,
                row.id,
                [row.id],
                count,
                last,
                now,
                force,
                report,
            )
        if settled:
            conn.execute(
                update(Series).where(Series.id == row.id).values(collected_at=row.last_received_at)
            )

    # -- study -----------------------------------------------------------------
    def _settle_study(
        self, conn: Any, study: Any, now: datetime, force: bool, report: CompletionReport
    ) -> None:
        series_rows = conn.execute(
            select(Series.__table__).where(Series.study_id == study.id).order_by(Series.id)
        ).all()
        per_rule: dict[str, list[int]] = {}
        for row in series_rows:
            for rule in self._matching(series_attributes(row), "study"):
                per_rule.setdefault(rule.name, []).append(row.id)
        count, last = conn.execute(
            select(func.count(), func.max(Instance.received_at))
            .join(Series, Series.id == Instance.series_id)
            .where(Series.study_id == study.id)
        ).one()
        last = as_utc(last)
        settled = True
        for name, series_ids in per_rule.items():
            rule = self.by_name[name]
            if count == 0 or last is None:
                continue
            quiet = (now - last).total_seconds()
            if not force and quiet < max(MIN_QUIET_S, rule.quiet_period_s):
                settled = False
                continue
            self._complete(
                conn,
                "study",
                study.study_instance_uid,
                rule,
                study.id,
                None,
                series_ids,
                count,
                last,
                now,
                force,
                report,
            )
        if settled:
            conn.execute(
                update(Study)
                .where(Study.id == study.id)
                .values(collected_at=study.last_received_at)
            )

    # -- completion rows and jobs ---------------------------------------------------
    def _complete(
        self,
        conn: Any,
        level: str,
        uid: str,
        rule: RuleSettings,
        study_id: int,
        series_id: int | None,
        series_ids: Sequence[int],
        count: int,
        last: datetime,
        now: datetime,
        force: bool,
        report: CompletionReport,
    ) -> None:
        existing = conn.execute(
            select(Completion.__table__).where(
                Completion.level == level, Completion.uid == uid, Completion.rule == rule.name
            )
        ).one_or_none()
        if existing is None:
            completion_id = conn.execute(
                insert(Completion)
                .values(
                    level=level,
                    uid=uid,
                    rule=rule.name,
                    study_id=study_id,
                    series_id=series_id,
                    instance_count=count,
                    last_instance_at=last,
                    revision=0,
                    forced=force,
                    completed_at=now,
                )
                .returning(Completion.id)
            ).scalar_one()
            revision = 0
        else:
            same = existing.instance_count == count and as_utc(existing.last_instance_at) == last
            if same:
                if force:
                    report.unchanged.append(f"{level} {uid} rule {rule.name}")
                return
            completion_id = existing.id
            revision = existing.revision + 1
            conn.execute(
                update(Completion)
                .where(Completion.id == completion_id)
                .values(
                    instance_count=count,
                    last_instance_at=last,
                    revision=revision,
                    forced=force,
                    completed_at=now,
                )
            )
            self._supersede(conn, completion_id, revision)
        outputs = list(rule.outputs)
        destinations: dict[str, list[str]] = {}
        for dest in rule.destinations:
            narrowed = self.destination_outputs.get(dest)
            destinations[dest] = [k for k in outputs if narrowed is None or k in narrowed]
        for pipeline in rule.pipelines:
            job_id = conn.execute(
                insert(Job)
                .values(
                    completion_id=completion_id,
                    revision=revision,
                    rule=rule.name,
                    pipeline=pipeline,
                    level=level,
                    study_id=study_id,
                    series_ids=list(series_ids),
                    outputs=outputs,
                    destinations=destinations,
                    priority=rule.priority,
                    status=JobStatus.QUEUED.value,
                    attempts=0,
                    max_attempts=self.max_attempts,
                    not_before=now,
                    uid_seed=secrets.token_hex(16),
                    created_at=now,
                    timings={},
                )
                .returning(Job.id)
            ).scalar_one()
            report.job_ids.append(int(job_id))
        what = f"{level} {uid} rule {rule.name} rev {revision}"
        report.completed.append(what)
        LOGGER.info(
            "%s complete%s (%d instance(s)): rule %s -> %s%s",
            level,
            " (forced)" if force else "",
            count,
            rule.name,
            ", ".join(rule.pipelines) or "no pipeline",
            f" (revision {revision}: supersedes earlier results)" if revision else "",
        )

    @staticmethod
    def _supersede(conn: Any, completion_id: int, revision: int) -> None:
        older = select(Job.id).where(Job.completion_id == completion_id, Job.revision < revision)
        n_jobs = conn.execute(
            update(Job)
            .where(Job.id.in_(older), Job.status == JobStatus.QUEUED.value)
            .values(status=JobStatus.SUPERSEDED.value, error="superseded by a later revision")
        ).rowcount
        n_deliveries = conn.execute(
            update(Delivery)
            .where(
                Delivery.result_id.in_(select(Result.id).where(Result.job_id.in_(older))),
                Delivery.status == DeliveryStatus.PENDING.value,
            )
            .values(
                status=DeliveryStatus.CANCELLED.value,
                error="superseded by a later revision before it was sent",
            )
        ).rowcount
        if n_jobs or n_deliveries:
            LOGGER.info(
                "superseded %d queued job(s) and cancelled %d unsent deliverie(s)",
                n_jobs,
                n_deliveries,
            )

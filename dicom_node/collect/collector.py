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

Every time it settles a series it keeps, with the series, how each rule
judged it, condition by condition (``series.routing``), so the console can
say why a series was not routed without a log search.  A rule an operator
paused (:mod:`storage.pauses`) makes no job: the series it matches stay
unsettled and are completed as usual once it is resumed.

The collector polls the database, so it works the same when receivers run in
other processes; it only reads rows the receivers wrote.  The SQL lives in
:mod:`storage.completions`; this module holds the decisions (which rules
match, whether the quiet period is over, which jobs a completion makes).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dicom_node.collect.routing import RuleMatch, evaluate_rules
from dicom_node.config import RuleSettings, Settings
from storage.completions import CompletionStore, CompletionTransaction, SeriesRow, StudyRow
from storage.db import Database, DatabaseUnavailable, DuplicateRow
from storage.jobs import NewJob
from storage.models import utcnow
from storage.pauses import PauseStore

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
    """Forced completions that were already complete with the same instances,
    or whose rule an operator paused."""


@dataclass(frozen=True)
class _Snapshot:
    """What one completion covers."""

    level: str
    uid: str
    study_id: int
    series_id: int | None
    series_ids: Sequence[int]
    count: int
    last: datetime


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
        self.store = CompletionStore(db)
        self.pauses = PauseStore(db)
        self._paused: frozenset[str] = frozenset()
        """Rules an operator paused, read at the start of each pass."""
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
            except (DuplicateRow, DatabaseUnavailable) as exc:
                LOGGER.debug("collector pass retried next time: %s", exc)
            except Exception:
                LOGGER.exception("collector pass failed; trying again")

    def tick(self, now: datetime | None = None) -> CompletionReport:
        """One pass: settle every series and study whose quiet period may be over."""
        now = now or utcnow()
        report = CompletionReport()
        if not self.rules:
            return report
        self._paused = self.pauses.names("rule")
        for series in self.store.unsettled_series(self._series_horizon, now):
            with self.store.transaction() as tx:
                self._settle_series(tx, series, now, False, report)
        if self._has_study_rules:
            for study in self.store.unsettled_studies(self._study_horizon, now):
                with self.store.transaction() as tx:
                    self._settle_study(tx, study, now, False, report)
        return report

    def complete(self, uid: str, now: datetime | None = None) -> CompletionReport:
        """Force completion of a series (its series-level rules) or a study (all its rules).

        Raises
        ------
        LookupError
            No series or study with that UID was received.
        """
        now = now or utcnow()
        report = CompletionReport()
        self._paused = self.pauses.names("rule")
        with self.store.transaction() as tx:
            series = tx.series_by_uid(uid)
            if series is not None:
                self._settle_series(tx, series, now, True, report)
                return report
            study = tx.study_by_uid(uid)
            if study is None:
                raise LookupError(f"no series or study {uid} has been received")
            for row in tx.series_of_study(study.id):
                self._settle_series(tx, row, now, True, report)
            self._settle_study(tx, study, now, True, report)
        return report

    # -- series ----------------------------------------------------------------
    def _matching(
        self, attrs: dict[str, Any], trigger: str, matches: Sequence[RuleMatch] | None = None
    ) -> list[RuleSettings]:
        if matches is None:
            matches = evaluate_rules(self.rules, attrs)
        matched = [m.rule for m in matches if m.matched]
        return [self.by_name[n] for n in matched if self.by_name[n].trigger == trigger]

    def _routing(self, matches: Sequence[RuleMatch]) -> dict[str, Any]:
        """How the rules judged a series, kept with it for the console."""
        regular = any(m.matched for m in matches if not m.fallback)
        judged = []
        for m in matches:
            rule = self.by_name[m.rule]
            held = all(e.ok for e in m.explanations)
            note = None
            if m.fallback and held and not m.matched and regular:
                note = "fallback rule: another rule matched"
            elif m.matched and m.rule in self._paused:
                note = "paused by an operator: the series waits until the rule is resumed"
            judged.append({
                "rule": m.rule,
                "trigger": rule.trigger,
                "matched": m.matched,
                "fallback": m.fallback,
                "paused": m.rule in self._paused,
                "pipelines": list(rule.pipelines),
                "destinations": list(rule.destinations),
                "note": note,
                "conditions": [
                    {"path": e.path, "ok": e.ok, "reason": e.reason} for e in m.explanations
                ],
            })
        return {"rules": judged}

    def _settle_series(
        self,
        tx: CompletionTransaction,
        row: SeriesRow,
        now: datetime,
        force: bool,
        report: CompletionReport,
    ) -> None:
        attrs = series_attributes(row)
        matches = evaluate_rules(self.rules, attrs)
        tx.record_routing(row.id, self._routing(matches), now)
        rules = self._matching(attrs, "series", matches)
        count, last = tx.series_instances(row.id)
        settled = True
        if not rules and not force and row.collected_at is None:
            study_rules = self._matching(attrs, "study", matches)
            if not study_rules:
                LOGGER.info(
                    "series %s (%s, %r, %d instance(s)) matches no rule",
                    row.series_instance_uid,
                    attrs.get("Modality", "?"),
                    attrs.get("SeriesDescription", ""),
                    count,
                )
        if count and last is not None:
            snapshot = _Snapshot(
                "series", row.series_instance_uid, row.study_id, row.id, [row.id], count, last
            )
            settled = self._complete_quiet(
                tx, snapshot, [(r, [row.id]) for r in rules], now, force, report
            )
        if settled:
            tx.mark_series_collected(row)

    # -- study -----------------------------------------------------------------
    def _settle_study(
        self,
        tx: CompletionTransaction,
        study: StudyRow,
        now: datetime,
        force: bool,
        report: CompletionReport,
    ) -> None:
        per_rule: dict[str, list[int]] = {}
        for row in tx.series_of_study(study.id):
            for rule in self._matching(series_attributes(row), "study"):
                per_rule.setdefault(rule.name, []).append(row.id)
        count, last = tx.study_instances(study.id)
        settled = True
        if count and last is not None:
            snapshot = _Snapshot("study", study.study_instance_uid, study.id, None, [], count, last)
            rules = [(self.by_name[name], ids) for name, ids in per_rule.items()]
            settled = self._complete_quiet(tx, snapshot, rules, now, force, report)
        if settled:
            tx.mark_study_collected(study)

    def _complete_quiet(
        self,
        tx: CompletionTransaction,
        snap: _Snapshot,
        rules: Sequence[tuple[RuleSettings, list[int]]],
        now: datetime,
        force: bool,
        report: CompletionReport,
    ) -> bool:
        """Complete *snap* for each rule whose quiet period is over (all when *force*),
        on that rule's series; False when some rule must wait longer."""
        settled = True
        for rule, series_ids in rules:
            if rule.name in self._paused:
                settled = False  # completed when the rule is resumed
                if force:
                    report.unchanged.append(
                        f"{snap.level} {snap.uid} rule {rule.name}: paused by an operator"
                    )
                continue
            quiet = (now - snap.last).total_seconds()
            if not force and quiet < max(MIN_QUIET_S, rule.quiet_period_s):
                settled = False
                continue
            self._complete(
                tx, dataclasses.replace(snap, series_ids=series_ids), rule, now, force, report
            )
        return settled

    # -- completion rows and jobs ---------------------------------------------------
    def _complete(
        self,
        tx: CompletionTransaction,
        snap: _Snapshot,
        rule: RuleSettings,
        now: datetime,
        force: bool,
        report: CompletionReport,
    ) -> None:
        recorded = tx.record(
            level=snap.level,
            uid=snap.uid,
            rule=rule.name,
            study_id=snap.study_id,
            series_id=snap.series_id,
            count=snap.count,
            last=snap.last,
            now=now,
            forced=force,
        )
        if recorded.id is None:
            if force:
                report.unchanged.append(f"{snap.level} {snap.uid} rule {rule.name}")
            return
        if recorded.superseded_jobs or recorded.cancelled_deliveries:
            LOGGER.info(
                "superseded %d queued job(s) and cancelled %d unsent deliverie(s)",
                recorded.superseded_jobs,
                recorded.cancelled_deliveries,
            )
        outputs: list[str] = [str(k) for k in rule.outputs]
        destinations: dict[str, list[str]] = {}
        for dest in rule.destinations:
            narrowed = self.destination_outputs.get(dest)
            destinations[dest] = [k for k in outputs if narrowed is None or k in narrowed]
        for pipeline in rule.pipelines:
            job = NewJob(
                completion_id=recorded.id,
                revision=recorded.revision,
                rule=rule.name,
                pipeline=pipeline,
                level=snap.level,
                study_id=snap.study_id,
                series_ids=list(snap.series_ids),
                outputs=outputs,
                destinations=destinations,
                priority=rule.priority,
                max_attempts=self.max_attempts,
                uid_seed=secrets.token_hex(16),
                created_at=now,
            )
            report.job_ids.append(tx.enqueue(job))
        revision = recorded.revision
        report.completed.append(f"{snap.level} {snap.uid} rule {rule.name} rev {revision}")
        LOGGER.info(
            "%s complete%s (%d instance(s)): rule %s -> %s%s",
            snap.level,
            " (forced)" if force else "",
            snap.count,
            rule.name,
            ", ".join(rule.pipelines) or "no pipeline",
            f" (revision {revision}: supersedes earlier results)" if revision else "",
        )

"""``/metrics``: Prometheus metrics read from the database at scrape time.

Nothing is counted in memory: :class:`DatabaseCollector` asks the database
on every scrape, so the numbers are the same whichever process (node,
receiver, Celery worker, a second web front end) serves them, and they do
not reset when the node restarts.  The ``*_total`` counters are row counts;
rows removed by retention show up as a counter reset, which ``rate()``
handles.

Metrics (all prefixed ``dicom_node_``):

==========================================  =======  ===========================================
name                                        type     labels / meaning
==========================================  =======  ===========================================
``database_up``                             gauge    1 when the database answered this scrape
``metrics_scrape_duration_seconds``         gauge    time the queries of this scrape took
``studies_received_total``                  counter  studies recorded
``series_received_total``                   counter  series recorded
``instances_received_total``                counter  distinct SOP instances recorded
``instance_receptions_total``               counter  C-STOREs recorded, re-sent instances included
``received_bytes_total``                    counter  bytes of the stored instances
``results_written_total``                   counter  ``kind``: result objects (seg, sr, sc)
``jobs``                                    gauge    ``status``: jobs in each state
``deliveries``                              gauge    ``destination``, ``status``
``queue_depth``                             gauge    ``queue`` = jobs | deliveries: due, waiting
``oldest_queued_job_age_seconds``           gauge    0 when no job waits
``oldest_pending_delivery_age_seconds``     gauge    ``destination``; 0 when nothing pending
``recent_jobs``                             gauge    ``pipeline``, ``status``: jobs finished in
                                                     the window (default the last hour)
``recent_job_stage_seconds``                gauge    ``pipeline``, ``stage``, ``quantile``
                                                     (0.5, 0.95, 1): stage durations of the jobs
                                                     finished in the window; stage ``run`` is
                                                     start to finish of the last attempt
==========================================  =======  ===========================================
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from storage.db import Database, DatabaseError
from storage.jobs import DeliveryStatus, JobStatus, as_utc
from storage.models import utcnow
from storage.stats import node_stats

__all__ = ["QUANTILES", "DatabaseCollector", "metrics_registry"]

LOGGER = logging.getLogger(__name__)

PREFIX = "dicom_node_"
QUANTILES: tuple[float, ...] = (0.5, 0.95, 1.0)
"""Quantiles of ``recent_job_stage_seconds`` (nearest rank; 1 is the maximum)."""


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty sequence."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _age_s(now: datetime, then: datetime | None) -> float:
    then = as_utc(then)
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


class DatabaseCollector(Collector):
    """A prometheus-client collector that queries the node's database on each scrape.

    Parameters
    ----------
    db:
        The node's database.
    destinations:
        Configured destination names: they get zero-valued ``deliveries``
        and ``oldest_pending_delivery_age_seconds`` samples before their
        first delivery, so alerts see them.
    recent_window_s:
        How far back ``recent_*`` metrics look.
    recent_limit:
        At most this many finished jobs (the newest) feed ``recent_*``.
    clock:
        Returns aware UTC now (tests pass a fixed one).
    """

    def __init__(
        self,
        db: Database,
        *,
        destinations: Sequence[str] = (),
        recent_window_s: float = 3600.0,
        recent_limit: int = 1000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.destinations = tuple(destinations)
        self.recent_window = timedelta(seconds=recent_window_s)
        self.recent_limit = recent_limit
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not query the database."""
        return []

    def collect(self) -> Iterable[Metric]:
        """All metrics, read now; only ``database_up`` = 0 when the database fails."""
        started = time.perf_counter()
        try:
            families = self._read(self.clock())
            up = 1.0
        except DatabaseError as exc:
            LOGGER.warning("metrics: database query failed: %s", exc.__class__.__name__)
            LOGGER.debug("metrics: database query failed", exc_info=True)
            families = []
            up = 0.0
        yield from families
        yield GaugeMetricFamily(
            PREFIX + "database_up", "1 when the database answered this scrape.", value=up
        )
        yield GaugeMetricFamily(
            PREFIX + "metrics_scrape_duration_seconds",
            "Seconds the database queries of this scrape took.",
            value=time.perf_counter() - started,
        )

    # -- the queries -----------------------------------------------------------------
    def _read(self, now: datetime) -> list[Metric]:
        out: list[Metric] = []
        st = node_stats(self.db, now, self.recent_window, self.recent_limit)
        n_studies, n_series, n_inst = st.studies, st.series, st.instances
        n_recv, n_bytes = st.receptions, st.received_bytes
        results, jobs = st.results_by_kind, st.jobs_by_status
        deliveries = st.deliveries_by_destination_status
        jobs_due, oldest_job = st.jobs_due, st.oldest_due_job
        deliveries_due, oldest_pending = st.deliveries_due, st.oldest_pending_delivery
        recent = st.recent_jobs

        def counter(name: str, doc: str, value: float) -> None:
            out.append(CounterMetricFamily(PREFIX + name, doc, value=value))

        counter("studies_received", "Studies recorded.", n_studies)
        counter("series_received", "Series recorded.", n_series)
        counter("instances_received", "Distinct SOP instances recorded.", n_inst)
        counter(
            "instance_receptions",
            "C-STORE receptions recorded, re-sent instances included.",
            n_recv,
        )
        counter("received_bytes", "Bytes of the stored instances.", n_bytes)
        written = CounterMetricFamily(
            PREFIX + "results_written", "Result objects written, by kind.", labels=["kind"]
        )
        for kind, n in sorted(results):
            written.add_metric([str(kind)], n)
        out.append(written)

        by_status = {s.value: 0 for s in JobStatus}
        by_status.update({str(s): int(n) for s, n in jobs})
        job_family = GaugeMetricFamily(PREFIX + "jobs", "Jobs by status.", labels=["status"])
        for status, n in sorted(by_status.items()):
            job_family.add_metric([status], n)
        out.append(job_family)

        names = set(self.destinations) | {str(d) for d, _s, _n in deliveries}
        per_dest = {(d, s.value): 0 for d in names for s in DeliveryStatus}
        per_dest.update({(str(d), str(s)): int(n) for d, s, n in deliveries})
        delivery_family = GaugeMetricFamily(
            PREFIX + "deliveries",
            "Deliveries of result objects by destination and status.",
            labels=["destination", "status"],
        )
        for (dest, status), n in sorted(per_dest.items()):
            delivery_family.add_metric([dest, status], n)
        out.append(delivery_family)

        depth = GaugeMetricFamily(
            PREFIX + "queue_depth",
            "Work that is due and waiting: queued jobs, pending deliveries.",
            labels=["queue"],
        )
        depth.add_metric(["jobs"], jobs_due)
        depth.add_metric(["deliveries"], deliveries_due)
        out.append(depth)
        out.append(
            GaugeMetricFamily(
                PREFIX + "oldest_queued_job_age_seconds",
                "Age of the oldest due queued job (0 when none waits).",
                value=_age_s(now, oldest_job),
            )
        )
        ages = {name: 0.0 for name in names}
        ages.update({str(d): _age_s(now, created) for d, created in oldest_pending})
        age_family = GaugeMetricFamily(
            PREFIX + "oldest_pending_delivery_age_seconds",
            "Age of the oldest pending delivery per destination (0 when none).",
            labels=["destination"],
        )
        for dest, age in sorted(ages.items()):
            age_family.add_metric([dest], age)
        out.append(age_family)
        out.extend(self._recent(recent))
        return out

    def _recent(self, rows: Sequence[Any]) -> list[Metric]:
        counts: dict[tuple[str, str], int] = {}
        stages: dict[tuple[str, str], list[float]] = {}
        for row in rows:
            pipeline = str(row.pipeline)
            key = (pipeline, str(row.status))
            counts[key] = counts.get(key, 0) + 1
            timings = row.timings if isinstance(row.timings, dict) else {}
            for stage, seconds in timings.items():
                if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
                    stages.setdefault((pipeline, str(stage)), []).append(float(seconds))
            started, finished = as_utc(row.started_at), as_utc(row.finished_at)
            if started is not None and finished is not None:
                run = max(0.0, (finished - started).total_seconds())
                stages.setdefault((pipeline, "run"), []).append(run)
        window = f"{self.recent_window.total_seconds():g} s"
        recent_jobs = GaugeMetricFamily(
            PREFIX + "recent_jobs",
            f"Jobs finished in the last {window}, by pipeline and status.",
            labels=["pipeline", "status"],
        )
        for (pipeline, status), n in sorted(counts.items()):
            recent_jobs.add_metric([pipeline, status], n)
        durations = GaugeMetricFamily(
            PREFIX + "recent_job_stage_seconds",
            f"Stage durations of the jobs finished in the last {window} "
            "(nearest-rank quantiles; stage 'run' is start to finish).",
            labels=["pipeline", "stage", "quantile"],
        )
        for (pipeline, stage), values in sorted(stages.items()):
            values.sort()
            for q in QUANTILES:
                durations.add_metric([pipeline, stage, f"{q:g}"], _quantile(values, q))
        return [recent_jobs, durations]


def metrics_registry(db: Database, *, destinations: Sequence[str] = ()) -> CollectorRegistry:
    """A dedicated registry holding only a :class:`DatabaseCollector` (no process metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(db, destinations=destinations))
    return registry

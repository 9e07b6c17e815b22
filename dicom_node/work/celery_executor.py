"""The ``celery`` executor: ``serve`` publishes due jobs to a Celery broker.

A thread looks for due jobs (:func:`storage.dispatch.due_jobs`) when the
collector queues some and every ``[worker] poll_interval_s``, and publishes
each one's id to its queue (the rule's ``queue``, else ``[celery]
default_queue``).  A job that is still due ``[celery] republish_after_s``
after its message was published is published again: the message may have
been lost with a broker restart, or its worker may have died.  Publishing
twice is harmless, since the worker claims the job in the database first
(:mod:`dicom_node.work.celery_app`).  A job due again after an attempt (a
retry, or a lease taken over from a dead worker) is published at once.

With ``[celery] deliver_queue`` the same thread publishes, for each
destination with due deliveries, a ``dicom_node.deliver(destination)``
message; the worker that takes it sends batches claimed in the database, as
the ``sender`` role would.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dicom_node.config import Settings
from dicom_node.config_check import redact_url
from dicom_node.work.celery_app import DELIVER, RUN_JOB, make_app
from storage.db import Database
from storage.dispatch import DueJob, due_destinations, due_jobs

__all__ = ["CeleryExecutor"]

LOGGER = logging.getLogger(__name__)

# Publishing retries a broken connection briefly; the loop retries after that.
_RETRY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5}


class CeleryExecutor:
    """Publish due jobs to ``dicom-node worker`` processes through Celery.

    Parameters
    ----------
    settings, db:
        The node's settings and database.
    on_idle:
        Unused: the jobs run in other processes (the sender polls).
    """

    def __init__(
        self, settings: Settings, db: Database, on_idle: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.db = db
        self.app = make_app(settings)
        self._queues = {r.name: r.queue for r in settings.rules if r.queue}
        # (job id, attempts) -> when its message was published (monotonic seconds)
        self._published: dict[tuple[int, int], float] = {}
        # destination -> when its deliveries were last published
        self._destinations: dict[str, float] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_down = False

    def queue_of(self, job: DueJob) -> str:
        """The Celery queue of *job*: its rule's ``queue``, else the default."""
        return self._queues.get(job.rule) or self.settings.celery.default_queue

    def start(self) -> None:
        """Start the publishing thread."""
        self._thread = threading.Thread(target=self._loop, name="celery-publisher", daemon=True)
        self._thread.start()
        LOGGER.info(
            "jobs go to Celery workers (broker %s, default queue %s)",
            redact_url(self.settings.celery.broker_url.get_secret_value()),
            self.settings.celery.default_queue,
        )

    def wake(self) -> None:
        """Publish due jobs now."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop publishing (queued jobs stay in the database for the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def publish_due(self) -> int:
        """Publish every due job not published within ``republish_after_s``; returns how many."""
        now = time.monotonic()
        again = self.settings.celery.republish_after_s
        due = due_jobs(self.db)
        keys = {(j.id, j.attempts) for j in due}
        self._published = {k: t for k, t in self._published.items() if k in keys}
        sent = 0
        for job in due:
            key = (job.id, job.attempts)
            last = self._published.get(key)
            if last is not None and now - last < again:
                continue
            queue = self.queue_of(job)
            self.app.send_task(
                RUN_JOB,
                args=[job.id],
                queue=queue,
                retry=True,
                retry_policy=_RETRY,
            )
            self._published[key] = now
            sent += 1
            LOGGER.info(
                "job %d (%s) published to queue %s%s",
                job.id,
                job.pipeline,
                queue,
                " again" if last is not None else "",
            )
        return sent

    def publish_deliveries(self) -> int:
        """With ``[celery] deliver_queue``: publish each destination that has due
        deliveries (again after ``republish_after_s`` while it still has); returns how many."""
        queue = self.settings.celery.deliver_queue
        if queue is None:
            return 0
        now = time.monotonic()
        again = self.settings.celery.republish_after_s
        due = due_destinations(self.db)
        self._destinations = {d: t for d, t in self._destinations.items() if d in due}
        sent = 0
        for name in due:
            last = self._destinations.get(name)
            if last is not None and now - last < again:
                continue
            self.app.send_task(DELIVER, args=[name], queue=queue, retry=True,
                               retry_policy=_RETRY)  # fmt: skip
            self._destinations[name] = now
            sent += 1
            LOGGER.info("deliveries to %s published to queue %s", name, queue)
        return sent

    def _loop(self) -> None:
        poll = self.settings.worker.poll_interval_s
        while not self._stop.is_set():
            try:
                self.publish_due()
                self.publish_deliveries()
                if self._broker_down:
                    LOGGER.info("Celery broker reachable again")
                    self._broker_down = False
            except Exception as exc:  # broker or database down: keep trying
                if not self._broker_down:
                    LOGGER.warning(
                        "cannot publish jobs (%s: %s); retrying", type(exc).__name__, exc
                    )
                self._broker_down = True
                self._stop.wait(min(5.0, poll * 10))
            self._wake.wait(poll)
            self._wake.clear()

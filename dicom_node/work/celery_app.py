"""The node's Celery application: the tasks ``dicom_node.run_job`` and ``dicom_node.deliver``.

``serve`` publishes due job ids with it (:mod:`dicom_node.work.celery_executor`)
and ``dicom-node worker`` consumes them.  A message is only a hint that a job
may be due: the task claims the job's lease in the database
(:func:`dicom_node.work.worker.run_job`) and does nothing when the job is not
due, so a message delivered twice runs the job once.  Messages are
acknowledged after the task ran (``acks_late``), and given back when the
worker process dies, so a job cut off by a crash is delivered again.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING

from celery import Celery

if TYPE_CHECKING:
    from dicom_node.config import Settings
    from storage.db import Database

__all__ = ["DELIVER", "RUN_JOB", "make_app"]

LOGGER = logging.getLogger(__name__)

RUN_JOB = "dicom_node.run_job"
"""The job task's name, as published."""
DELIVER = "dicom_node.deliver"
"""The delivery task's name (with ``[celery] deliver_queue``)."""

_databases: dict[int, Database] = {}
_lock = threading.Lock()


def _database(settings: Settings) -> Database:
    """One database engine per worker process (engines do not survive a fork)."""
    from storage.db import Database

    pid = os.getpid()
    with _lock:
        db = _databases.get(pid)
        if db is None:
            db = _databases[pid] = Database(settings.storage.database_url)
            # This process's audit trail (an auditor's thread does not survive a fork).
            from dicom_node import audit

            audit.install(audit.auditor_from_settings(settings.audit, db))
        return db


def make_app(settings: Settings) -> Celery:
    """The Celery application for *settings*' broker, with the ``run_job`` task."""
    conf = settings.celery
    broker = conf.broker_url.get_secret_value()
    app = Celery("dicom_node", broker=broker, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=conf.default_queue,
        worker_prefetch_multiplier=1,  # a GPU worker holds one job, not a batch
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": conf.visibility_timeout_s},
    )

    @app.task(name=DELIVER)
    def deliver_task(destination: str) -> int:
        from dicom_node.deliver.sender import Sender

        # Every pass claims a batch in the database; another copy of the message
        # or another worker finds nothing left.  Bounded: a message per batch run.
        sender = Sender(settings, _database(settings))
        handled = 0
        for _ in range(64):
            n = sender.run_once(destination)
            if not n:
                break
            handled += n
        LOGGER.info("deliveries to %s: %d handled", destination, handled)
        return handled

    @app.task(name=RUN_JOB)
    def run_job_task(job_id: int) -> str:
        from dicom_node.work.worker import run_job

        state = run_job(int(job_id), settings, _database(settings))
        LOGGER.info("job %d: %s", job_id, state)
        return state

    return app

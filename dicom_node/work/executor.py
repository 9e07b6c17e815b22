"""Executors: where the collector's jobs run.

An executor is started and stopped with ``serve`` and woken when the
collector has queued jobs.  ``local`` runs them in ``serve``'s own worker
threads (:class:`dicom_node.work.worker.WorkerPool`); ``celery`` publishes
them to a Celery broker for ``dicom-node worker`` processes on any host
(:class:`dicom_node.work.celery_executor.CeleryExecutor`).  Either way the
job runs through :func:`dicom_node.work.worker.run_job` after a claim in the
database, which alone decides who runs a job.

Adding an executor is one new module with a class of this shape and one line
in :data:`EXECUTORS` (and its name in ``[worker] executor``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from dicom_node.config import Settings
    from storage.db import Database

__all__ = ["EXECUTORS", "JobExecutor", "make_executor"]


class JobExecutor(Protocol):
    """What ``serve`` needs of an executor."""

    def start(self) -> None:
        """Begin running (or handing out) due jobs."""

    def wake(self) -> None:
        """Jobs were just queued: look for due jobs now."""

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop taking jobs; a running job keeps its lease and resumes elsewhere if cut off."""


#: ``[worker] executor`` name -> ``"module:Class"``, imported on use (no Celery
#: import for a local node).  The class is built as ``Class(settings, db, on_idle)``.
EXECUTORS: dict[str, str] = {
    "local": "dicom_node.work.worker:WorkerPool",
    "celery": "dicom_node.work.celery_executor:CeleryExecutor",
}


def make_executor(
    settings: Settings, db: Database, on_idle: Callable[[], None] | None = None
) -> JobExecutor:
    """The executor ``[worker] executor`` names, built for *settings* and *db*.

    ``on_idle`` is called after each job the executor runs itself (the local
    pool wakes the sender with it).
    """
    name = settings.worker.executor
    try:
        target = EXECUTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown executor {name!r}; known: {', '.join(sorted(EXECUTORS))}"
        ) from None
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    executor: JobExecutor = cls(settings, db, on_idle=on_idle)
    return executor

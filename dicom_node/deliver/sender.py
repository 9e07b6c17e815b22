"""Delivery: result objects -> destinations, recorded per object and destination.

The sender claims due deliveries of one destination at a time (so one
association carries a job's SEG, SR and SC images, in the registry's order of
result kinds), sends them and records each outcome: ``sent``; a retry after
an exponential backoff (peer down, association aborted, Out of Resources); or
``failed`` at once for what a retry cannot fix (refused SOP class, a data set
the peer cannot accept) and after the destination's ``max_attempts``.
``dicom-node jobs retry ID`` puts failed deliveries back.

How an object is sent is its destination type's business
(:mod:`dicom_node.deliver.destinations`): ``dicom`` destinations get a C-STORE
(PS3.4 B.2) per object (:mod:`dicom_node.deliver.destinations.dicom`), ``folder``
destinations a file under ``<path>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``
(:mod:`dicom_node.deliver.destinations.folder`).  Objects keep their UIDs on every
attempt, so a re-send replaces nothing and duplicates nothing at the archive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from dicom_node import audit
from dicom_node.config import Settings
from dicom_node.deliver.destinations import Outgoing, open_destination
from dicom_node.deliver.destinations.dicom import is_permanent_failure
from dicom_node.deliver.destinations.folder import folder_file
from dicom_node.results.registry import result_kinds
from storage.db import Database
from storage.jobs import ClaimedDelivery, DeliveryOutcome, DeliveryQueue, worker_name

__all__ = ["Sender", "deliver_batch", "folder_file", "is_permanent_failure"]

LOGGER = logging.getLogger(__name__)


def deliver_batch(settings: Settings, items: Sequence[ClaimedDelivery]) -> list[DeliveryOutcome]:
    """Send claimed deliveries (all to one destination); one outcome per item.

    A destination no longer configured, or a result file gone, fails the
    delivery at once; the rest go to the destination's
    :meth:`~dicom_node.deliver.destinations.base.Destination.send`.
    """
    if not items:
        return []
    name = items[0].destination
    dest = next((d for d in settings.destinations if d.name == name), None)
    if dest is None:
        error = f"destination {name!r} is not configured (any more)"
        return [DeliveryOutcome(i.id, False, None, error, retry=False) for i in items]
    root = settings.storage.results_dir
    missing = [i for i in items if not (root / i.path).is_file()]
    if missing:
        bad = {i.id for i in missing}
        items = [i for i in items if i.id not in bad]
        lost = [
            DeliveryOutcome(i.id, False, None, f"result file {i.path} is missing", retry=False)
            for i in missing
        ]
    else:
        lost = []
    destination = open_destination(dest, calling_ae=settings.node.ae_title)
    objects = [
        Outgoing(i.id, root / i.path, i.sop_instance_uid, i.kind, i.sop_class_uid) for i in items
    ]
    return lost + destination.send(objects)


def _audit_batch(items: Sequence[ClaimedDelivery], outcomes: Sequence[DeliveryOutcome]) -> None:
    """One RESULT_SENT audit event per study of a batch (PS3.15 A.5.3.4), with its UIDs."""
    by_id = {i.id: i for i in items}
    studies: dict[tuple[str, bool], list[ClaimedDelivery]] = {}
    for outcome in outcomes:
        item = by_id.get(outcome.delivery_id)
        if item is not None:
            studies.setdefault((item.study_instance_uid, outcome.sent), []).append(item)
    destination = items[0].destination
    for (study_uid, sent), sent_items in studies.items():
        audit.auditor().record(
            audit.AuditEvent.RESULT_SENT,
            outcome=audit.Outcome.SUCCESS if sent else audit.Outcome.MINOR_FAILURE,
            actor=destination,
            actor_kind="destination",
            study_instance_uid=study_uid or None,
            destination=destination,
            sent=sent,
            sop_instance_uids=[i.sop_instance_uid for i in sent_items],
            kinds=sorted({i.kind for i in sent_items}),
        )


class Sender:
    """The thread that sends due deliveries until stopped.

    Parameters
    ----------
    settings, db:
        The node's settings and database.
    """

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.queue = DeliveryQueue(db, kind_order=result_kinds())
        self.owner = worker_name("sender")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sender", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due deliveries now (a job just finished)."""
        self._wake.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def run_once(self, destination: str | None = None) -> int:
        """Claim and send one batch (of *destination*, or of the longest waiting one);
        returns how many deliveries it handled."""
        items = self.queue.claim_batch(self.owner, destination=destination)
        if not items:
            return 0
        dest = next((d for d in self.settings.destinations if d.name == items[0].destination), None)
        outcomes = deliver_batch(self.settings, items)
        counts = self.queue.record(
            self.owner,
            outcomes,
            max_attempts=dest.max_attempts if dest else 1,
            retry_base_s=dest.retry_base_s if dest else 1.0,
            retry_max_s=dest.retry_max_s if dest else 1.0,
        )
        _audit_batch(items, outcomes)
        errors = sorted({o.error for o in outcomes if not o.sent and o.error})
        LOGGER.log(
            logging.WARNING if errors else logging.INFO,
            "delivery to %s: %s%s",
            items[0].destination,
            ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            f" ({'; '.join(errors)[:300]})" if errors else "",
        )
        return len(items)

    def _loop(self) -> None:
        poll = self.settings.worker.poll_interval_s
        while not self._stop.is_set():
            try:
                handled = self.run_once()
            except Exception:
                LOGGER.exception("delivery pass failed")
                handled = 0
            if handled:
                continue
            self._wake.wait(poll)
            self._wake.clear()

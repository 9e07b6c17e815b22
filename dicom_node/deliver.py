"""Delivery: result objects -> destinations, recorded per object and destination.

The sender claims due deliveries of one destination at a time (so one
association carries a job's SEG, SR and SC images), sends them and records
each outcome: ``sent``; a retry after an exponential backoff (peer down,
association aborted, Out of Resources); or ``failed`` at once for what a
retry cannot fix (refused SOP class, a data set the peer cannot accept) and
after the destination's ``max_attempts``.  ``dicom-node jobs retry ID`` puts
failed deliveries back.

``dicom`` destinations get a C-STORE (PS3.4 B.2) per object with its SOP
class proposed in its own transfer syntax and in Explicit VR Little Endian;
the sender sets ``TCP_NODELAY`` and re-associates after a lost reply
(:func:`dicom_node.scu.send_files`).  ``folder`` destinations get the file
under ``<path>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``, written
atomically and flushed.  Objects keep their UIDs on every attempt, so a
re-send replaces nothing and duplicates nothing at the archive.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from dicom_node import status as st
from dicom_node.config import DestinationSettings, Settings
from dicom_node.errors import AssociationRejectedError, DeliveryError
from dicom_node.scu import peer_of, send_files
from storage.db import Database
from storage.jobs import ClaimedDelivery, DeliveryOutcome, DeliveryQueue, worker_name
from storage.spool import safe_component

__all__ = ["Sender", "deliver_batch", "is_permanent_failure"]

LOGGER = logging.getLogger(__name__)


def is_permanent_failure(status: int | None) -> bool:
    """Failure statuses a retry cannot fix (PS3.4 B.2.3; PS3.7 C).

    ``None`` (the presentation context was refused), 0xA9xx (data set does
    not match the SOP class), 0xCxxx (cannot understand), 0x0122 (SOP class
    not supported).  Out of Resources (0xA7xx) and processing failures
    (0x0110, 0x0111, 0x0212) are worth retrying.
    """
    if status is None:
        return True
    return status & 0xFF00 == 0xA900 or status & 0xF000 == 0xC000 or status == 0x0122


def _send_dicom(
    dest: DestinationSettings, items: Sequence[ClaimedDelivery], root: Path, calling_ae: str
) -> list[DeliveryOutcome]:
    files = [root / item.path for item in items]
    try:
        report = send_files(peer_of(dest), files, calling_ae=calling_ae, timeout_s=dest.timeout_s)
    except (AssociationRejectedError, DeliveryError, OSError, RuntimeError) as exc:
        error = f"{dest.name}: {exc}"
        return [DeliveryOutcome(i.id, False, None, error, retry=True) for i in items]
    reasons = dict(report.failed)
    out = []
    for item, path in zip(items, files, strict=True):
        status = report.statuses.get(path)
        if status is not None and (status == st.SUCCESS or status & 0xF000 == 0xB000):
            out.append(DeliveryOutcome(item.id, True, status))
            continue
        reason = reasons.get(path, "not sent")
        unsent = status is None and "presentation context" not in reason
        permanent = not unsent and is_permanent_failure(status)
        out.append(DeliveryOutcome(item.id, False, status, reason, retry=not permanent))
    return out


def folder_file(root: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    """Where a folder destination keeps one object:
    ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` (each part made safe)."""
    return (
        Path(root)
        / safe_component(study_uid)
        / safe_component(series_uid)
        / f"{safe_component(sop_instance_uid)}.dcm"
    )


def _send_folder(
    dest: DestinationSettings, items: Sequence[ClaimedDelivery], root: Path
) -> list[DeliveryOutcome]:
    assert dest.path is not None
    out = []
    for item in items:
        src = root / item.path
        try:
            ds = dcmread(
                src,
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
            )
            final = folder_file(
                dest.path,
                str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID),
                item.sop_instance_uid,
            )
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".{final.name}.part"
            shutil.copyfile(src, tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            out.append(DeliveryOutcome(item.id, True, st.SUCCESS))
        except OSError as exc:
            out.append(DeliveryOutcome(item.id, False, None, f"{dest.name}: {exc}", retry=True))
    return out


def deliver_batch(settings: Settings, items: Sequence[ClaimedDelivery]) -> list[DeliveryOutcome]:
    """Send claimed deliveries (all to one destination); one outcome per item."""
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
    if dest.type == "dicom":
        return lost + _send_dicom(dest, items, root, settings.node.ae_title)
    return lost + _send_folder(dest, items, root)


class Sender:
    """The thread that sends due deliveries until stopped.

    Parameters
    ----------
    settings, db:
        The node's settings and database.
    """

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.queue = DeliveryQueue(db)
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

    def run_once(self) -> int:
        """Claim and send one batch; returns how many deliveries it handled."""
        items = self.queue.claim_batch(self.owner)
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

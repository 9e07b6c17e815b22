"""Start-up reconciliation of the spool with the database.

A process killed between placing a file in the spool and committing its row
leaves a file that no row points at.  The instance was never acknowledged
(Success is answered only after the commit), but the file is real data: at
start-up, before anyone receives, every such orphan is re-registered when its
header parses (as if it had just been received; the sender's AE title comes
from the file meta the receiver wrote), and otherwise moved to
``<spool>/.quarantine/`` for an admin to look at.  One summary line says
what was done.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dicom_node.errors import StoreRejected
from dicom_node.protocol.file_meta import read_file_meta
from dicom_node.receive.header import header_from_file, header_record
from storage.received import ReceivedStore, StoreOutcome
from storage.spool import QUARANTINE_DIR

__all__ = ["ReconcileSummary", "reconcile_spool"]

LOGGER = logging.getLogger(__name__)


@dataclass
class ReconcileSummary:
    """What :func:`reconcile_spool` found and did."""

    files: int = 0
    orphans: int = 0
    registered: int = 0
    duplicates: int = 0
    quarantined: int = 0
    young: int = 0
    """Files without a row left alone: younger than ``min_age_s``."""
    seconds: float = 0.0


def reconcile_spool(store: ReceivedStore, *, min_age_s: float = 0.0) -> ReconcileSummary:
    """Give every spool file without a database row a row, or quarantine it.

    Run only while nothing receives (the main process, before listening), or,
    on a spool other receivers share, with *min_age_s*: files modified more
    recently than that are left alone (their receiver may be committing them).
    An orphan whose instance is recorded elsewhere (same SOP Instance UID,
    another path) is handled like a re-sent instance: ``duplicate_policy``
    decides, and a copy that is not kept is removed.
    """
    started = time.monotonic()
    summary = ReconcileSummary()
    known = store.known_paths()
    spool = store.spool
    for rel in spool.iter_files():
        summary.files += 1
        if rel in known:
            continue
        if min_age_s and _age_s(spool.absolute(rel)) < min_age_s:
            summary.young += 1
            continue
        summary.orphans += 1
        try:
            meta = read_file_meta(spool.absolute(rel))
            ds = header_from_file(
                spool.absolute(rel), meta.data_offset, meta.transfer_syntax_uid, record_only=True
            )
            if ds is None:
                raise ValueError("header too long to read")
            record = header_record(ds, meta.transfer_syntax_uid)
        except Exception as exc:
            reason = exc.reason if isinstance(exc, StoreRejected) else type(exc).__name__
            target = spool.quarantine(spool.absolute(rel), rel)
            summary.quarantined += 1
            LOGGER.warning(
                "orphan spool file %s cannot be registered (%s); moved to %s",
                rel,
                reason,
                target.relative_to(spool.root),
            )
            continue
        record.calling_ae = meta.source_ae_title or None
        spooled = spool.adopt(rel, meta.data_offset)
        try:
            result = store.store(record, spooled)
        except Exception as exc:
            # store() discards the temporary file on failure; keep the data instead.
            if spooled.temp_path.exists():
                spool.quarantine(spooled.temp_path, rel)
            summary.quarantined += 1
            LOGGER.warning("orphan spool file %s could not be registered: %s", rel, exc)
            continue
        if result.outcome is StoreOutcome.STORED:
            summary.registered += 1
        else:
            summary.duplicates += 1
    summary.seconds = time.monotonic() - started
    log = LOGGER.warning if summary.orphans else LOGGER.info
    log(
        "spool reconciled in %.1f s: %d file(s), %d without a database row: %d registered, "
        "%d already recorded elsewhere, %d quarantined (in %s/)%s",
        summary.seconds,
        summary.files,
        summary.orphans,
        summary.registered,
        summary.duplicates,
        summary.quarantined,
        QUARANTINE_DIR,
        f"; {summary.young} younger than {min_age_s:g} s left alone" if summary.young else "",
    )
    return summary


def _age_s(path: Path) -> float:
    """Seconds since *path* was last modified (0 when it is gone)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0

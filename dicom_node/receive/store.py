"""The receiver's store: the database and the spool, opened from settings."""

from __future__ import annotations

import logging
import socket

from dicom_node.config import Settings
from dicom_node.receive.reconcile import reconcile_spool
from storage.db import Database
from storage.durability import DurabilityBarrier, syncfs_available
from storage.received import DuplicateAction, ReceivedStore
from storage.spool import Spool

__all__ = ["INTAKE_DIR", "open_store"]

LOGGER = logging.getLogger(__name__)

INTAKE_DIR = ".intake"
"""The spool's folder of intake journals, one per receiving process."""


def open_store(
    settings: Settings,
    *,
    upgrade: bool = True,
    clean_temp: bool = True,
    intake_name: str | None = None,
) -> ReceivedStore:
    """Open the database (running migrations) and the spool.

    With ``storage.fsync`` on, durability comes from a group-committed
    ``syncfs`` of the spool's and the SQLite file's file systems after each
    store (one flush shared by concurrent associations) instead of per-file
    ``fsync`` calls; where ``syncfs`` is missing, files are fsync'd one by one
    and SQLite commits with ``synchronous=FULL``.

    ``clean_temp`` (only a receiver's main process, before it receives) also
    removes its unfinished temporary files and reconciles the spool with the
    database (:func:`~dicom_node.receive.reconcile.reconcile_spool`).  With
    ``[storage] shared_spool`` the temporary files are this receiver's own
    (``.tmp/<host>-<port>``) and spool files younger than
    ``reconcile_min_age_s`` are left to the receiver that may be committing them.

    ``intake_name`` (a receiving process's own name, with ``[storage]
    intake_journal`` on) opens that process's intake journal
    (:mod:`storage.intake`); ``clean_temp`` first replays every journal this
    host left in the spool.
    """
    durable = settings.storage.fsync
    use_barrier = durable and syncfs_available()
    db = Database(
        settings.storage.database_url,
        sqlite_synchronous="NORMAL" if (use_barrier or not durable) else "FULL",
    )
    if upgrade:
        db.upgrade()
    shared = settings.storage.shared_spool
    spool = Spool(
        settings.storage.spool_dir,
        fsync=durable and not use_barrier,
        min_free_bytes=settings.storage.min_free_disk_mb * 2**20,
        temp_name=f"{socket.gethostname()}-{settings.node.port}" if shared else None,
    )
    if clean_temp:  # only the main process, before anyone receives
        spool.clean_temp()
    barrier = None
    if use_barrier:
        folders = [spool.root]
        if db.sqlite_folder is not None:
            folders.append(db.sqlite_folder)
        barrier = DurabilityBarrier(folders)
    store = ReceivedStore(
        db, spool, DuplicateAction(settings.node.duplicate_policy.value), barrier=barrier
    )
    prefix = f"{socket.gethostname()}-{settings.node.port}-" if shared else ""
    journals = spool.root / INTAKE_DIR
    if clean_temp:
        folders = sorted(p for p in journals.glob(f"{prefix}*") if p.is_dir())
        replayed = store.replay_intake(folders)
        if replayed:
            LOGGER.warning(
                "intake journal: %d acknowledged instance(s) written to the spool and "
                "database after an unclean stop",
                replayed,
            )
        reconcile_spool(store, min_age_s=settings.storage.reconcile_min_age_s if shared else 0.0)
    if intake_name is not None and settings.storage.intake_journal:
        store.start_intake(
            journals / f"{prefix}{intake_name}",
            durable=durable,
            memory_limit=settings.storage.intake_max_instance_kb * 1024,
        )
    return store

"""A spool several receivers share (``[storage] shared_spool``), and roles that do not receive.

A starting receiver removes only its own unfinished files and leaves young
files without a row to the receiver that may be committing them; a process
without the receiver role touches neither.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pydicom

from dicom_node.config import Settings
from dicom_node.node import Node
from dicom_node.receive.reconcile import reconcile_spool
from dicom_node.receive.store import open_store


def settings_for(tmp_path: Path, port: int, *, shared: bool = True) -> Settings:
    return Settings.model_validate(
        {
            "node": {"port": port},
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": f"sqlite:///{tmp_path / 'node.db'}",
                "min_free_disk_mb": 0,
                "shared_spool": shared,
                "reconcile_min_age_s": 60,
            },
            "web": {"enabled": False},
        }
    )


def test_a_starting_receiver_leaves_the_others_unfinished_files(tmp_path: Path) -> None:
    first = open_store(settings_for(tmp_path, 11112))
    writer = first.spool.open_temp()
    writer.write(b"half a data set")
    assert writer.path.parent.name.endswith("-11112")
    second = open_store(settings_for(tmp_path, 11113))  # starts while the first receives
    assert writer.path.exists()
    assert second.spool.tmp_dir != first.spool.tmp_dir
    again = open_store(settings_for(tmp_path, 11112))  # the first one's own restart
    assert not writer.path.exists()
    for store in (first, second, again):
        store.db.dispose()


def test_young_files_without_a_row_are_left_to_their_receiver(
    tmp_path: Path, dicom_data: Path
) -> None:
    store = open_store(settings_for(tmp_path, 11112))
    source = dicom_data / "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    rel = store.spool.relative_path(
        str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    )
    placed = store.spool.absolute(rel)
    placed.parent.mkdir(parents=True)
    placed.write_bytes(source.read_bytes())  # placed by a receiver, its row not yet committed

    young = reconcile_spool(store, min_age_s=60)
    assert (young.orphans, young.young) == (0, 1)
    assert store.known_paths() == set()

    old = time.time() - 120
    os.utime(placed, (old, old))  # its receiver died before committing: adopt it
    adopted = reconcile_spool(store, min_age_s=60)
    assert (adopted.orphans, adopted.registered, adopted.young) == (1, 1, 0)
    assert store.known_paths() == {rel}
    store.db.dispose()


def test_roles_without_the_receiver_clean_nothing(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, 11112, shared=False)
    store = open_store(settings)
    unfinished = store.spool.tmp_dir / "in-flight.part"
    unfinished.write_bytes(b"x")
    store.db.dispose()
    node = Node(settings, roles=frozenset({"collector", "sender"}))
    try:
        assert node.scp is None and node.collector is not None and node.sender is not None
        assert unfinished.exists()
    finally:
        node.store.db.dispose()
    node = Node(settings)  # all roles: the receiver cleans its temporary files
    node.store.db.dispose()
    assert not unfinished.exists()

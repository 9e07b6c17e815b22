"""``type = "folder"``: a folder, one file per object.

Each object is written under ``<path>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``
(PS3.10 files as the node stored them), to a temporary name, flushed and
renamed, so a reader never sees half a file and a re-send replaces the file
with the same bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from dicom_node.config import DestinationSettings
from dicom_node.deliver.destinations.base import Outgoing
from dicom_node.errors import DeliveryError
from dicom_node.protocol import status as st
from storage.durability import fsync_path
from storage.spool import safe_component

if TYPE_CHECKING:
    from storage.jobs import DeliveryOutcome

__all__ = ["FolderDestination", "FolderDestinationSettings", "folder_file"]


class FolderDestinationSettings(DestinationSettings):
    """``[[destinations]]`` with ``type = "folder"``: a folder."""

    required_fields: ClassVar[tuple[str, ...]] = ("path",)
    path_fields: ClassVar[tuple[str, ...]] = ("path",)

    type: Literal["folder"]
    path: Path


def folder_file(root: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    """Where a folder destination keeps one object:
    ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm`` (each part made safe)."""
    return (
        Path(root)
        / safe_component(study_uid)
        / safe_component(series_uid)
        / f"{safe_component(sop_instance_uid)}.dcm"
    )


class FolderDestination:
    """Copies each object into the folder; an error writing it is retried."""

    type_name: ClassVar[str] = "folder"
    settings_model: ClassVar[type[DestinationSettings]] = FolderDestinationSettings

    def __init__(self, settings: FolderDestinationSettings, *, calling_ae: str) -> None:
        self.settings = settings

    def send(self, objects: Sequence[Outgoing]) -> list[DeliveryOutcome]:
        """Write each object; the outcome of a written file is status 0x0000."""
        from pydicom import dcmread

        from storage.jobs import DeliveryOutcome

        dest = self.settings
        out = []
        for obj in objects:
            try:
                ds = dcmread(
                    obj.path,
                    stop_before_pixels=True,
                    specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
                )
                final = folder_file(
                    dest.path,
                    str(ds.StudyInstanceUID),
                    str(ds.SeriesInstanceUID),
                    obj.sop_instance_uid,
                )
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.parent / f".{final.name}.part"
                shutil.copyfile(obj.path, tmp)
                fsync_path(tmp)
                os.replace(tmp, final)
                out.append(DeliveryOutcome(obj.delivery_id, True, st.SUCCESS))
            except OSError as exc:
                out.append(
                    DeliveryOutcome(obj.delivery_id, False, None, f"{dest.name}: {exc}", retry=True)
                )
        return out

    def echo(self) -> float:
        """Create the folder if need be and write, flush and remove a probe file."""
        t0 = time.perf_counter()
        probe = Path(self.settings.path) / f".echo-{os.getpid()}.part"
        try:
            probe.parent.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            fsync_path(probe)
            probe.unlink()
        except OSError as exc:
            raise DeliveryError(f"folder {self.settings.path} is not writable: {exc}") from exc
        return time.perf_counter() - t0

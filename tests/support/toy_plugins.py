"""A toy pipeline, result kind, destination type and executor, each in this one file.

They show what an extension needs: a pipeline is a
:class:`ai_models.pipelines.Pipeline` subclass with ``name``, ``modalities``,
``version`` and ``run`` (registered by its ``"module:Class"`` path); a
result kind is a class with ``kind``, ``sop_class_uid``, ``series_number``,
``applies`` and ``write`` (:class:`dicom_node.results.writer.ResultWriter`); a destination type is a
settings model and a class with ``send`` and ``echo``
(:class:`dicom_node.deliver.destinations.base.Destination`); an executor is a
class with ``start``, ``wake`` and ``stop`` that runs jobs through
:func:`dicom_node.work.worker.run_job`.  The tests register
them for a while (a built-in one would be a line in the registry).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from ai_models.pipelines import Pipeline
from ai_models.types import Finding, Measurement, PipelineResult, Segment, Volume
from dicom_node.config import DestinationSettings
from dicom_node.deliver.destinations import Outgoing
from storage.jobs import DeliveryOutcome
from tests.results.helpers import ANATOMY, BONE, MM3, VOLUME, algorithm

if TYPE_CHECKING:
    from dicom_node.results.writer import WriteContext

#: Basic Text SR Storage (PS3.4 B.5).
BASIC_TEXT_SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.11"


class DenseVoxelsPipeline(Pipeline):
    """Pipeline ``toy-dense``: CT voxels above 300 HU as one segment, with its volume."""

    name = "toy-dense"
    description = "toy: CT voxels above 300 HU"
    modalities = ("CT",)
    version = "0.1"

    def run(self, volume: Volume) -> PipelineResult:
        self.check(volume)
        t0 = time.perf_counter()
        mask = volume.array > 300.0
        uid = hd.UID()
        segment = Segment(1, "Dense", ANATOMY, BONE, mask, "dense", uid)
        ml = float(np.count_nonzero(mask)) * volume.voxel_volume_mm3
        finding = Finding("dense", uid, BONE, None, 1, [Measurement(VOLUME, ml, MM3)])
        return PipelineResult(
            self.name,
            volume,
            algorithm(),
            [segment],
            [finding],
            timings={"infer": time.perf_counter() - t0},
        )


class FindingCountWriter:
    """Result kind ``"count"``: a Basic Text SR (PS3.3 A.35.1) saying how many findings."""

    kind = "count"
    sop_class_uid = BASIC_TEXT_SR_SOP_CLASS_UID
    series_number = 9099

    def applies(self, result: PipelineResult, context: WriteContext) -> bool:
        return bool(result.findings)

    def write(self, result: PipelineResult, context: WriteContext) -> list[Dataset]:
        src = result.volume.source_datasets[0]
        u = context.uids_for(self.kind)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = u.sop_instance_uid or hd.UID()
        ds.StudyInstanceUID = src.StudyInstanceUID
        ds.SeriesInstanceUID = u.series_instance_uid or hd.UID()
        ds.SeriesNumber = u.series_number if u.series_number is not None else self.series_number
        ds.InstanceNumber = 1
        ds.Modality = "SR"
        for keyword in ("PatientName", "PatientID", "StudyDate", "StudyTime", "AccessionNumber"):
            setattr(ds, keyword, src.get(keyword, ""))
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        text = Dataset()
        text.RelationshipType = "CONTAINS"
        text.ValueType = "TEXT"
        text.TextValue = f"{len(result.findings)} finding(s) by {result.pipeline}"
        ds.ContentSequence = DicomSequence([text])
        return [ds]


class MemoryDestinationSettings(DestinationSettings):
    """``type = "memory"``: objects are kept in :data:`MemoryDestination.boxes`."""

    required_fields: ClassVar[tuple[str, ...]] = ("box",)

    type: Literal["memory"]
    box: str


class MemoryDestination:
    """Keeps what it is sent, by box name; refuses objects of a kind it is told to."""

    type_name: ClassVar[str] = "memory"
    settings_model: ClassVar[type[DestinationSettings]] = MemoryDestinationSettings
    boxes: ClassVar[dict[str, list[bytes]]] = {}
    refused_kinds: ClassVar[set[str]] = set()

    def __init__(self, settings: MemoryDestinationSettings, *, calling_ae: str) -> None:
        self.settings = settings

    def send(self, objects: Sequence[Outgoing]) -> list[DeliveryOutcome]:
        out = []
        for obj in objects:
            if obj.kind in self.refused_kinds:
                error = f"{obj.kind} refused"
                out.append(DeliveryOutcome(obj.delivery_id, False, None, error, retry=False))
                continue
            self.boxes.setdefault(self.settings.box, []).append(obj.path.read_bytes())
            out.append(DeliveryOutcome(obj.delivery_id, True))
        return out

    def echo(self) -> float:
        return 0.0


class InlineExecutor:
    """A toy executor: runs each due job in one thread of its own, through ``run_job``
    (:class:`dicom_node.work.executor.JobExecutor`)."""

    def __init__(self, settings: Any, db: Any, on_idle: Any = None) -> None:
        import threading

        self.settings, self.db = settings, db
        self.ran: list[tuple[int, str]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)

    def _loop(self) -> None:
        from dicom_node.work.worker import run_job
        from storage.dispatch import due_jobs

        while not self._stop.is_set():
            for job in due_jobs(self.db):
                self.ran.append((job.id, run_job(job.id, self.settings, self.db)))
            self._wake.wait(0.2)
            self._wake.clear()

"""Result writers: a pipeline result -> standard DICOM objects.

* :func:`~dicom_node.results.seg.write_seg` -- BINARY Segmentation
  (PS3.3 A.51), one segment per finding / organ;
* :func:`~dicom_node.results.sr.write_sr` -- TID 1500 Measurement Report in a
  Comprehensive 3D SR (PS3.3 A.35.13), referencing the SEG segments;
  :func:`~dicom_node.results.sr.write_negative_sr` -- the same report for a
  result with nothing to report: the algorithm ran and found nothing
  (Finding = "Clinical finding absent");
* :func:`~dicom_node.results.gsps.write_gsps` -- Grayscale Softcopy
  Presentation State (PS3.3 A.33.1): boxes / outlines and labels drawn over
  the source images (output kind ``"gsps"``);
* :func:`~dicom_node.results.sc.write_sc` -- opt-in burned-in overlay series
  (Secondary Capture, PS3.3 A.8.1) for viewers that show neither;
* :func:`~dicom_node.results.heatmap.write_heatmaps` -- explanation maps
  (e.g. Grad-CAM of a classifier's findings) blended over the source image,
  as Secondary Capture images in the same opt-in ``"sc"`` series.

All land in the source study, each kind in its own new series, with a
SeriesDescription that says what made it and the algorithm in Contributing
Equipment.  :func:`write_results` runs the writers a caller asked for;
:func:`save_datasets` stores them as files named ``<kind>_<SOPInstanceUID>.dcm``.

Each kind is a :class:`~dicom_node.results.writer.ResultWriter` registered in
:mod:`dicom_node.results.registry`, which alone lists them; a new kind is one
module with its writer and one line there.

Idempotent retries: with a job's ``uid_seed`` every UID the caller does not
fix is derived from the seed (:func:`~dicom_node.results.common.derive_uid`),
so a retried job re-sends objects with the same UIDs.  Revisions: a result
that supersedes an earlier one (``revision`` > 0) says so in each
SeriesDescription, and its SR names the earlier SR(s) (:class:`PreviousVersion`)
in the Predecessor Documents Sequence.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from dicom_node.results.common import (
    DEFAULT_SERIES_NUMBERS,
    OutputUIDs,
    check_revision,
    check_seed,
    derive_uid,
    device_uid,
)
from dicom_node.results.fast_save import save_as
from dicom_node.results.gsps import GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID, write_gsps
from dicom_node.results.heatmap import heatmap_key, write_heatmaps
from dicom_node.results.registry import (
    kind_of_sop_class,
    register_writer,
    result_kinds,
    unregister_writer,
    writers,
)
from dicom_node.results.sc import SECONDARY_CAPTURE_SOP_CLASS_UID, write_sc
from dicom_node.results.seg import SEGMENTATION_SOP_CLASS_UID, segment_number_map, write_seg
from dicom_node.results.source_header import SourceHeaderError, cleaned_once
from dicom_node.results.sr import (
    COMPREHENSIVE_3D_SR_SOP_CLASS_UID,
    PreviousVersion,
    nothing_to_report,
    previous_versions_of,
    write_negative_sr,
    write_sr,
)
from dicom_node.results.writer import ResultWriter, WriteContext

if TYPE_CHECKING:
    from ai_models.types import PipelineResult

logger = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_KINDS",
    "COMPREHENSIVE_3D_SR_SOP_CLASS_UID",
    "DEFAULT_SERIES_NUMBERS",
    "GRAYSCALE_SOFTCOPY_PRESENTATION_STATE_SOP_CLASS_UID",
    "SECONDARY_CAPTURE_SOP_CLASS_UID",
    "SEGMENTATION_SOP_CLASS_UID",
    "OutputUIDs",
    "PreviousVersion",
    "ResultWriter",
    "SourceHeaderError",
    "WriteContext",
    "derive_uid",
    "device_uid",
    "heatmap_key",
    "kind_of",
    "nothing_to_report",
    "parse_outputs",
    "register_writer",
    "result_kinds",
    "save_datasets",
    "segment_number_map",
    "unregister_writer",
    "write_gsps",
    "write_heatmaps",
    "write_negative_sr",
    "write_results",
    "write_sc",
    "write_seg",
    "write_sr",
]

#: The built-in output kinds in the order they are written (the SR references
#: the SEG); :func:`result_kinds` also names those registered since.
OUTPUT_KINDS = result_kinds()


def parse_outputs(outputs: str | Iterable[str]) -> tuple[str, ...]:
    """Normalise ``"seg,sr"`` or ``{"sr", "seg"}`` to ``("seg", "sr")``.

    Raises
    ------
    ValueError
        For an unknown kind or an empty selection.
    """
    if isinstance(outputs, str):
        items = [p.strip().lower() for p in outputs.split(",") if p.strip()]
    else:
        items = [str(p).strip().lower() for p in outputs]
    kinds = result_kinds()
    unknown = sorted(set(items) - set(kinds))
    if unknown:
        raise ValueError(f"Unknown output kind(s) {unknown}; choose from {list(kinds)}.")
    if not items:
        raise ValueError("No output kind selected.")
    return tuple(k for k in kinds if k in items)


def kind_of(dataset: Dataset) -> str:
    """The registered kind (``"seg"``, ``"sr"``, ...) of a dataset these writers made,
    found by its SOP Class UID; ``"dcm"`` for any other."""
    return kind_of_sop_class(str(dataset.SOPClassUID)) or "dcm"


def write_results(
    result: PipelineResult,
    outputs: str | Iterable[str] = ("seg", "sr"),
    uids: Mapping[str, OutputUIDs] | None = None,
    *,
    sc_slices: str = "mask",
    uid_seed: str | None = None,
    previous_sr: Sequence[PreviousVersion | Dataset] | None = None,
    revision: int = 0,
    negative_report: bool = True,
) -> list[Dataset]:
    """Write the requested result objects for one pipeline result.

    Parameters
    ----------
    result:
        What a pipeline produced for one series.
    outputs:
        Kinds to write, from ``"seg"``, ``"sr"``, ``"gsps"``, ``"sc"`` and any
        registered kind (a set, a list or a comma-separated string).
    uids:
        Per kind, the UIDs and numbers fixed by the caller
        (:class:`OutputUIDs`); anything not given is generated.  For ``"sc"``,
        ``sop_instance_uids`` is keyed by source frame
        (:func:`dicom_node.results.sc.frame_key`).
    sc_slices:
        ``"mask"`` or ``"all"`` (see :func:`~dicom_node.results.sc.write_sc`).
    uid_seed:
        The job's seed (e.g. a hex string stored when the job was created).
        When given, every UID that ``uids`` leaves open is derived from it
        (:func:`~dicom_node.results.common.seeded_uids`): Series and SOP
        Instance UIDs of each kind, each SC image's SOP Instance UID keyed by
        its source frame, and the SEG's Dimension Organization UID.  A retry
        with the same seed, result and arguments writes objects with the same
        UIDs.  Without it they are random.
    previous_sr:
        The SR(s) this result supersedes (:class:`PreviousVersion`, or
        datasets); the new SR lists them in its Predecessor Documents
        Sequence.  Ignored when no SR is written.
    revision:
        0 for a first result; N > 0 for the Nth revision: each
        SeriesDescription ends in ``" (rev N)"`` and it is part of the
        seeded UIDs.
    negative_report:
        With ``"sr"``, write the negative report
        (:func:`~dicom_node.results.sr.write_negative_sr`: the algorithm ran
        and found nothing) when the result has nothing to report
        (:func:`~dicom_node.results.sr.nothing_to_report`); ``False`` writes
        no SR then (a routing rule's ``negative_report`` option).

    Returns
    -------
    list of pydicom.Dataset
        SEG, then SR, then the GSPS, then the SC images (the registry's
        order; each kind's :meth:`~dicom_node.results.writer.ResultWriter.applies`
        says whether it writes anything).  A kind with nothing
        to show is skipped with a log line: no SEG when every mask is empty, no
        findings SR without findings (the negative report instead when the
        result has nothing to report at all and ``negative_report`` is on;
        nothing when its segments are all it has), no GSPS without a box or
        segment to draw
        (:func:`~dicom_node.results.gsps.marks_of`), no SC images when no slice
        has a segment or a detection box (boxes are burned in as outlines,
        :func:`~dicom_node.results.gsps.with_box_segments`).  With ``"sc"``,
        the result's heat maps (``result.heatmaps``) follow the outline
        images in the same SC series
        (:func:`~dicom_node.results.heatmap.write_heatmaps`; seeded UIDs keyed
        by :func:`~dicom_node.results.heatmap.heatmap_key`).

    Raises
    ------
    ValueError, TypeError
        From the writers, for an inconsistent result or invalid arguments.
    SourceHeaderError
        (a ValueError) When a Type 1 source attribute the objects must copy
        is invalid (:mod:`dicom_node.results.source_header`); invalid Type 2
        and Type 3 source values are emptied or left out instead, with one
        warning each.
    """
    kinds = parse_outputs(outputs)
    uids = dict(uids or {})
    unknown = sorted(set(uids) - set(result_kinds()))
    if unknown:
        raise ValueError(f"uids has unknown kind(s) {unknown}.")
    for kind, value in uids.items():
        if not isinstance(value, OutputUIDs):
            raise TypeError(f"uids[{kind!r}] must be an OutputUIDs, got {type(value).__name__}.")

    check_revision(revision)
    if uid_seed is not None:
        check_seed(uid_seed)
    predecessors = previous_versions_of(previous_sr)
    if predecessors and "sr" not in kinds:
        logger.info("previous_sr given but no SR requested: no predecessor is recorded")

    context = WriteContext(
        uids=uids,
        uid_seed=uid_seed,
        revision=revision,
        predecessors=predecessors,
        negative_report=negative_report,
        sc_slices=sc_slices,
    )
    out: list[Dataset] = []
    # Once for all writers: invalid source values are emptied or left out
    # (one warning each), missing Type 2 attributes added empty.
    with cleaned_once(result) as clean:
        for writer in writers():
            if writer.kind not in kinds or not writer.applies(clean, context):
                continue
            written = writer.write(clean, context)
            context.written[writer.kind] = written
            out.extend(written)
    return out


def save_datasets(
    datasets: Iterable[Dataset], out_dir: str | os.PathLike[str]
) -> list[pathlib.Path]:
    """Save datasets as ``<out_dir>/<kind>_<SOPInstanceUID>.dcm``.

    Files are written to a temporary name and renamed, so a reader never sees
    a half-written object.  Returns the paths in input order.
    """
    folder = pathlib.Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{kind_of(ds)}_{ds.SOPInstanceUID}.dcm"
        tmp = path.with_suffix(".dcm.part")
        save_as(ds, tmp)  # as ds.save_as(tmp, enforce_file_format=True), faster
        os.replace(tmp, path)
        paths.append(path)
    return paths

"""One series through one pipeline: the run shared by ``analyze`` and the worker.

modality filter -> read the files into a volume -> the pipeline's run (which
starts with its applicability check) -> result objects written and saved.
A series the pipeline does not apply to ends as *skipped* with the reason
(:class:`~ai_models.errors.VolumeError` while reading,
:class:`~ai_models.errors.PipelineNotApplicable` from the check, the
out-of-distribution check or a plausibility refusal inside the run); any
other error propagates, and the caller decides (``analyze`` reports the
series as failed, the worker fails the job attempt).

Stage timings in seconds: ``read`` (files -> volume), the pipeline's own
stages (``load``, ``preprocess``, ``infer``, ``postprocess``) and ``write``
(DICOM objects built and saved).
"""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicom_node.results import PreviousVersion, save_datasets, write_results

if TYPE_CHECKING:
    from ai_models.dicom_files import DicomFile
    from ai_models.types import PipelineResult

__all__ = ["ResultOptions", "SeriesFiles", "SeriesRun", "run_series"]

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesFiles:
    """The image files of one series, with the series' identifiers."""

    series_instance_uid: str
    modality: str
    files: Sequence[DicomFile]


@dataclass(frozen=True)
class ResultOptions:
    """How the result objects are written (see :func:`dicom_node.results.write_results`)."""

    outputs: tuple[str, ...]
    uid_seed: str | None = None
    previous_sr: Sequence[PreviousVersion] | None = None
    revision: int = 0
    sc_slices: str = "mask"
    negative_report: bool = True


@dataclass
class SeriesRun:
    """What happened to one series.

    ``skipped`` holds the reason when the pipeline did not apply; otherwise
    ``result`` is the pipeline's result and ``files`` the saved objects (in
    the order of ``datasets``).
    """

    series_instance_uid: str
    modality: str
    instances: int
    skipped: str | None = None
    result: PipelineResult | None = None
    datasets: list[Any] = field(default_factory=list)
    files: list[pathlib.Path] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def run_series(
    pipeline: Any,
    series: SeriesFiles,
    options: ResultOptions,
    out_dir: pathlib.Path,
    *,
    lock: threading.Lock | None = None,
) -> SeriesRun:
    """Run *pipeline* on *series* and save its result objects under *out_dir*.

    Parameters
    ----------
    pipeline:
        An :class:`ai_models.pipelines.Pipeline`.
    series:
        The series' image files.
    options:
        Which result kinds, and the UIDs' seed and revision.
    out_dir:
        Folder for the result files (created when missing).
    lock:
        Held around the pipeline's run (a pipeline instance shared by worker
        threads runs one series at a time).
    """
    from ai_models.errors import PipelineNotApplicable, VolumeError

    run = SeriesRun(series.series_instance_uid, series.modality, len(series.files))
    if not series.files:
        run.skipped = "no image instances"
        return run
    modalities = tuple(getattr(pipeline, "modalities", ()) or ())
    if modalities and series.modality not in modalities:
        accepted = ", ".join(modalities)
        run.skipped = f"modality {series.modality or '(none)'} is not one of {accepted}"
        return run
    t0 = time.perf_counter()
    try:
        volume = pipeline.read_series(series.files)
    except VolumeError as exc:
        run.skipped = f"not one volume: {exc}"
        return run
    run.timings["read"] = time.perf_counter() - t0
    try:
        with lock if lock is not None else nullcontext():
            result = pipeline.run(volume)
    except PipelineNotApplicable as exc:
        run.skipped = str(exc)
        return run
    run.result = result
    for stage, seconds in result.timings.items():
        if stage not in ("read", "write"):
            run.timings[stage] = float(seconds)
    t1 = time.perf_counter()
    run.datasets = write_results(
        result,
        options.outputs,
        uid_seed=options.uid_seed,
        previous_sr=options.previous_sr,
        revision=options.revision,
        sc_slices=options.sc_slices,
        negative_report=options.negative_report,
    )
    run.files = save_datasets(run.datasets, out_dir)
    run.timings["write"] = time.perf_counter() - t1
    return run

"""Offline analysis: DICOM files -> pipeline -> SEG / SR / SC files.

The glue behind ``dicom-node analyze``: discover the series under some paths
(by content, :mod:`ai_models.dicom_files`), build each series' volume
(:func:`ai_models.volume.load_series`), run the pipeline on the series it
applies to, and write the result objects as DICOM files named
``<kind>_<SOPInstanceUID>.dcm`` in an output folder.  No network, no
database: the same writers the node uses before sending.

Series a pipeline does not apply to (another modality, a localizer, a tilted
stack, ...) are skipped with the reason; a series whose analysis fails is
reported as failed and the others still run.
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ai_models.dicom_files import discover_series
from ai_models.errors import AIModelsError
from dicom_node.results import parse_outputs
from dicom_node.work.series_run import ResultOptions, SeriesFiles, run_series

logger = logging.getLogger(__name__)

__all__ = ["AnalyzeReport", "SeriesReport", "SeriesStatus", "analyze_paths"]


class SeriesStatus:
    """Outcome of one series (string constants)."""

    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class SeriesReport:
    """What happened to one series.

    ``timings`` holds seconds per stage: ``read`` (files -> volume), the
    pipeline's own stages (``load`` of the model, ``preprocess``, ``infer``,
    ``postprocess``) and ``write`` (DICOM objects built and saved).
    """

    series_instance_uid: str
    modality: str
    instances: int
    status: str
    reason: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    files: list[pathlib.Path] = field(default_factory=list)
    segments: int = 0
    findings: int = 0

    @property
    def total_s(self) -> float:
        """Sum of the stage timings."""
        return float(sum(self.timings.values()))


@dataclass
class AnalyzeReport:
    """Result of :func:`analyze_paths`: one :class:`SeriesReport` per series."""

    pipeline: str
    out_dir: pathlib.Path
    outputs: tuple[str, ...]
    series: list[SeriesReport] = field(default_factory=list)

    @property
    def files(self) -> list[pathlib.Path]:
        """Every file written, in series order."""
        return [f for s in self.series for f in s.files]

    @property
    def analyzed(self) -> list[SeriesReport]:
        return [s for s in self.series if s.status == SeriesStatus.DONE]

    @property
    def failed(self) -> list[SeriesReport]:
        return [s for s in self.series if s.status == SeriesStatus.FAILED]

    @property
    def ok(self) -> bool:
        """At least one series analysed and none failed."""
        return bool(self.analyzed) and not self.failed


def analyze_paths(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    pipeline_name: str,
    out_dir: str | os.PathLike[str],
    outputs: str | Sequence[str] = ("seg", "sr"),
    device: str | None = None,
    *,
    configured: Iterable[Any] = (),
) -> AnalyzeReport:
    """Run one pipeline on every applicable series under ``paths``.

    Parameters
    ----------
    paths:
        Files and/or folders (walked recursively); DICOM is recognised by
        content.  Several series may be mixed.
    pipeline_name:
        A pipeline name (``dicom-node pipelines`` lists them).
    out_dir:
        Folder for the result files (created when missing).
    outputs:
        Result kinds: ``"seg"``, ``"sr"``, ``"sc"`` (list or ``"seg,sr"``).
    device:
        ``"cpu"``, ``"cuda"``, ...; ``None`` lets the runtime choose.
    configured:
        Site-configured segmentation specs (from ``config.toml``), passed to
        the pipeline registry.

    Returns
    -------
    AnalyzeReport

    Raises
    ------
    ai_models.pipelines.UnknownPipelineError
        No pipeline of that name (the message lists the valid ones).
    ValueError
        An unknown output kind.
    """
    from ai_models.pipelines import get_pipeline  # heavy (torch); load on use

    kinds = parse_outputs(outputs)
    options: dict[str, Any] = {"device": device} if device else {}
    pipeline = get_pipeline(pipeline_name, configured=configured, **options)
    out = pathlib.Path(out_dir)
    report = AnalyzeReport(pipeline=pipeline.name or pipeline_name, out_dir=out, outputs=kinds)

    series = discover_series(paths)
    if not series:
        logger.warning("no DICOM image series found")
    result_options = ResultOptions(outputs=kinds)
    for uid, files in series.items():
        modality = files[0].modality if files else ""
        entry = SeriesReport(uid, modality, len(files), SeriesStatus.SKIPPED)
        report.series.append(entry)
        try:
            run = run_series(pipeline, SeriesFiles(uid, modality, files), result_options, out)
        except (AIModelsError, ValueError, TypeError, RuntimeError, OSError) as exc:
            entry.status = SeriesStatus.FAILED
            entry.reason = f"{type(exc).__name__}: {exc}"
            logger.exception("analysis of a %s series failed", modality or "?")
            continue
        entry.timings = run.timings
        if run.skipped is not None or run.result is None:
            entry.reason = run.skipped or ""
            logger.info("series skipped: %s", entry.reason)
            continue
        entry.status = SeriesStatus.DONE
        entry.files = run.files
        entry.segments = len(run.result.segments)
        entry.findings = len(run.result.findings)
        logger.info(
            "series analysed: %d segment(s), %d finding(s), %d file(s) in %.2f s",
            entry.segments,
            entry.findings,
            len(entry.files),
            entry.total_s,
        )
    return report

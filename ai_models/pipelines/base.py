"""The pipeline plug-in interface and helpers shared by pipelines.

A pipeline turns one :class:`~ai_models.types.Volume` into a
:class:`~ai_models.types.PipelineResult`: preprocessing + model +
postprocessing + a coded description of what it found (SNOMED-CT / DCM
codes), which the SEG and TID 1500 SR writers turn into DICOM.

Subclasses set :attr:`Pipeline.name`, :attr:`Pipeline.description`,
:attr:`Pipeline.modalities` and :attr:`Pipeline.version`, may extend
:meth:`Pipeline.check` and implement the hooks :meth:`Pipeline.run` calls in
order: :meth:`~Pipeline.applicability` (the check, returning what later
stages need), then the timed stages ``load`` (:meth:`~Pipeline.load`),
``preprocess`` (:meth:`~Pipeline.preprocess`), ``infer``
(:meth:`~Pipeline.predict`) and ``postprocess`` (:meth:`~Pipeline.postprocess`).
A pipeline that needs another shape may still override :meth:`Pipeline.run`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.uid import generate_uid

from ai_models.codes import CODES
from ai_models.errors import AIModelsError, PipelineNotApplicable
from ai_models.types import AlgorithmInfo, Measurement, PipelineResult, Volume

if TYPE_CHECKING:
    from ai_models.dicom_files import DicomFile
    from ai_models.runtime import ModelKind, StageTimer

logger = logging.getLogger(__name__)

__all__ = [
    "CODES",
    "Pipeline",
    "PipelineInfo",
    "PipelineRun",
    "UnknownPipelineError",
    "tracking_uid",
    "volume_measurement",
    "weights_kind_of",
]


class UnknownPipelineError(AIModelsError, LookupError):
    """No pipeline of that name (the message lists the valid ones)."""


@dataclass(frozen=True)
class PipelineInfo:
    """One line about a pipeline, for ``dicom-node pipelines`` and the API."""

    name: str
    description: str
    modalities: tuple[str, ...]
    version: str
    source: str = "built-in"
    """``"built-in"`` or ``"configured"`` (from the site's config)."""
    labels: tuple[str, ...] = ()
    """The structures or findings it reports, where its config or folder names them."""


@dataclass
class PipelineRun:
    """What one :meth:`Pipeline.run` carries from one hook to the next."""

    volume: Volume
    """The volume being analysed."""
    context: Any = None
    """What :meth:`Pipeline.applicability` returned (e.g. measured anatomy)."""
    model: Any = None
    """What :meth:`Pipeline.load` returned (usually a ``LoadedModel``)."""
    inputs: Any = None
    """What :meth:`Pipeline.preprocess` returned."""
    outputs: Any = None
    """What :meth:`Pipeline.predict` returned."""
    timer: StageTimer = field(default_factory=lambda: _stage_timer())
    """Seconds per stage: ``load``, ``preprocess``, ``infer``, ``postprocess``."""


def _stage_timer() -> StageTimer:
    """A new :class:`~ai_models.runtime.StageTimer` (torch loads only when a pipeline runs)."""
    from ai_models.runtime import StageTimer

    return StageTimer()


class Pipeline(abc.ABC):  # noqa: B024 (a template: every hook has a default)
    """A series-level analysis: ``check(volume)`` then ``run(volume)``.

    :meth:`run` is a template over the hooks :meth:`applicability`,
    :meth:`load`, :meth:`preprocess`, :meth:`predict` and :meth:`postprocess`;
    a subclass implements :meth:`predict` and :meth:`postprocess` (and
    usually :meth:`load` and :meth:`preprocess`), or overrides :meth:`run`.
    """

    name: str = ""
    """Stable identifier used by routing rules and the CLI (an interface)."""
    description: str = ""
    """One line shown by ``dicom-node pipelines``."""
    modalities: tuple[str, ...] = ()
    """DICOM Modality values accepted (empty: any)."""
    version: str = "0"
    """Algorithm version (TID 4019)."""
    gpu_memory_mb: int = 2048
    """The most GPU memory one run needs (MiB): a worker on a GPU starts a job only
    when this fits (:mod:`dicom_node.work.gpu_memory`); 0 bounds nothing."""
    source: str = "built-in"
    label_names: tuple[str, ...] = ()
    """The structures or findings it reports (``dicom-node pipelines --labels``)."""

    @classmethod
    def static_info(cls) -> PipelineInfo:
        """Listing info from the class attributes, without building it (no model load)."""
        return PipelineInfo(
            cls.name, cls.description, tuple(cls.modalities), cls.version, cls.source,
            tuple(cls.label_names),
        )

    def info(self) -> PipelineInfo:
        """This pipeline's :class:`PipelineInfo`."""
        return PipelineInfo(
            self.name, self.description, tuple(self.modalities), self.version, self.source,
            tuple(self.label_names),
        )

    def read_series(self, files: Sequence[DicomFile]) -> Volume:
        """Read one series' files into the :class:`Volume` :meth:`run` takes.

        The default builds a 3D volume (:func:`ai_models.volume.load_series`),
        refusing localizers, gantry tilt and missing or duplicate slices with a
        :class:`~ai_models.errors.VolumeError`.  Pipelines that take other
        inputs (a single radiograph, a mammogram) override it.
        """
        from ai_models.volume import load_series

        return load_series(files)

    def check(self, volume: Volume) -> None:
        """Raise :class:`PipelineNotApplicable` (with the reason) if out of scope.

        The base implementation checks the modality.
        """
        if self.modalities and volume.modality not in self.modalities:
            raise PipelineNotApplicable(
                f"{self.name}: modality {volume.modality or '(none)'!r} is not one of "
                f"{', '.join(self.modalities)}"
            )

    def applicability(self, volume: Volume) -> Any:
        """The applicability check run by :meth:`run`; returns what later stages need.

        The default calls :meth:`check` and returns ``None``.  Pipelines whose
        check measures something the postprocessing uses (e.g. lung fields)
        return it here; it reaches the hooks as :attr:`PipelineRun.context`.

        Raises
        ------
        PipelineNotApplicable
            Out of scope (the message gives the reason).
        """
        self.check(volume)
        return None

    def load(self) -> Any:
        """The model (stage ``load``); the default has none (``None``)."""
        return None

    def preprocess(self, volume: Volume, model: Any = None) -> Any:
        """The network input for ``volume`` (stage ``preprocess``).

        ``model`` is what :meth:`load` returned (``None``: load it).  The
        default passes the volume through.
        """
        return volume

    def predict(self, model: Any, inputs: Any) -> Any:
        """The network output for the preprocessed ``inputs`` (stage ``infer``)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither predict nor run")

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """The result from the network output (stage ``postprocess``).

        ``run`` carries the volume, the applicability context, the model,
        the inputs and outputs; :meth:`run` sets the result's ``timings``.
        """
        raise NotImplementedError(f"{type(self).__name__} implements neither postprocess nor run")

    def result(
        self,
        volume: Volume,
        weights_sha256: str,
        parameters: Sequence[str] = (),
        **outputs: Any,
    ) -> PipelineResult:
        """This pipeline's result for ``volume``, for :meth:`postprocess` to return.

        The algorithm is identified as TID 4019 asks: this pipeline's name and
        version, the weights' sha256 and the ``parameters`` that shaped the
        result (e.g. ``"threshold=0.5"``); ``outputs`` are the other
        :class:`~ai_models.types.PipelineResult` fields (``segments``,
        ``findings``, ``procedure_reported``, ``notes``, ``heatmaps``).
        """
        return PipelineResult(
            pipeline=self.name,
            volume=volume,
            algorithm=AlgorithmInfo(
                name=self.name,
                version=self.version,
                weights_sha256=weights_sha256,
                parameters=tuple(parameters),
            ),
            **outputs,
        )

    def run(self, volume: Volume) -> PipelineResult:
        """Analyse one volume: the applicability check, then the four timed stages.

        Parameters
        ----------
        volume:
            ``array`` ``(n_slices, rows, columns)`` with geometry in LPS.

        Returns
        -------
        PipelineResult
            Segment masks on the volume's own ``(k, i, j)`` grid, findings,
            algorithm identification and per-stage ``timings`` (seconds).

        Raises
        ------
        PipelineNotApplicable
            From :meth:`applicability`.
        """
        return self.run_stages(volume, self.applicability(volume))

    def run_stages(self, volume: Volume, context: Any = None) -> PipelineResult:
        """The four timed stages of :meth:`run` on a volume already found applicable.

        ``context`` is what :meth:`applicability` returned.
        """
        run = PipelineRun(volume, context=context)
        with run.timer("load"):
            run.model = self.load()
        with run.timer("preprocess"):
            run.inputs = self.preprocess(volume, run.model)
        with run.timer("infer"):
            run.outputs = self.predict(run.model, run.inputs)
        before = dict(run.timer.timings)
        with run.timer("postprocess"):
            result = self.postprocess(run)
        # Stages the postprocessing times itself (e.g. an explanation) are not
        # counted twice.
        nested = sum(
            v - before.get(k, 0.0) for k, v in run.timer.timings.items() if k != "postprocess"
        )
        run.timer.timings["postprocess"] -= nested
        result.timings = run.timer.timings
        logger.info(
            "%s: %s",
            self.name,
            ", ".join(f"{k} {v:.2f}s" for k, v in run.timer.timings.items()),
        )
        return result

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} v{self.version}>"


def weights_kind_of(kind: str) -> ModelKind:
    """A pipeline's ``weights_kind`` checked: ``state_dict``, ``torchscript`` or ``bundle``.

    The three ways :func:`ai_models.runtime.load_model` loads weights, so
    that a site's own weights (in any of them) plug into a shipped pipeline.

    Raises
    ------
    ValueError
        For any other value (the message lists the valid ones).
    """
    from ai_models.runtime import ModelKind

    try:
        return ModelKind(kind)
    except ValueError:
        valid = ", ".join(k.value for k in ModelKind)
        raise ValueError(f"weights_kind must be one of {valid}; got {kind!r}") from None


def tracking_uid(series_instance_uid: str, pipeline: str, tracking_id: str) -> str:
    """Deterministic Tracking UID: same series + pipeline + finding -> same UID.

    Reruns on the same series therefore keep their tracking UIDs (TID 1500
    longitudinal tracking works and superseded results line up).
    """
    return str(generate_uid(entropy_srcs=[series_instance_uid or "", pipeline, tracking_id]))


def volume_measurement(mask: np.ndarray, volume: Volume) -> Measurement:
    """Volume (SCT 118565006) of a boolean mask on ``volume``'s grid, in mm3."""
    return Measurement(
        name=CODES.VOLUME,
        value=float(np.count_nonzero(mask)) * volume.voxel_volume_mm3,
        unit=CODES.MM3,
    )


def longest_diameter_mm(
    mask: np.ndarray, spacing: np.ndarray, direction: np.ndarray | None = None
) -> float:
    """Longest distance (mm) between voxel centres of a mask, in patient space.

    Uses the convex hull of the voxel centres, so it is exact for the
    voxelised object and cheap for large ones.

    Parameters
    ----------
    mask:
        ``(k, i, j)`` boolean (a crop is fine: distances are relative).
    spacing:
        ``(3,)`` mm along the mask's axes.
    direction:
        ``(3, 3)`` unit column vectors of the axes (default: orthonormal
        identity; any orthonormal direction gives the same distances).
    """
    idx = np.argwhere(mask)
    if len(idx) == 0:
        return 0.0
    sp = np.asarray(spacing, dtype=float)
    if len(idx) == 1:
        return float(np.min(sp))
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    pts = idx @ (d * sp[None, :]).T
    try:
        from scipy.spatial import ConvexHull

        pts = pts[ConvexHull(pts).vertices]
    except Exception:  # degenerate (flat/linear) sets: fall back to all points
        if len(pts) > 4000:
            pts = pts[np.linspace(0, len(pts) - 1, 4000).astype(int)]
    d2 = ((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
    return float(np.sqrt(d2.max()))

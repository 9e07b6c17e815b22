"""A segmentation pipeline described by data, so a site can plug in a model.

A :class:`SegmentationSpec` names a TorchScript file, a MONAI bundle
directory or a state dict for a built-in architecture, the input geometry
and intensity handling it expects, and the label table with its codes.
:func:`build_configured_pipeline` turns it into a :class:`Pipeline`.  The
node's config maps TOML tables onto :class:`SegmentationSpec`; nothing here
knows about TOML.

Example (as the config layer would build it)::

    SegmentationSpec(
        name="site-liver",
        kind="bundle",
        path="/models/liver_bundle",
        modalities=("CT",),
        spacing_mm=(1.5, 1.5, 1.5),
        orientation="RAS",
        normalization="window",
        window=(-200.0, 300.0),
        patch_size=(96, 96, 96),
        labels=[LabelSpec(1, "Liver", CODES.ANATOMICAL_STRUCTURE,
                          CodedConcept("10200004", "SCT", "Liver"))],
    )

Only load models from trusted sources: MONAI bundle configs are evaluated
(``$`` expressions go through ``eval``) and TorchScript can run code.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ai_models import runtime
from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.label_mask import label_masks
from ai_models.pipelines._grid import Orientation, nearest_index, orientation_from_direction
from ai_models.pipelines.base import (
    CODES,
    Pipeline,
    PipelineRun,
    tracking_uid,
)
from ai_models.types import CodedConcept, Finding, Measurement, PipelineResult, Segment, Volume

logger = logging.getLogger(__name__)

__all__ = [
    "LabelSpec",
    "SegmentationSpec",
    "ConfiguredSegmentationPipeline",
    "build_configured_pipeline",
    "label_map_result",
    "masks_result",
    "MODEL_KINDS",
    "ORIENTATIONS",
    "NORMALIZATIONS",
    "OUTPUTS",
]

MODEL_KINDS = ("torchscript", "bundle", "state_dict")
"""Valid :attr:`SegmentationSpec.kind` values."""

ORIENTATIONS = ("source", "LPS", "RAS")
"""Valid :attr:`SegmentationSpec.orientation` values.

``source``: the volume's own ``(k, i, j)`` axes, untouched.
``LPS``: permuted/flipped to ``(z, y, x)`` towards superior, posterior, left.
``RAS``: MONAI's layout after ``LoadImage`` + ``Orientation("RAS")``:
axes ``(x, y, z)`` increasing towards patient Right, Anterior, Superior.
"""

NORMALIZATIONS = ("window", "zscore", "none")
"""Valid :attr:`SegmentationSpec.normalization` values.

``window``: clip to :attr:`SegmentationSpec.window` and scale to ``[0, 1]``.
``zscore``: subtract the mean, divide by the standard deviation.
``none``: raw values (e.g. HU).
"""

OUTPUTS = ("argmax", "sigmoid")
"""Valid :attr:`SegmentationSpec.output` values.

``argmax``: one channel per class incl. background; voxel label = argmax.
``sigmoid``: one channel per label (in :attr:`SegmentationSpec.labels`
order); each thresholded at 0.5 (labels may overlap).
"""


@dataclass(frozen=True)
class LabelSpec:
    """One output label and how to code it in SEG/SR.

    ``value`` is the label value in an ``argmax`` output (1..), or ignored
    for ``sigmoid`` outputs where the order of the list gives the channel.
    """

    value: int
    label: str
    category: CodedConcept
    type: CodedConcept
    anatomic_region: CodedConcept | None = None
    measure_volume: bool = True
    type_modifier: CodedConcept | None = None
    anatomic_region_modifier: CodedConcept | None = None


@dataclass
class SegmentationSpec:
    """Everything needed to run a site's segmentation model, as plain data.

    Attributes
    ----------
    name:
        Pipeline name (routing rules refer to it).
    kind:
        ``"torchscript"``, ``"bundle"`` or ``"state_dict"``.
    path:
        Model file or bundle directory.
    labels:
        Output labels with their codes.
    description:
        One line for listings.
    modalities:
        Accepted Modality values.
    version:
        Algorithm version reported in TID 4019.
    gpu_memory_mb:
        The most GPU memory one run needs (MiB; a worker on a GPU waits until
        it fits).
    spacing_mm:
        Resample to this spacing (in the axis order of ``orientation``)
        before inference; ``None`` keeps the source spacing.
    orientation:
        Array layout the model expects (:data:`ORIENTATIONS`).
    normalization, window:
        Intensity handling (:data:`NORMALIZATIONS`); ``window`` = ``(lo, hi)``.
    patch_size:
        Sliding-window patch size; larger inputs are tiled.
    sw_batch_size, overlap:
        Sliding-window batch (bounds device memory) and overlap.
    output:
        How to read the network output (:data:`OUTPUTS`).
    architecture, architecture_kwargs:
        For ``state_dict``: a built-in architecture (see
        :data:`ai_models.runtime.ARCHITECTURES`) and its arguments.
    min_slices:
        Refuse volumes with fewer slices.
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    name: str
    kind: str
    path: str | pathlib.Path
    labels: list[LabelSpec]
    description: str = ""
    modalities: tuple[str, ...] = ()
    version: str = "1"
    gpu_memory_mb: int = 4096
    spacing_mm: tuple[float, float, float] | None = None
    orientation: str = "source"
    normalization: str = "window"
    window: tuple[float, float] | None = (-1000.0, 1000.0)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    sw_batch_size: int = runtime.DEFAULT_SW_BATCH_SIZE
    overlap: float = runtime.DEFAULT_OVERLAP
    output: str = "argmax"
    architecture: str | None = None
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    min_slices: int = 1
    device: str | None = None

    def validate(self) -> None:
        """Raise :class:`ValueError` naming the first bad field."""
        if not self.name or not self.name.strip():
            raise ValueError("pipeline name must not be empty")
        for attr, valid in (
            ("kind", MODEL_KINDS),
            ("orientation", ORIENTATIONS),
            ("normalization", NORMALIZATIONS),
            ("output", OUTPUTS),
        ):
            if getattr(self, attr) not in valid:
                raise ValueError(
                    f"{self.name}: {attr} {getattr(self, attr)!r} is not one of {', '.join(valid)}"
                )
        if not self.labels:
            raise ValueError(f"{self.name}: at least one label is needed")
        values = [lab.value for lab in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"{self.name}: label values repeat: {values}")
        if self.output == "argmax" and any(v < 1 for v in values):
            raise ValueError(f"{self.name}: label values must be >= 1 (0 is background)")
        if self.normalization == "window" and (
            self.window is None or self.window[0] >= self.window[1]
        ):
            raise ValueError(
                f"{self.name}: window must be (lo, hi) with lo < hi, got {self.window}"
            )
        if self.spacing_mm is not None and (len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0):
            raise ValueError(f"{self.name}: spacing_mm must be 3 positive numbers")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"{self.name}: patch_size must be 3 positive integers")
        if self.sw_batch_size < 1:
            raise ValueError(f"{self.name}: sw_batch_size must be >= 1")
        if not 0 <= self.overlap < 1:
            raise ValueError(f"{self.name}: overlap must be in [0, 1)")
        if self.kind == "state_dict" and self.architecture is None:
            # the sidecar JSON may still name it; checked when loading
            logger.debug("%s: state dict without architecture; expecting a JSON sidecar", self.name)


def _orientation(spec: SegmentationSpec, volume: Volume) -> Orientation:
    if spec.orientation == "source":
        return Orientation(perm=(0, 1, 2), flip=(False, False, False))
    o = orientation_from_direction(volume.direction)
    if spec.orientation == "LPS":
        return o
    # RAS (x, y, z): canonical LPS (z, y, x) reversed in order, x and y flipped.
    perm = (o.perm[2], o.perm[1], o.perm[0])
    flip = (not o.flip[2], not o.flip[1], o.flip[0])
    return Orientation(perm=perm, flip=flip)


class ConfiguredSegmentationPipeline(Pipeline):
    """A :class:`Pipeline` built from a :class:`SegmentationSpec`."""

    source = "configured"

    def __init__(self, spec: SegmentationSpec) -> None:
        spec.validate()
        self.spec = spec
        self.name = spec.name
        self.description = spec.description or f"site segmentation model ({spec.kind})"
        self.modalities = tuple(spec.modalities)
        self.version = spec.version
        self.gpu_memory_mb = spec.gpu_memory_mb

    def check(self, volume: Volume) -> None:
        """Modality and minimum slice count."""
        super().check(volume)
        if volume.shape[0] < self.spec.min_slices:
            raise PipelineNotApplicable(
                f"{self.name}: {volume.shape[0]} slice(s), at least {self.spec.min_slices} needed"
            )

    def load(self) -> runtime.LoadedModel:
        """Load (or fetch the warm) model."""
        s = self.spec
        return runtime.load_model(
            s.path,
            s.kind,
            device=s.device,
            architecture=s.architecture,
            architecture_kwargs=s.architecture_kwargs or None,
        )

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if s.normalization == "window":
            lo, hi = s.window  # type: ignore[misc]
            return (x.clamp(lo, hi) - lo) / (hi - lo)
        if s.normalization == "zscore":
            return (x - x.mean()) / x.std().clamp_min(1e-6)
        return x

    def preprocess(
        self, volume: Volume, model: Any = None
    ) -> tuple[torch.Tensor, Orientation, tuple[int, ...]]:
        """Canonical orientation, resampling to the spec's spacing, normalisation.

        Returns
        -------
        (x, orientation, source_shape)
            ``x`` ``(1, z, y, x)`` float32 on the working grid; the canonical
            shape of the volume.
        """
        s = self.spec
        orient = _orientation(s, volume)
        arr = orient.to_canonical(volume.array)
        src_shape = tuple(int(n) for n in arr.shape)
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
        if s.spacing_mm is not None:
            sp = orient.spacing(volume.spacing)
            work = tuple(
                max(1, int(round(n * a / b)))
                for n, a, b in zip(src_shape, sp, s.spacing_mm, strict=False)
            )
            x = F.interpolate(x, size=work, mode="trilinear", align_corners=False)
        return self._normalise(x)[0], orient, src_shape

    def predict(self, model: runtime.LoadedModel, inputs: Any) -> torch.Tensor:
        """Sliding-window inference: ``(channels, z, y, x)`` on the working grid."""
        s = self.spec
        x = inputs[0]
        return runtime.run_network(
            model, x, roi_size=s.patch_size, sw_batch_size=s.sw_batch_size, overlap=s.overlap
        )[0]

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """Labels mapped back to the volume's grid: segments and volume findings."""
        s = self.spec
        volume, model, out = run.volume, run.model, run.outputs
        _, orient, src_shape = run.inputs
        work_shape = tuple(out.shape[1:])
        iz, iy, ix = (nearest_index(n, m) for n, m in zip(src_shape, work_shape, strict=False))
        if s.output == "argmax":
            lab = out.argmax(0).numpy().astype(np.int32)
            lab = np.ascontiguousarray(orient.from_canonical(lab[iz][:, iy][:, :, ix]))
            return label_map_result(
                self, volume, lab, s.labels, model.sha256, parameters=(f"kind={s.kind}",)
            )
        if out.shape[0] < len(s.labels):
            raise ModelLoadError(
                f"{self.name}: model gives {out.shape[0]} channels, "
                f"{len(s.labels)} labels configured"
            )
        prob = torch.sigmoid(out).numpy() > 0.5
        masks = [
            np.ascontiguousarray(orient.from_canonical(prob[c][iz][:, iy][:, :, ix]))
            for c in range(len(s.labels))
        ]
        return masks_result(
            self, volume, masks, s.labels, model.sha256, parameters=(f"kind={s.kind}",)
        )


def _segments_and_findings(
    pipeline: Pipeline,
    volume: Volume,
    masks: Sequence[Any],
    labels: Sequence[LabelSpec],
    counts: Sequence[int],
) -> tuple[list[Segment], list[Finding]]:
    segments: list[Segment] = []
    findings: list[Finding] = []
    for ls, m, count in zip(labels, masks, counts, strict=True):
        if count == 0:
            continue
        tid = ls.label
        uid = tracking_uid(volume.series_instance_uid, pipeline.name, tid)
        segments.append(
            Segment(
                number=len(segments) + 1,
                label=ls.label,
                category=ls.category,
                type=ls.type,
                mask=m,
                tracking_id=tid,
                tracking_uid=uid,
                anatomic_region=ls.anatomic_region,
                anatomic_region_modifier=ls.anatomic_region_modifier,
                type_modifier=ls.type_modifier,
            )
        )
        if ls.measure_volume:
            findings.append(
                Finding(
                    tracking_id=tid,
                    tracking_uid=uid,
                    finding_type=ls.type,
                    finding_site=ls.anatomic_region,
                    segment_number=len(segments),
                    measurements=[
                        Measurement(
                            name=CODES.VOLUME,
                            value=float(count) * volume.voxel_volume_mm3,
                            unit=CODES.MM3,
                        )
                    ],
                )
            )
        logger.debug("label %d (%s): %d voxels", ls.value, ls.label, count)
    return segments, findings


def masks_result(
    pipeline: Pipeline,
    volume: Volume,
    masks: Sequence[np.ndarray],
    labels: Sequence[LabelSpec],
    model_sha256: str,
    parameters: tuple[str, ...] = (),
) -> PipelineResult:
    """The result of one boolean mask per label (labels may overlap).

    Empty masks give no segment; each label with ``measure_volume`` gives a
    volume finding (TID 1411) referencing its segment.
    """
    counts = [int(np.count_nonzero(m)) for m in masks]
    segments, findings = _segments_and_findings(pipeline, volume, masks, labels, counts)
    return _result(pipeline, volume, model_sha256, parameters, segments, findings)


def label_map_result(
    pipeline: Pipeline,
    volume: Volume,
    label_map: np.ndarray,
    labels: Sequence[LabelSpec],
    model_sha256: str,
    parameters: tuple[str, ...] = (),
) -> PipelineResult:
    """The result of a label map on the volume's own ``(k, i, j)`` grid.

    One segment per label of ``labels`` present in the map (a
    :class:`~ai_models.label_mask.LabelMask`: no boolean copy per label, so
    a model with 100+ structures stays within memory), and a volume finding
    for each label with ``measure_volume``.

    Raises
    ------
    ValueError
        The map's shape is not the volume's.
    """
    lab = np.asarray(label_map)
    if lab.shape != volume.shape:
        raise ValueError(f"label map shape {lab.shape} is not the volume's {volume.shape}")
    if lab.dtype.kind not in "iu":
        raise ValueError(f"a label map holds integers, got {lab.dtype}")
    top = max((ls.value for ls in labels), default=0)
    small = np.uint8 if top < 256 else np.uint16
    if lab.dtype != small and lab.size and int(lab.max()) <= np.iinfo(small).max:
        lab = np.clip(lab, 0, None).astype(small)
    by_value = label_masks(lab, [ls.value for ls in labels])
    masks = [by_value[ls.value] for ls in labels]
    counts = [m.count() for m in masks]
    segments, findings = _segments_and_findings(pipeline, volume, masks, labels, counts)
    return _result(pipeline, volume, model_sha256, parameters, segments, findings)


def _result(
    pipeline: Pipeline,
    volume: Volume,
    model_sha256: str,
    parameters: tuple[str, ...],
    segments: list[Segment],
    findings: list[Finding],
) -> PipelineResult:
    return pipeline.result(
        volume,
        model_sha256,
        parameters=parameters,
        segments=segments,
        findings=findings,
        procedure_reported=CODES.CT_UNSPECIFIED if volume.modality == "CT" else None,
    )


def build_configured_pipeline(spec: SegmentationSpec) -> ConfiguredSegmentationPipeline:
    """Validate a spec and make its pipeline (the model loads on first run)."""
    return ConfiguredSegmentationPipeline(spec)

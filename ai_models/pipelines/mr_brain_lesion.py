"""``mr-brain-lesion``: brain, lesion(s) and surrounding edema on brain MR.

A demonstration pipeline trained only on synthetic phantoms
(:mod:`ai_models.training.brain_phantoms`); not for clinical use.

How it works
------------
1. **Scope** -- :meth:`MrBrainLesionPipeline.check` accepts one anatomical
   MR volume of the head: it refuses diffusion (DWI, trace, ADC, FA, a
   DiffusionBValue above 0), localizers, phase / field-map / real /
   imaginary images, mosaics, perfusion and parametric maps, series whose
   BodyPartExamined is not a head part, and volumes too small or too coarse
   (see the constants below).  Mixed orientations (3-plane localizers) are
   already refused by the volume loader.  When an enhanced MR object holds
   magnitude frames and other frames at the same positions (a field-map
   acquisition), :meth:`~MrBrainLesionPipeline.read_series` keeps the one
   magnitude stack.
2. **Canonical orientation** -- the volume is permuted/flipped (a view, no
   copy) so that its axes run towards superior, posterior and patient left;
   oblique series map to the nearest such axes.
3. **Working grid** -- the intensities are averaged onto a 3 mm isotropic
   grid and divided by the median of the foreground (voxels above the mean),
   so that T1-, T2- or FLAIR-like series of any scanner scale look
   alike (:func:`mr_features`).  A 256x256x180 1 mm series becomes about
   60x85x85 voxels.
4. **Network** -- a 4-level MONAI 3D ``UNet`` predicts background / brain /
   lesion / edema on the working grid, in overlapping windows of the
   training patch size (48x64x64 voxels, :data:`ROI_SIZE`).
5. **Back to the source grid** -- class probabilities are interpolated
   trilinearly to the source resolution (slab by slab) and the most likely
   class taken; the brain is the largest connected component; lesion
   components below :data:`MIN_LESION_ML` become brain; edema that touches
   no lesion becomes brain.  Each lesion is its own segment (largest first,
   at most :data:`MAX_LESIONS`) with its volume and longest diameter; the
   edema is one segment with its volume; the brain segment (whole brain,
   lesions and edema included, so it overlaps them) carries the brain
   volume.
6. **Anatomical constraints** ("plausible or silent") -- before step 5's
   cleaning, every label outside the intracranial space
   (:func:`ai_models.anatomy.mr_intracranial`: the head mask at least
   ``SCALP_SKULL_MM`` below the skin, above the neck) becomes background, and
   lesion candidates lying mostly outside it are dropped; a lesion or the
   edema larger than half the brain is dropped; a brain cut by the field of
   view says "Anatomy coverage incomplete", a whole brain outside
   :data:`ai_models.plausibility.RANGES` ``["brain"]`` "Value out of range",
   instead of a volume.  The notes say what was removed and why.

Masks are returned on the volume's own ``(k, i, j)`` grid.
"""

from __future__ import annotations

import logging
import pathlib
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai_models import runtime
from ai_models.anatomy import SCALP_SKULL_MM, MrIntracranial, mr_head, mr_intracranial
from ai_models.codes import CODES
from ai_models.errors import DuplicateSlicesError, ModelLoadError, PipelineNotApplicable
from ai_models.pipelines._grid import Orientation, orientation_from_direction, working_shape
from ai_models.pipelines.base import (
    Pipeline,
    PipelineRun,
    longest_diameter_mm,
    tracking_uid,
    volume_measurement,
    weights_kind_of,
)
from ai_models.plausibility import check_volume, mark_out_of_range
from ai_models.types import (
    CodedConcept,
    Finding,
    Measurement,
    PipelineResult,
    QualitativeEvaluation,
    Segment,
    Volume,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ai_models.dicom_files import DicomFile

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_WEIGHTS",
    "MrBrainLesionPipeline",
    "NAME",
    "VERSION",
    "class_channels",
    "mr_features",
    "non_anatomical_reasons",
    "working_kij",
    "working_spacing",
]

NAME = "mr-brain-lesion"
"""Pipeline name (an interface: routing rules use it)."""

VERSION = "0.1.0"
"""Algorithm version reported in TID 4019 (the weights have their own sha256)."""

DEFAULT_WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights" / "mr_brain_lesion.pt"
"""Shipped weights (state dict; architecture in the ``.json`` beside it)."""

WORKING_SPACING_MM = 3.0
"""Isotropic spacing of the network's working grid (the weights' sidecar may override)."""

ROI_SIZE = (48, 64, 64)
"""Sliding-window patch on the working grid (144 x 192 x 192 mm): the training patch.

The network has instance normalisation, so it is run on windows of the size
it was trained on (smaller inputs are zero-padded to it, as in training),
never on the whole volume at once: on the held-out working-grid phantoms
whole-volume inference loses about 0.05 (brain) to 0.2 (lesion) Dice."""

OVERLAP = 0.5
"""Overlap of neighbouring windows (Gaussian blending)."""

MAX_INTENSITY = 5.0
"""Normalised intensities are clipped to ``[0, MAX_INTENSITY]`` (fat, vessels, artefacts)."""

MIN_SLICES = 8
"""Fewer slices than this: not applicable (the network needs 3D context)."""

MIN_EXTENT_MM = 40.0
"""Smallest accepted extent along the slice normal, in mm."""

MIN_MATRIX = 64
"""Smallest accepted rows/columns."""

MAX_SLICE_SPACING_MM = 8.0
"""Coarser slice spacing: not applicable (lesions of 1 cm would fall between slices)."""

MAX_PIXEL_MM = 4.0
"""Coarser pixels: not applicable."""

MIN_LESION_ML = 0.1
"""Lesion components smaller than this (about 6 mm across) are dropped (become brain)."""

MAX_LESIONS = 10
"""At most this many lesions are reported (the largest)."""

MAX_OUTSIDE_FRACTION = 0.5
"""A lesion candidate with more than this fraction of its voxels outside the
intracranial space (:func:`ai_models.anatomy.mr_intracranial`) is not a brain
lesion: it is dropped, not cut."""

MAX_ABNORMAL_FRACTION = 0.5
"""Edema, or one lesion, larger than this fraction of the whole brain is not
plausible (a large glioblastoma with its edema is about 10-20 % of the brain):
the segment is dropped with a note (its voxels stay brain)."""

PARTIAL_END_FRACTION = 0.05
"""The brain is cut by the field of view when an end plane of the volume holds
at least this fraction of the brain's largest cross-section along that axis."""

HEAD_BODY_PARTS = frozenset({"HEAD", "BRAIN", "SKULL", "HEADNECK", "NECKHEAD", "CEREBRUM"})
"""BodyPartExamined values accepted (spaces, ``_`` and ``-`` removed, upper case);
a series without BodyPartExamined is accepted."""

#: Image/Frame Type values (whole values, any position from the third on) that
#: mean "not an anatomical magnitude image", with the reason given.
NON_ANATOMICAL_IMAGE_TYPES: dict[str, str] = {
    "DIFFUSION": "diffusion-weighted image",
    "DWI": "diffusion-weighted image",
    "ISODWI": "diffusion-weighted image",
    "TRACEW": "diffusion trace-weighted image",
    "TRACE": "diffusion trace-weighted image",
    "ADC": "ADC map",
    "EADC": "exponential ADC map",
    "FA": "fractional anisotropy map",
    "DTI": "diffusion tensor image",
    "TENSOR": "diffusion tensor image",
    "LOCALIZER": "localizer",
    "SCOUT": "localizer",
    "P": "phase image",
    "PHASE": "phase image",
    "PHASE MAP": "phase image",
    "FIELD_MAP": "field map",
    "B0 MAP": "field map",
    "R": "real-part image",
    "REAL": "real-part image",
    "I": "imaginary-part image",
    "IMAGINARY": "imaginary-part image",
    "MOSAIC": "mosaic (multi-slice EPI) image",
    "PERFUSION": "perfusion image",
    "CBF": "perfusion map",
    "CBV": "perfusion map",
    "MTT": "perfusion map",
    "TTP": "perfusion map",
    "T1 MAP": "parametric (T1) map",
    "T2 MAP": "parametric (T2) map",
    "T2_MAP": "parametric (T2) map",
    "T1_MAP": "parametric (T1) map",
    "MIP": "projection (MIP) image",
    "PROJECTION IMAGE": "projection image",
}

#: Enhanced MR Acquisition Contrast values (PS3.3 C.8.13.1) that are refused.
NON_ANATOMICAL_CONTRASTS: dict[str, str] = {
    "DIFFUSION": "diffusion-weighted image",
    "PERFUSION": "perfusion image",
    "FLOW_ENCODED": "flow-encoded (phase contrast) image",
}

#: SeriesDescription patterns (case-insensitive) that are refused, with the reason.
NON_ANATOMICAL_DESCRIPTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"apparent\s+diffusion|\badc\b|\beadc\b", re.I), "ADC map"),
    (
        re.compile(
            r"diffusion|\bdwi\b|\bdti\b|\btrace\w?\b|ep2d_diff|\bresolve\b|\bb\s*=?\s*\d{3,4}\b",
            re.I,
        ),
        "diffusion-weighted image",
    ),
    (
        re.compile(r"locali[sz]er|\bscout\b|\bsurvey\b|3[\s_-]?plane|tri[\s_-]?pilot|aahead", re.I),
        "localizer",
    ),
    (re.compile(r"field\s*map|\bb0\s*map\b", re.I), "field map"),
)


BACKGROUND, BRAIN, LESION, EDEMA = 0, 1, 2, 3
N_CLASSES = 4

CLASS_NAMES = ("background", "brain", "lesion", "edema")
"""Class names in the order of the class values; the model metadata's ``labels``
(``{"<channel>": "<name>"}``) must name each once, in any channel order."""

COLORS = {BRAIN: (70, 130, 180), LESION: (230, 25, 75), EDEMA: (255, 225, 25)}
"""Recommended display colours (RGB) of brain, lesions and edema."""

_BALL = ndimage.generate_binary_structure(3, 3)


# --------------------------------------------------------------------------- model metadata


def working_spacing(metadata: dict[str, Any], kind: runtime.ModelKind | str) -> float:
    """The working-grid spacing in mm from a model's metadata (``working_spacing_mm``).

    State-dict weights without it use :data:`WORKING_SPACING_MM`; a
    TorchScript file or bundle must give it.

    Raises
    ------
    ModelLoadError
        The key is missing (TorchScript, bundle) or not a number of 0.2-20 mm.
    """
    value: Any = metadata.get("working_spacing_mm")
    if value is None:
        if runtime.ModelKind(kind) is not runtime.ModelKind.STATE_DICT:
            raise ModelLoadError(
                f"{NAME}: the model metadata has no 'working_spacing_mm' (isotropic spacing "
                "of the network's working grid in mm)"
            )
        return WORKING_SPACING_MM
    try:
        mm = float(value)
    except (TypeError, ValueError):
        mm = 0.0
    if not (np.isfinite(mm) and 0.2 <= mm <= 20.0):
        raise ModelLoadError(f"{NAME}: bad 'working_spacing_mm' in the model metadata: {value!r}")
    return mm


def class_channels(metadata: dict[str, Any], kind: runtime.ModelKind | str) -> list[int]:
    """The output channel of each class (in :data:`CLASS_NAMES` order).

    Read from the metadata's ``labels`` (``{"0": "background", "1": "brain",
    ...}``, channel -> name, as in the shipped sidecar), else from a MONAI
    bundle's ``network_data_format.outputs.pred.channel_def`` (same form).
    State-dict weights without either use channels 0-3 in that order; a
    TorchScript file or bundle must give them.

    Raises
    ------
    ModelLoadError
        The labels are missing (TorchScript, bundle), malformed, or do not
        name background, brain, lesion and edema once each.
    """
    labels: Any = metadata.get("labels")
    if labels is None:
        try:
            labels = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
        except (KeyError, TypeError):
            labels = None
    if labels is None:
        if runtime.ModelKind(kind) is not runtime.ModelKind.STATE_DICT:
            raise ModelLoadError(
                f"{NAME}: the model metadata has no 'labels' (output channel -> class name, "
                f"e.g. {dict(enumerate(CLASS_NAMES))})"
            )
        return list(range(N_CLASSES))
    if isinstance(labels, list):
        labels = dict(enumerate(labels))
    try:
        by_name = {str(v).strip().lower(): int(k) for k, v in dict(labels).items()}
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{NAME}: bad 'labels' in the model metadata: {labels!r}") from exc
    if (
        sorted(by_name) != sorted(CLASS_NAMES)
        or len(by_name) != len(dict(labels))
        or sorted(by_name.values()) != list(range(N_CLASSES))
    ):
        raise ModelLoadError(
            f"{NAME}: the model metadata's 'labels' must map channels 0-{N_CLASSES - 1} to "
            f"{', '.join(CLASS_NAMES)} (once each); got {labels!r}"
        )
    return [by_name[n] for n in CLASS_NAMES]


# --------------------------------------------------------------------------- preprocessing


def mr_features(arr: np.ndarray, out_shape: tuple[int, int, int]) -> torch.Tensor:
    """Mean intensity per working voxel, normalised to the foreground median.

    Parameters
    ----------
    arr:
        ``(z, y, x)`` MR intensities at the source resolution (any strides).
    out_shape:
        ``(z', y', x')`` working grid size.

    Returns
    -------
    torch.Tensor
        ``(1, z', y', x')`` float32 in ``[0, MAX_INTENSITY]``; air about 0,
        brain tissue about 1.
    """
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    t = t.clamp_min(0.0)
    mid = tuple(min(a, b) for a, b in zip(t.shape[2:], out_shape, strict=False))
    x = F.adaptive_avg_pool3d(t, mid)  # type: ignore[arg-type]
    if tuple(mid) != tuple(out_shape):
        x = F.interpolate(x, size=out_shape, mode="trilinear", align_corners=False)
    v = x.flatten()
    fg = v[v > v.mean()]
    scale = float(fg.median()) if fg.numel() else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = float(v.max()) or 1.0
    return (x[0] / scale).clamp(0.0, MAX_INTENSITY).contiguous()


def working_kij(
    orient: Orientation, shape_kij: tuple[int, int, int], wshape: tuple[int, int, int]
) -> np.ndarray:
    """Source ``(k, i, j)`` fractional indices of every working-grid voxel centre.

    The working grid covers the same extent as the canonical source grid
    (cell-centred).  Returns ``(prod(wshape), 3)`` in C order of ``wshape``
    (canonical ``z, y, x``).  The training script evaluates reference labels
    there.
    """
    shape_c = tuple(int(shape_kij[p]) for p in orient.perm)
    pos = [(np.arange(m) + 0.5) * (n / m) - 0.5 for n, m in zip(shape_c, wshape, strict=True)]
    src = []
    for ax in range(3):
        pa = pos[ax]
        if orient.flip[ax]:
            pa = shape_c[ax] - 1 - pa
        src.append(pa)
    grids = np.meshgrid(*src, indexing="ij")
    kij = np.zeros((int(np.prod(wshape)), 3))
    for ax in range(3):
        kij[:, orient.perm[ax]] = grids[ax].ravel()
    return kij


def upsample_labels(
    logits: torch.Tensor, fine_shape: tuple[int, int, int], slab: int = 16
) -> np.ndarray:
    """Most likely class after trilinear interpolation of the class probabilities.

    Separable: first along ``z`` for the whole volume (cheap at working
    resolution in-plane), then bilinear in-plane slab by slab, so the
    full-resolution probabilities never exist at once.

    Parameters
    ----------
    logits:
        ``(1, C, z', y', x')``.
    fine_shape:
        ``(z, y, x)`` source shape (canonical order).

    Returns
    -------
    np.ndarray
        ``fine_shape`` uint8 labels.
    """
    prob = torch.softmax(logits.float(), dim=1)
    nz, ny, nx = fine_shape
    prob = F.interpolate(
        prob, size=(nz, prob.shape[3], prob.shape[4]), mode="trilinear", align_corners=False
    )[0]  # (C, nz, y', x')
    out = np.empty(fine_shape, np.uint8)
    for z0 in range(0, nz, slab):
        p = prob[:, z0 : z0 + slab].permute(1, 0, 2, 3)  # (s, C, y', x')
        p = F.interpolate(p, size=(ny, nx), mode="bilinear", align_corners=False)
        out[z0 : z0 + slab] = p.argmax(1).numpy().astype(np.uint8)
    return out


# --------------------------------------------------------------------------- scope checks


def _frame_type_items(ds: Dataset, frame_numbers: Iterable[int | None]) -> list[Dataset]:
    """The MR Image Frame Type items (shared, then per-frame) for the given frames."""
    items: list[Dataset] = []
    groups = []
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        groups.append(shared[0])
    per = ds.get("PerFrameFunctionalGroupsSequence")
    if per:
        for f in frame_numbers:
            if f is not None and 1 <= f <= len(per):
                groups.append(per[f - 1])
    for g in groups:
        for kw in ("MRImageFrameTypeSequence", "MRDiffusionSequence"):
            seq = g.get(kw)
            if seq:
                items.append(seq[0])
    return items


def _tokens(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value.strip().upper()]
    return [str(v).strip().upper() for v in value]


def non_anatomical_reasons(volume: Volume) -> list[str]:
    """Why the volume's source images are not an anatomical brain MR (empty: fine).

    Looks at ImageType / Frame Type (from value 3 on), Acquisition Contrast and
    Complex Image Component of enhanced MR frames, DiffusionBValue (top level
    and MR Diffusion Sequence), SeriesDescription and BodyPartExamined of the
    source datasets (a volume without source datasets has no reasons).
    """
    reasons: list[str] = []

    def add(text: str) -> None:
        if text not in reasons:
            reasons.append(text)

    frames_by_uid: dict[str, list[int | None]] = {}
    for f in volume.frames:
        frames_by_uid.setdefault(f.sop_instance_uid, []).append(f.frame_number)
    for ds in volume.source_datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        items: list[Any] = [ds, *_frame_type_items(ds, frames_by_uid.get(uid, []))]
        for it in items:
            for kw in ("ImageType", "FrameType"):
                toks = _tokens(it.get(kw))
                for t in toks[2:]:
                    if t in NON_ANATOMICAL_IMAGE_TYPES:
                        add(f"{NON_ANATOMICAL_IMAGE_TYPES[t]} ({kw} contains {t})")
            ac = str(it.get("AcquisitionContrast", "") or "").upper()
            if ac in NON_ANATOMICAL_CONTRASTS:
                add(f"{NON_ANATOMICAL_CONTRASTS[ac]} (AcquisitionContrast {ac})")
            cic = str(it.get("ComplexImageComponent", "") or "").upper()
            if cic and cic not in ("MAGNITUDE", "MIXED"):  # MIXED: the frames decide
                add(f"not a magnitude image (ComplexImageComponent {cic})")
            b = it.get("DiffusionBValue")
            try:
                bval = float(b) if b not in (None, "") else 0.0
            except (TypeError, ValueError):
                bval = 0.0
            if bval > 0:
                add(f"diffusion-weighted image (DiffusionBValue {bval:g})")
        desc = str(ds.get("SeriesDescription", "") or "")
        for pattern, why in NON_ANATOMICAL_DESCRIPTIONS:
            if pattern.search(desc):
                add(f"{why} (SeriesDescription {desc!r})")
                break
        part = str(ds.get("BodyPartExamined", "") or "")
        norm = re.sub(r"[\s_\-]", "", part.upper())
        if norm and norm not in HEAD_BODY_PARTS:
            add(f"BodyPartExamined {part!r} is not the head")
    return reasons


# --------------------------------------------------------------------------- the pipeline


class MrBrainLesionPipeline(Pipeline):
    """Brain, lesions and edema on anatomical brain MR (see the module docstring).

    Parameters
    ----------
    weights:
        Model file or bundle directory; default :data:`DEFAULT_WEIGHTS`.
    weights_kind:
        How ``weights`` is stored, a :class:`~ai_models.runtime.ModelKind`
        value: ``"state_dict"`` (state dict with its JSON sidecar naming the
        architecture), ``"torchscript"`` (``<stem>.json`` beside it) or
        ``"bundle"`` (a MONAI bundle directory, ``configs/metadata.json``).
        TorchScript and bundle metadata must give ``working_spacing_mm`` and
        ``labels`` (see :func:`working_spacing`, :func:`class_channels`).
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...
    sw_batch_size:
        Sliding-window batch size (windows of :data:`ROI_SIZE` per forward pass).
    """

    name = NAME
    description = (
        "MR brain: brain, lesions and surrounding edema with volumes "
        "(demo model, synthetic training)"
    )
    modalities = ("MR",)
    version = VERSION

    def __init__(
        self,
        weights: str | pathlib.Path | None = None,
        weights_kind: str = "state_dict",
        device: str | None = None,
        sw_batch_size: int = runtime.DEFAULT_SW_BATCH_SIZE,
    ) -> None:
        kind = weights_kind_of(weights_kind)
        self.weights = pathlib.Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.weights_kind = kind
        self.device = device
        self.sw_batch_size = int(sw_batch_size)

    def read_series(self, files: Sequence[DicomFile]) -> Volume:
        """One volume, as the default loader builds it.

        When the loader finds several stacks at the same positions
        (:class:`~ai_models.errors.DuplicateSlicesError`) and exactly one of
        them is an anatomical magnitude image (the others phase, field map,
        real/imaginary, ...), that stack is returned; otherwise the error
        stands (time series, several echoes or contrasts are not one volume).
        """
        from ai_models.volume import load_series, load_volumes

        try:
            return load_series(files)
        except DuplicateSlicesError:
            stacks = load_volumes(files)
            good = [(k, v) for k, v in stacks.items() if not non_anatomical_reasons(v)]
            if len(good) != 1:
                raise
            logger.info(
                "%s: using the magnitude stack %s of %d stacks", self.name, good[0][0], len(stacks)
            )
            return good[0][1]

    def check(self, volume: Volume) -> None:
        """An anatomical MR volume of the head, large and fine enough.

        Besides the headers (:func:`non_anatomical_reasons`), the pixels must
        show a head (:func:`ai_models.anatomy.mr_head`): a pelvis, a knee or a
        cylindrical QA phantom is not applicable whatever the header says.
        """
        super().check(volume)
        reasons = non_anatomical_reasons(volume)
        if reasons:
            raise PipelineNotApplicable(
                f"{self.name}: not an anatomical brain MR volume: {'; '.join(reasons)}"
            )
        n, rows, cols = volume.shape
        if n < MIN_SLICES:
            raise PipelineNotApplicable(
                f"{self.name}: {n} slice(s); at least {MIN_SLICES} are needed for 3D analysis"
            )
        sp = np.asarray(volume.spacing, dtype=float)
        if float(sp[0]) > MAX_SLICE_SPACING_MM:
            raise PipelineNotApplicable(
                f"{self.name}: slices are {sp[0]:.1f} mm apart; at most "
                f"{MAX_SLICE_SPACING_MM:.0f} mm is supported"
            )
        extent = float(n * sp[0])
        if extent < MIN_EXTENT_MM:
            raise PipelineNotApplicable(
                f"{self.name}: the series covers {extent:.0f} mm along the slice normal; "
                f"at least {MIN_EXTENT_MM:.0f} mm are needed"
            )
        if min(rows, cols) < MIN_MATRIX:
            raise PipelineNotApplicable(
                f"{self.name}: matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
            )
        if float(max(sp[1], sp[2])) > MAX_PIXEL_MM:
            raise PipelineNotApplicable(
                f"{self.name}: pixels of {max(sp[1], sp[2]):.1f} mm are coarser than "
                f"{MAX_PIXEL_MM:.0f} mm"
            )
        head = mr_head(volume).reasons()
        if head:
            raise PipelineNotApplicable(f"{self.name}: not a head: {'; '.join(head)}")

    def load(self) -> runtime.LoadedModel:
        """The warm model (loaded once per process).

        Raises
        ------
        ModelLoadError
            Unreadable weights, or metadata without a required key.
        """
        model = runtime.load_model(self.weights, self.weights_kind, device=self.device)
        working_spacing(model.metadata, self.weights_kind)
        class_channels(model.metadata, self.weights_kind)
        return model

    # -- the stages ---------------------------------------------------------

    def preprocess(self, volume: Volume, model: Any = None) -> tuple[torch.Tensor, Orientation]:
        """MR features on the working grid (canonical orientation) and the orientation."""
        model = model if model is not None else self.load()
        ws = working_spacing(model.metadata, self.weights_kind)
        orient = orientation_from_direction(volume.direction)
        arr = orient.to_canonical(volume.array)
        wshape = working_shape(arr.shape, orient.spacing(volume.spacing), ws)
        return mr_features(arr, wshape), orient

    def predict(
        self, model: runtime.LoadedModel, inputs: tuple[torch.Tensor, Orientation]
    ) -> torch.Tensor:
        """Network output on the working grid (canonical orientation), ``(1, 4, z', y', x')``.

        The channels are in class order (background, brain, lesion, edema),
        whatever the network's own order (the metadata's ``labels``).
        """
        feats = inputs[0]
        channels = class_channels(model.metadata, self.weights_kind)
        shape = tuple(int(n) for n in feats.shape[1:])
        pad = [max(r - n, 0) for r, n in zip(ROI_SIZE, shape, strict=True)]
        if any(pad):  # zero (air) at the far ends, as the training crops were padded
            feats = F.pad(feats, [v for p in reversed(pad) for v in (0, p)])
        logits = runtime.run_network(
            model,
            feats,
            roi_size=ROI_SIZE,
            sw_batch_size=self.sw_batch_size,
            overlap=OVERLAP,
        )
        logits = logits[(slice(None), slice(None)) + tuple(slice(0, n) for n in shape)]
        if logits.shape[1] != N_CLASSES:
            raise ModelLoadError(
                f"{NAME}: the network returns {logits.shape[1]} channels; "
                f"{N_CLASSES} are expected ({', '.join(CLASS_NAMES)})"
            )
        if channels != list(range(N_CLASSES)):
            logits = logits[:, channels]
        return logits

    def predict_logits(
        self, volume: Volume, timer: runtime.StageTimer | None = None
    ) -> tuple[torch.Tensor, Orientation, runtime.LoadedModel]:
        """Network output on the working grid (canonical orientation), ``(1, 4, z', y', x')``.

        The stages ``load``, ``preprocess`` and ``infer`` of :meth:`run`, timed
        on ``timer``; see :meth:`predict`.
        """
        timer = timer or runtime.StageTimer()
        with timer("load"):
            model = self.load()
        with timer("preprocess"):
            feats, orient = self.preprocess(volume, model)
        with timer("infer"):
            logits = self.predict(model, (feats, orient))
        return logits, orient, model

    def _analyse(self, volume: Volume) -> PipelineResult:
        """The network and the post-processing, on a volume :meth:`check` accepted."""
        return self.run_stages(volume)

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """Segment brain, lesions and edema and measure them."""
        volume, model, logits = run.volume, run.model, run.outputs
        orient = run.inputs[1]
        fine_shape = tuple(int(volume.shape[p]) for p in orient.perm)
        labels = upsample_labels(logits, fine_shape)  # type: ignore[arg-type]
        segments, findings, notes = self._postprocess(volume, labels, orient)
        logger.info("%s: %d segment(s), %d finding(s)", self.name, len(segments), len(findings))
        return self.result(
            volume,
            model.sha256,
            parameters=(
                f"working_spacing_mm={working_spacing(model.metadata, self.weights_kind)}",
                f"min_lesion_ml={MIN_LESION_ML:g}",
                f"scalp_skull_mm={SCALP_SKULL_MM:g}",
            ),
            segments=segments,
            findings=findings,
            procedure_reported=CODES.MRI_UNSPECIFIED,
            notes=notes,
        )

    # -- postprocessing -----------------------------------------------------

    @staticmethod
    def clean_labels(
        labels: np.ndarray, voxel_ml: float
    ) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
        """Largest brain component, lesions by size, edema attached to a lesion.

        Parameters
        ----------
        labels:
            Canonical ``(z, y, x)`` uint8 labels (changed in place).
        voxel_ml:
            Volume of one voxel in mL.

        Returns
        -------
        (labels, lesions, notes)
            The cleaned labels, one boolean mask per reported lesion (largest
            first), and notes for the result.
        """
        notes: list[str] = []
        fg = labels > 0
        if not fg.any():
            return labels, [], notes
        lab, n = ndimage.label(fg)
        if n > 1:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            sizes[0] = 0
            labels[lab != int(np.argmax(sizes))] = BACKGROUND
        del lab
        les = labels == LESION
        lab, n = ndimage.label(les, structure=_BALL)
        lesions: list[np.ndarray] = []
        if n:
            sizes = np.bincount(lab.ravel(), minlength=n + 1)
            sizes[0] = 0
            order = [int(i) for i in np.argsort(-sizes) if sizes[i] > 0]
            keep = [i for i in order if sizes[i] * voxel_ml >= MIN_LESION_ML]
            if len(keep) > MAX_LESIONS:
                notes.append(
                    f"{len(keep)} lesion candidates; the {MAX_LESIONS} largest are reported"
                )
                keep = keep[:MAX_LESIONS]
            keep_set = set(keep)
            drop = [i for i in order if i not in keep_set]
            if drop:
                labels[np.isin(lab, drop)] = BRAIN
            lesions = [lab == i for i in keep]
        del lab
        ed = labels == EDEMA
        if ed.any():
            any_les = labels == LESION
            near = ndimage.binary_dilation(any_les, _BALL) if any_les.any() else any_les
            elab, en = ndimage.label(ed, structure=_BALL)
            touching = np.unique(elab[near & ed])
            touching = touching[touching > 0]
            orphan = ed & ~np.isin(elab, touching)
            labels[orphan] = BRAIN
        return labels, lesions, notes

    def _postprocess(
        self, volume: Volume, labels: np.ndarray, orient: Orientation
    ) -> tuple[list[Segment], list[Finding], list[str]]:
        spacing_c = orient.spacing(volume.spacing)
        voxel_ml = volume.voxel_volume_mm3 / 1000.0
        notes = constrain_to_intracranial(labels, mr_intracranial(volume), voxel_ml)
        # work on the bounding box of the foreground (brain) only
        fg = labels > 0
        if not fg.any():
            return [], [], [*notes, "no brain found"]
        box = tuple(
            slice(int(ix.min()), int(ix.max()) + 1)
            for ix in (np.flatnonzero(fg.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        )
        del fg
        crop, lesions, clean_notes = self.clean_labels(labels[box].copy(), voxel_ml)
        notes += clean_notes
        brain = crop > 0
        edema = crop == EDEMA
        lesions, edema, why = drop_implausible(brain, lesions, edema, voxel_ml)
        notes += why

        def full(mask_crop: np.ndarray) -> np.ndarray:
            out = np.zeros(labels.shape, bool)
            out[box] = mask_crop
            return np.ascontiguousarray(orient.from_canonical(out))

        series_uid = volume.series_instance_uid
        segments: list[Segment] = []
        findings: list[Finding] = []

        def add(
            label: str,
            mask_crop: np.ndarray,
            category: CodedConcept,
            type_: CodedConcept,
            color: tuple[int, int, int],
            measurements: list[Measurement],
            region: CodedConcept | None = None,
        ) -> Finding:
            uid = tracking_uid(series_uid, self.name, label)
            mask = full(mask_crop)
            segments.append(
                Segment(
                    number=len(segments) + 1,
                    label=label,
                    category=category,
                    type=type_,
                    mask=mask,
                    tracking_id=label,
                    tracking_uid=uid,
                    anatomic_region=region,
                    color_rgb=color,
                )
            )
            findings.append(
                Finding(
                    tracking_id=label,
                    tracking_uid=uid,
                    finding_type=type_,
                    finding_site=region,
                    segment_number=len(segments),
                    measurements=measurements,
                )
            )
            return findings[-1]

        if brain.any():
            brain_finding = add(
                "Brain",
                brain,
                CODES.ANATOMICAL_STRUCTURE,
                CODES.BRAIN,
                COLORS[BRAIN],
                [volume_measurement(brain, volume)],
            )
            cut = cut_ends(brain, box, labels.shape)
            notes += qualify_brain_volume(brain_finding, float(brain.sum()) * voxel_ml, cut)
        for i, m in enumerate(lesions, start=1):
            add(
                f"Lesion {i}",
                m,
                CODES.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                CODES.LESION,
                COLORS[LESION],
                [
                    volume_measurement(m, volume),
                    Measurement(
                        name=CODES.LONG_AXIS,
                        value=longest_diameter_mm(_crop_to(m), spacing_c),
                        unit=CODES.MM,
                    ),
                ],
                region=CODES.BRAIN,
            )
        if edema.any():
            add(
                "Edema",
                edema,
                CODES.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                CODES.EDEMA,
                COLORS[EDEMA],
                [volume_measurement(edema, volume)],
                region=CODES.BRAIN,
            )
        if not lesions:
            notes.append("no lesion found")
        return segments, findings, notes


# --------------------------------------------------------------------------- anatomical constraints


def constrain_to_intracranial(
    labels: np.ndarray, space: MrIntracranial, voxel_ml: float
) -> list[str]:
    """Brain, lesions and edema only inside the intracranial space (in place).

    Lesion candidates lying mostly outside it (more than
    :data:`MAX_OUTSIDE_FRACTION`) are removed whole; every other label outside
    it becomes background.

    Parameters
    ----------
    labels:
        Canonical ``(z, y, x)`` uint8 labels at the source resolution.
    space:
        :func:`ai_models.anatomy.mr_intracranial` of the same volume.
    voxel_ml:
        Volume of one voxel in mL.

    Returns
    -------
    list[str]
        Notes for the result: what was removed, in mL.
    """
    inside = space.intracranial_on(labels.shape)
    outside = ~inside
    notes: list[str] = []
    les = labels == LESION
    if les.any():
        lab, n = ndimage.label(les, structure=_BALL)
        total = np.bincount(lab.ravel(), minlength=n + 1)
        out = np.bincount(lab[outside], minlength=n + 1)
        drop = [
            i
            for i in range(1, n + 1)
            if out[i] > MAX_OUTSIDE_FRACTION * total[i] and total[i] * voxel_ml >= MIN_LESION_ML
        ]
        for i in drop:
            notes.append(
                f"lesion candidate of {total[i] * voxel_ml:.1f} mL outside the intracranial "
                "space: dropped"
            )
        labels[np.isin(lab, drop)] = BACKGROUND
    removed = {c: int((labels[outside] == c).sum()) * voxel_ml for c in (BRAIN, LESION, EDEMA)}
    labels[outside] = BACKGROUND
    parts = [f"{CLASS_NAMES[c]} {ml:.1f} mL" for c, ml in removed.items() if ml >= MIN_LESION_ML]
    if parts:
        where = f", inferior limit: {space.limit_reason}" if space.limit_reason else ""
        notes.append(
            f"outside the intracranial space (skin depth under {SCALP_SKULL_MM:g} mm{where}), "
            f"removed: {', '.join(parts)}"
        )
    return notes


def drop_implausible(
    brain: np.ndarray, lesions: list[np.ndarray], edema: np.ndarray, voxel_ml: float
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Lesions and edema no larger than :data:`MAX_ABNORMAL_FRACTION` of the brain.

    Returns
    -------
    (lesions, edema, notes)
        The plausible lesions (order kept), the edema mask (empty when
        dropped) and a note per dropped segment.  Their voxels stay brain.
    """
    brain_ml = float(brain.sum()) * voxel_ml
    limit = MAX_ABNORMAL_FRACTION * brain_ml
    notes: list[str] = []
    kept = []
    for m in lesions:
        ml = float(m.sum()) * voxel_ml
        if ml > limit:
            notes.append(
                f"lesion of {ml:,.0f} mL is more than {MAX_ABNORMAL_FRACTION:.0%} of the brain "
                f"({brain_ml:,.0f} mL): not plausible, dropped"
            )
        else:
            kept.append(m)
    ml = float(edema.sum()) * voxel_ml
    if ml > limit:
        notes.append(
            f"edema of {ml:,.0f} mL is more than {MAX_ABNORMAL_FRACTION:.0%} of the brain "
            f"({brain_ml:,.0f} mL): not plausible, dropped"
        )
        edema = np.zeros_like(edema)
    return kept, edema, notes


_END_NAMES = (("inferior", "superior"), ("anterior", "posterior"), ("right", "left"))
"""Names of the low and high ends of the canonical axes."""


def cut_ends(brain: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> list[str]:
    """Which ends of the volume cut the brain (partial coverage); empty: none.

    Parameters
    ----------
    brain:
        Canonical brain mask cropped to ``box``.
    box:
        Where the crop lies in the canonical volume of ``shape``.

    An end cuts the brain when the volume's end plane holds at least
    :data:`PARTIAL_END_FRACTION` of the brain's largest cross-section along
    that axis (a few stray voxels do not count).
    """
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        area = brain.sum(axis=other)
        if not area.size or area.max() == 0:
            continue
        least = PARTIAL_END_FRACTION * float(area.max())
        if box[axis].start == 0 and area[0] >= least:
            out.append(_END_NAMES[axis][0])
        if box[axis].stop == shape[axis] and area[-1] >= least:
            out.append(_END_NAMES[axis][1])
    return out


def qualify_brain_volume(finding: Finding, brain_ml: float, cut: list[str]) -> list[str]:
    """Keep the brain volume only when the brain is whole and its volume plausible.

    Partial coverage (``cut`` names the ends): the measurement is replaced by
    ``Finding = Anatomy coverage incomplete`` and the range is not checked.
    Otherwise :func:`ai_models.plausibility.check_volume` decides; outside the
    range :func:`~ai_models.plausibility.mark_out_of_range` replaces it.

    Returns
    -------
    list[str]
        The note saying why no volume is given (empty when it is).
    """
    if cut:
        finding.measurements = []
        finding.qualitative_evaluations.append(
            QualitativeEvaluation(CODES.FINDING, CODES.ANATOMY_COVERAGE_INCOMPLETE)
        )
        return [
            f"brain coverage partial (cut off at the {' and '.join(cut)} end of the volume): "
            "brain volume is not reported"
        ]
    why = check_volume("brain", brain_ml)
    if why:
        mark_out_of_range(finding)
        return [why]
    return []


def _crop_to(mask: np.ndarray) -> np.ndarray:
    """The mask cropped to its bounding box."""
    idx = [np.flatnonzero(mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1))]
    return mask[tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)]


def run_mr_brain_lesion(volume: Volume, **options: Any) -> PipelineResult:
    """Convenience: ``MrBrainLesionPipeline(**options).run(volume)``."""
    return MrBrainLesionPipeline(**options).run(volume)

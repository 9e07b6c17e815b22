"""``mg-masses``: mass detection on a mammogram (MG, or a breast image sent as RG/DX/CR/OT).

A demonstration pipeline trained only on synthetic phantoms
(:mod:`ai_models.training.mammo_phantoms`); not for clinical use.

How it works
------------
1. **Input** -- :meth:`MgMassesPipeline.read_series` reads one image of the
   series (:func:`ai_models.radiograph.load_radiograph`: the lowest Instance
   Number when there are several; the others are not analysed, which is
   logged).  :func:`ai_models.radiograph.presentation_image` applies the
   Modality LUT, the first VOI LUT / window and the polarity (MONOCHROME1
   inverted), so the network always sees dense tissue bright.
2. **Scope** (:meth:`MgMassesPipeline.check`) -- Digital Mammography X-Ray
   Image Storage - For Presentation, or Modality MG, or a radiograph
   (RG, DX, CR, OT: e.g. a digitised film sent as Secondary Capture) whose
   Body Part Examined (or Anatomic Region Sequence, or descriptions) says
   breast.  Refused with the reason: another body part, "For Processing"
   images (raw detector data, not meant for display), colour or multi-frame
   images, a matrix below 256 pixels, and, whatever the header says, an
   image that does not show one breast against the chest wall
   (:func:`ai_models.radiograph.breast_region`).  Then, after these pixel
   checks, the **OOD check** (:meth:`MgMassesPipeline.check_ood`): the
   Mahalanobis distance of the working image's pooled backbone features
   (:func:`ood_features`) from those of the training phantoms
   (:mod:`ai_models.ood`, Lee et al. 2018); above the threshold stored
   beside the weights the image is refused with the score and the
   threshold instead of getting boxes the model has no grounds for.
3. **Working image** -- area-averaged to :data:`WORK_SIZE` (256) pixels on
   the longer side (about 0.8-1 mm per pixel for a 20-26 cm image), divided
   by its 99.5th percentile.
4. **Network** -- a RetinaNet (torchvision) with a small backbone trained
   from scratch: five stride-2 stages (16-24-48-64-96 channels, batch norm),
   a feature pyramid (48 channels) on strides 8, 16 and 32, anchors of 6-96
   pixels (3 sizes x 3 aspect ratios per level), classification and box
   heads of two convolutions with group norm, focal loss; 0.42 M parameters,
   stored in float16 (0.86 MB).
5. **Output** -- boxes with a score at or above the operating threshold
   from the weights' sidecar (chosen on validation phantoms), at most
   :data:`MAX_MASSES`, mapped back onto the source image grid.  Each mass is
   a :class:`~ai_models.types.DetectionFinding` ("Mass 1" is the highest
   score) with the image's laterality as the finding site modifier and its
   view as a qualitative evaluation.  No segments: the SR's planar ROI and
   the GSPS draw the box, and the opt-in SC overlay burns it in
   (:func:`dicom_node.results.gsps.with_box_segments`).

Laterality comes from Image Laterality, else Laterality (else the Frame
Anatomy macro); the view from View Position, else the View Code Sequence
(CID 4014).
"""

from __future__ import annotations

import logging
import pathlib
import re
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ai_models import ood, runtime
from ai_models.codes import CODES, MAMMOGRAPHY_VIEWS, coded
from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.networks.mammo_detector import ARCHITECTURE, MammoBackbone, build_detector
from ai_models.pipelines import MG_MASSES
from ai_models.pipelines.base import (
    Pipeline,
    PipelineInfo,
    PipelineRun,
    tracking_uid,
    weights_kind_of,
)
from ai_models.radiograph import breast_region, load_radiograph, presentation_image, thumbnail
from ai_models.types import (
    CodedConcept,
    DetectionFinding,
    PipelineResult,
    QualitativeEvaluation,
    Volume,
)

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from ai_models.dicom_files import DicomFile

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE",
    "BREAST_BODY_PARTS",
    "DEFAULT_WEIGHTS",
    "MAX_MASSES",
    "MG_FOR_PRESENTATION",
    "MG_FOR_PROCESSING",
    "MODALITIES",
    "MgMassesPipeline",
    "VERSION",
    "WORK_SIZE",
    "build_detector",
    "detect",
    "image_laterality",
    "is_breast_image",
    "mammo_view",
    "metadata_settings",
    "model_input",
    "ood_features",
]

NAME = MG_MASSES

VERSION = "0.1.0"
"""Algorithm version reported in TID 4019 (the weights have their own sha256)."""

DEFAULT_WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights" / "mg_masses.pt"
"""Shipped weights (float16 state dict; architecture and threshold in the ``.json``)."""

WORK_SIZE = int(ARCHITECTURE["kwargs"]["work_size"])
"""Longer side (pixels) of the working image the network sees."""

MIN_MATRIX = 256
"""Smallest accepted rows/columns."""

MAX_MASSES = 5
"""At most this many masses (the highest scores) are reported per image."""

DEFAULT_THRESHOLD = 0.5
"""Operating threshold on the score when the sidecar names none."""

MODALITIES = ("MG", "RG", "DX", "CR", "OT")
"""Modalities looked at (other than MG only with a breast body part)."""

MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
"""Digital Mammography X-Ray Image Storage - For Presentation."""

MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
"""Digital Mammography X-Ray Image Storage - For Processing (refused)."""

BREAST_BODY_PARTS = ("BREAST",)
"""Body Part Examined values of a breast image (PS3.16 Annex L)."""

_BREAST_WORDS = re.compile(r"mammo|breast|\bmamma\b|\bbrust\b|\bsein\b", re.IGNORECASE)


_VIEWS = MAMMOGRAPHY_VIEWS
_VIEW_BY_CODE = {c.value: term for term, c in _VIEWS.items()}


# --------------------------------------------------------------------------- metadata


def image_laterality(ds: Dataset) -> str:
    """``"L"``, ``"R"``, ``"B"`` or ``""``: Image Laterality, else Laterality,
    else the Frame Anatomy macro's Frame Laterality (PS3.3 C.7.6.16.2.8)."""
    values = [ds.get("ImageLaterality"), ds.get("Laterality")]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "FrameAnatomySequence" in shared[0]:
        values.append(shared[0].FrameAnatomySequence[0].get("FrameLaterality"))
    for value in values:
        v = str(value or "").strip().upper()
        if v in ("L", "R", "B"):
            return v
    return ""


def mammo_view(ds: Dataset) -> tuple[str, CodedConcept | None]:
    """The view as a View Position term and a CID 4014 code (``("", None)`` unknown).

    View Position first, then the View Code Sequence.
    """
    term = str(ds.get("ViewPosition", "") or "").strip().upper()
    if term:
        return term, _VIEWS.get(term)
    seq = ds.get("ViewCodeSequence")
    if seq:
        item = seq[0]
        code = str(item.get("CodeValue", "") or "")
        if code in _VIEW_BY_CODE:
            return _VIEW_BY_CODE[code], _VIEWS[_VIEW_BY_CODE[code]]
        meaning = str(item.get("CodeMeaning", "") or "")
        if meaning:
            scheme = str(item.get("CodingSchemeDesignator", "") or "SCT")
            return meaning.upper(), coded(code or meaning, scheme, meaning) if code else None
    return "", None


def is_breast_image(ds: Dataset) -> tuple[bool, str]:
    """Whether ``ds`` is a breast image; ``(ok, reason)``.

    MG For Presentation or Modality MG: yes unless Body Part Examined names
    something else.  Other modalities: Body Part Examined BREAST, an Anatomic
    Region Sequence item (76752008, SCT, "Breast"), or "mammo"/"breast" in
    the study/series descriptions or protocol name.
    """
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    if part:
        if part in BREAST_BODY_PARTS:
            return True, ""
        return False, f"Body Part Examined is {part!r}, not a breast image"
    if modality == "MG" or sop == MG_FOR_PRESENTATION:
        return True, ""
    for item in ds.get("AnatomicRegionSequence", None) or []:
        if str(item.get("CodeValue", "")) in ("76752008", "T-04000"):
            return True, ""
    text = " ".join(
        str(ds.get(kw, "") or "")
        for kw in ("StudyDescription", "SeriesDescription", "ProtocolName")
    )
    if _BREAST_WORDS.search(text):
        return True, ""
    return False, (
        f"a {modality or 'non-MG'} image with no Body Part Examined and nothing that says "
        "breast or mammography"
    )


def model_input(image: np.ndarray, size: int = WORK_SIZE) -> tuple[np.ndarray, tuple[float, float]]:
    """The working image of a presentation image ``(rows, cols)`` in ``0..1``.

    Area-averaged so that the longer side is ``size``, then divided by its
    99.5th percentile (clipped to ``0..1``).

    Returns
    -------
    (x, (fy, fx))
        ``(h, w)`` float32 and the scale factors (working pixels per source
        pixel) along rows and columns.
    """
    img = np.asarray(image, dtype=np.float32)
    rows, cols = img.shape
    f = size / float(max(rows, cols))
    h, w = max(1, int(round(rows * f))), max(1, int(round(cols * f)))
    if (h, w) != (rows, cols):
        t = torch.from_numpy(np.ascontiguousarray(img))[None, None]
        img = F.interpolate(t, size=(h, w), mode="area")[0, 0].numpy()
    hi = float(np.percentile(img, 99.5))
    x = np.clip(img / max(hi, 1e-3), 0.0, 1.0).astype(np.float32)
    return x, (h / float(rows), w / float(cols))


def ood_features(
    network: nn.Module, x: np.ndarray, device: torch.device | str = "cpu"
) -> np.ndarray:
    """OOD features of one working image ``(h, w)``: ``(n,)`` float32.

    The channel means of the five backbone stages' activations
    (16 + 24 + 48 + 64 + 96 = 248 values for :data:`ARCHITECTURE`), the image
    going through the detector's own transform (normalisation, padding)
    first: pooled intermediate features as in Lee et al. (NeurIPS 2018),
    which separated real and foreign images from the phantoms better than
    the pyramid's or the last stage's alone (see ``ai_models/README.md``).

    Raises
    ------
    TypeError
        The network is not a RetinaNet with this module's backbone.
    """
    backbone = getattr(network, "backbone", None)
    if not isinstance(backbone, MammoBackbone):
        raise TypeError("OOD features need the built-in detector's backbone")
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
    pooled = []
    with torch.inference_mode():
        images, _ = network.transform([t])  # type: ignore[operator]
        z = images.tensors
        for stage in (backbone.stem, backbone.layer2, backbone.layer3, backbone.layer4):
            z = stage(z)
            pooled.append(z.float().mean(dim=(2, 3)))
        pooled.append(backbone.layer5(z).float().mean(dim=(2, 3)))
    return torch.cat(pooled, dim=1)[0].cpu().numpy()


def detect(
    network: nn.Module, x: np.ndarray, device: torch.device | str = "cpu"
) -> dict[str, np.ndarray]:
    """Run the detector on one working image ``(h, w)``; boxes and scores (numpy).

    ``network`` is an eager torchvision detector (a list of detections per
    image) or a TorchScript one (a ``(losses, detections)`` tuple).
    """
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(device)
    with torch.inference_mode():
        res = network([t])
    if isinstance(res, tuple):  # scripted torchvision detection models
        res = res[1]
    out = res[0]
    return {
        "boxes": out["boxes"].float().cpu().numpy().reshape(-1, 4),
        "scores": out["scores"].float().cpu().numpy().reshape(-1),
    }


# --------------------------------------------------------------------------- model


def _build(meta: dict[str, Any]) -> torch.nn.Module:
    """The untrained detector a weights sidecar describes."""
    arch = meta.get("architecture") or ARCHITECTURE
    if arch.get("name") != ARCHITECTURE["name"]:
        raise ModelLoadError(
            f"architecture {arch.get('name')!r} is not supported; use {ARCHITECTURE['name']!r}"
        )
    return build_detector(arch.get("kwargs") or {})


def _load(path: pathlib.Path, device: str | None) -> runtime.LoadedModel:
    """The state dict + sidecar, once per process (:func:`ai_models.runtime.load_built_model`)."""
    return runtime.load_built_model(path, _build, device=device, name=NAME)


def metadata_settings(
    metadata: dict[str, Any], kind: runtime.ModelKind | str, threshold: float | None = None
) -> tuple[int, float]:
    """Working-image size and score threshold from a model's metadata.

    For ``state_dict`` weights the size is the sidecar's
    ``architecture.kwargs.work_size`` (default :data:`WORK_SIZE`) and the
    threshold its ``threshold`` (default :data:`DEFAULT_THRESHOLD`).  A
    TorchScript file or bundle carries no architecture, so its metadata must
    give ``work_size`` (in ``architecture.kwargs`` or at the top level) and
    ``threshold`` (unless ``threshold`` is given here).

    Raises
    ------
    ModelLoadError
        A required key is missing or not a valid value.
    """
    required = runtime.ModelKind(kind) is not runtime.ModelKind.STATE_DICT
    arch = metadata.get("architecture")
    arch_kwargs = arch.get("kwargs") if isinstance(arch, dict) else None
    size: Any = arch_kwargs.get("work_size") if isinstance(arch_kwargs, dict) else None
    if size is None:
        size = metadata.get("work_size")
    if size is None:
        if required:
            raise ModelLoadError(
                f"{NAME}: the model metadata has no 'work_size' (longer side of the working "
                "image in pixels)"
            )
        size = WORK_SIZE
    try:
        size = int(size)
    except (TypeError, ValueError):
        size = 0
    if size < 32:
        raise ModelLoadError(f"{NAME}: bad 'work_size' in the model metadata: {size!r}")
    if threshold is not None:
        return size, float(threshold)
    thr: Any = metadata.get("threshold")
    if thr is None:
        if required:
            raise ModelLoadError(
                f"{NAME}: the model metadata has no 'threshold' (operating point on the score)"
            )
        thr = DEFAULT_THRESHOLD
    try:
        value = float(thr)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise ModelLoadError(f"{NAME}: bad 'threshold' in the model metadata: {thr!r}")
    return size, value


# --------------------------------------------------------------------------- pipeline


class MgMassesPipeline(Pipeline):
    """Mass detection on a mammogram (see the module docstring).

    Parameters
    ----------
    weights:
        Model file or bundle directory; default :data:`DEFAULT_WEIGHTS`.
        A site's detector plugs in here (see ``ai_models/README.md``).
    weights_kind:
        How ``weights`` is stored, a :class:`~ai_models.runtime.ModelKind`
        value: ``"state_dict"`` (a state dict of :data:`ARCHITECTURE` with its
        JSON sidecar), ``"torchscript"`` (a scripted torchvision detector,
        ``<stem>.json`` beside it) or ``"bundle"`` (a MONAI bundle directory,
        ``configs/metadata.json``).  TorchScript and bundle metadata must give
        ``work_size`` and ``threshold`` (see :func:`metadata_settings`).
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...
    threshold:
        Score threshold overriding the sidecar's operating point.
    max_masses:
        At most this many masses are reported (highest scores first).
    """

    name = NAME
    description = (
        "MG (or a breast image sent as RG/DX/CR/OT): mass detection, boxes with scores "
        "(demo model, synthetic training)"
    )
    modalities = MODALITIES
    version = VERSION
    gpu_memory_mb = 1536  # the detector on one mammogram

    def __init__(
        self,
        weights: str | pathlib.Path | None = None,
        weights_kind: str = "state_dict",
        device: str | None = None,
        threshold: float | None = None,
        max_masses: int = MAX_MASSES,
    ) -> None:
        kind = weights_kind_of(weights_kind)
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be in 0..1, got {threshold!r}")
        if int(max_masses) < 1:
            raise ValueError(f"max_masses must be >= 1, got {max_masses!r}")
        self.weights = pathlib.Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.weights_kind = kind
        self.device = device
        self.threshold = None if threshold is None else float(threshold)
        self.max_masses = int(max_masses)
        # The last volume's working image, shared by check() and run().
        self._prepared: tuple[weakref.ref[Volume], tuple[np.ndarray, tuple[float, float]]] | None
        self._prepared = None

    @classmethod
    def static_info(cls) -> PipelineInfo:
        """Listing info without instantiating (no model load)."""
        return PipelineInfo(cls.name, cls.description, cls.modalities, cls.version, "built-in")

    def read_series(self, files: Sequence[DicomFile]) -> Volume:
        """One image of the series as a one-slice volume (lowest Instance Number)."""
        return load_radiograph(files)

    def load(self) -> runtime.LoadedModel:
        """The warm model (loaded once per process).

        Raises
        ------
        ModelLoadError
            Unreadable weights, or metadata without a required key.
        """
        if self.weights_kind is runtime.ModelKind.STATE_DICT:
            return _load(self.weights, self.device)
        model = runtime.load_model(self.weights, self.weights_kind, device=self.device)
        metadata_settings(model.metadata, self.weights_kind, self.threshold)
        return model

    def operating_threshold(self) -> float:
        """The score threshold in use (argument, else the metadata's; for state
        dict weights without one 0.5)."""
        if self.threshold is not None:
            return self.threshold
        return metadata_settings(self.load().metadata, self.weights_kind)[1]

    def check(self, volume: Volume) -> None:
        """One grey breast image of at least 256 x 256 pixels, not For Processing.

        Header first (:func:`is_breast_image`, For Processing, matrix), then
        always the pixels (:func:`ai_models.radiograph.breast_region` on a
        downsampled copy): one bright region attached to one side edge, open
        background on the other side, a skin line curving back at the ends.
        A header saying BREAST or MG never replaces the image check.
        """
        super().check(volume)
        n, rows, cols = volume.shape
        if n != 1 or not volume.source_datasets:
            raise PipelineNotApplicable(f"{self.name}: expects one image, got {n}")
        ds = volume.source_datasets[0]
        if str(ds.get("SOPClassUID", "")) == MG_FOR_PROCESSING:
            raise PipelineNotApplicable(
                f"{self.name}: a 'For Processing' mammogram (raw detector data, not meant for "
                "display); send the 'For Presentation' image"
            )
        ok, reason = is_breast_image(ds)
        if not ok:
            raise PipelineNotApplicable(f"{self.name}: {reason}")
        if min(rows, cols) < MIN_MATRIX:
            raise PipelineNotApplicable(
                f"{self.name}: matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
            )
        # The pixels decide whatever the header says: one breast against the
        # chest wall, open background beyond it.
        x, _ = model_input(thumbnail(ds, volume.array[0]), WORK_SIZE)
        ok, reason, features = breast_region(x)
        logger.debug("%s: image check %s", self.name, features.as_dict())
        if not ok:
            raise PipelineNotApplicable(f"{self.name}: {reason}; not taken for a mammogram")
        # Then the model's own view: is the image like its training data?
        self.check_ood(self.preprocess(volume)[0])

    def ood_score(self, x: np.ndarray) -> tuple[float, float] | None:
        """OOD score and threshold of a working image ``(h, w)``.

        ``None`` when the weights have no OOD statistics beside them (a
        site's weights, or a TorchScript/bundle detector whose backbone is
        not this module's): the model then runs without the check, which is
        logged once per weights file.

        Raises
        ------
        ModelLoadError
            The statistics belong to other weights.
        """
        model = self.load()
        if model.kind is not runtime.ModelKind.STATE_DICT:
            ood.note_unchecked(self.name, model.path, f"a {model.kind.value} model")
            return None
        stats = ood.stats_for(model.path, model.sha256, self.name)
        if stats is None:
            return None
        feats = ood_features(model.network, x, model.device)
        return float(stats.score(feats)[0]), stats.threshold

    def check_ood(self, x: np.ndarray) -> None:
        """Refuse a working image the detector has not learnt to read.

        Raises
        ------
        PipelineNotApplicable
            Its OOD score (:meth:`ood_score`) is above the threshold; the
            message gives both.
        """
        ood.refuse_out_of_distribution(self.name, self.ood_score(x), "detections")

    def preprocess(
        self, volume: Volume, model: Any = None
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """The working image and its scale factors (see :func:`model_input`).

        Kept for the last volume, so that :meth:`check` and :meth:`run` make it once.
        """
        if self._prepared is not None and self._prepared[0]() is volume:
            return self._prepared[1]
        image = presentation_image(volume.source_datasets[0], volume.array[0])
        size, _ = metadata_settings(self.load().metadata, self.weights_kind, self.threshold)
        out = model_input(image, size)
        self._prepared = (weakref.ref(volume), out)
        return out

    def predict(
        self, model: runtime.LoadedModel, inputs: tuple[np.ndarray, tuple[float, float]]
    ) -> dict[str, np.ndarray]:
        """Boxes and scores of the detector on the working image (:func:`detect`)."""
        return detect(model.network, inputs[0], model.device)

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """Masses above the operating threshold: findings with boxes and scores."""
        volume, model = run.volume, run.model
        x, (fy, fx) = run.inputs
        threshold = self.operating_threshold()
        findings = self._findings(volume, run.outputs, fy, fx, threshold)
        ds = volume.source_datasets[0]
        lat = image_laterality(ds)
        view, _ = mammo_view(ds)
        notes = []
        if not lat:
            notes.append("laterality not recorded")
        if not view:
            notes.append("view not recorded")
        logger.info(
            "%s: %d mass(es) at threshold %.2f (%s)",
            self.name,
            len(findings),
            threshold,
            ", ".join(f"{f.score:.2f}" for f in findings) or "none",
        )
        procedure = {
            "L": CODES.MAMMOGRAM_LEFT,
            "R": CODES.MAMMOGRAM_RIGHT,
        }.get(lat, CODES.MAMMOGRAM)
        return self.result(
            volume,
            model.sha256,
            parameters=(
                f"work_size={max(x.shape)}",
                f"threshold={threshold:.3f}",
                f"max_masses={self.max_masses}",
            ),
            findings=list(findings),
            procedure_reported=procedure,
            notes=notes,
        )

    def _findings(
        self,
        volume: Volume,
        out: dict[str, np.ndarray],
        fy: float,
        fx: float,
        threshold: float,
    ) -> list[DetectionFinding]:
        _, rows, cols = volume.shape
        ds = volume.source_datasets[0]
        lat = image_laterality(ds)
        laterality = {"L": CODES.LEFT, "R": CODES.RIGHT}.get(lat)
        _, view_code = mammo_view(ds)
        evaluations = [QualitativeEvaluation(CODES.IMAGE_VIEW, view_code)] if view_code else []
        order = np.argsort(-out["scores"], kind="stable")
        findings: list[DetectionFinding] = []
        sop_uid = volume.frames[0].sop_instance_uid
        for idx in order:
            score = float(out["scores"][idx])
            if score < threshold or len(findings) >= self.max_masses:
                break
            x0, y0, x1, y1 = (float(v) for v in out["boxes"][idx])
            box = (
                float(np.clip(x0 / fx, 0.0, cols)),
                float(np.clip(y0 / fy, 0.0, rows)),
                float(np.clip(x1 / fx, 0.0, cols)),
                float(np.clip(y1 / fy, 0.0, rows)),
            )
            if not (box[2] - box[0] >= 1.0 and box[3] - box[1] >= 1.0):
                continue
            number = len(findings) + 1
            label = f"Mass {number}"
            uid = tracking_uid(volume.series_instance_uid, self.name, f"{sop_uid}/{label}")
            findings.append(
                DetectionFinding(
                    tracking_id=label,
                    tracking_uid=uid,
                    finding_type=CODES.MASS,
                    finding_site=CODES.BREAST,
                    qualitative_evaluations=list(evaluations),
                    frame_index=0,
                    box=box,
                    score=score,
                    label=label,
                    laterality=laterality,
                )
            )
        return findings

"""``cxr-findings``: findings on a frontal chest radiograph (CR / DX).

A demonstration pipeline trained only on synthetic phantoms
(:mod:`ai_models.training.cxr_phantoms`); not for clinical use.

How it works
------------
1. **Input** -- :meth:`CxrFindingsPipeline.read_series` reads the series'
   frontal image (:func:`ai_models.radiograph.load_radiograph`);
   :func:`ai_models.radiograph.presentation_image` applies the Modality LUT,
   the first VOI LUT / window and the polarity (MONOCHROME1 inverted), so the
   network always sees dense tissue bright, whatever the bit depth.
2. **Scope** (:meth:`CxrFindingsPipeline.check`) -- modality CR or DX; Body
   Part Examined, when present, a chest term; View Position, when present,
   frontal (PA/AP; lateral, decubitus and oblique views are refused: the
   model has only seen frontal views); at least 256 pixels on the short
   side; and always the image check
   (:func:`ai_models.radiograph.frontal_chest`): the imaged field of an adult
   chest when the pixel size is known, two lung fields symmetric about a
   bright mediastinum with the abdomen below, the body filling the film.
3. **Model input** (:func:`model_input`) -- area-averaged down to fit
   ``input_size`` (192) pixels, contrast stretched between its 1st and 99th
   percentiles, letterboxed to a square, standardised.
4. **Network** -- a ResNet-10 (torchvision ``ResNet`` with BasicBlock, one
   block per stage, 64-128-256-512 channels, the first convolution taking
   one grey channel; 4.9 M parameters, stored in float16) with one logit per
   finding; sigmoid probabilities; a per-finding threshold from the weights'
   sidecar.
5. **Explanation** -- Grad-CAM on the last residual stage, per explained
   finding, mapped back to the image grid (:class:`~ai_models.types.HeatMap`).
   By default the findings reported present are explained, or the most
   probable one when none is.

Every finding of the model is reported, present or absent
(:class:`~ai_models.types.ClassificationFinding`), with its tracking
identifier (the finding's name) and a tracking UID derived from the series.
"""

from __future__ import annotations

import logging
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ai_models import ood, runtime
from ai_models.codes import CODES, coded
from ai_models.errors import ModelLoadError, PipelineNotApplicable
from ai_models.networks.chest_classifier import (
    ARCHITECTURE,
    ARCHITECTURES,
    MONAI_RESNET,
    build_network,
)
from ai_models.pipelines import CXR_FINDINGS
from ai_models.pipelines.base import (
    Pipeline,
    PipelineInfo,
    PipelineRun,
    tracking_uid,
    weights_kind_of,
)
from ai_models.radiograph import (
    FRONTAL_VIEWS,
    RADIOGRAPH_MODALITIES,
    body_part,
    frontal_chest,
    load_radiograph,
    pixel_spacing,
    presentation_image,
    thumbnail,
    view_position,
)
from ai_models.types import (
    ClassificationFinding,
    CodedConcept,
    HeatMap,
    PipelineResult,
    Volume,
)

if TYPE_CHECKING:
    from ai_models.dicom_files import DicomFile

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURE",
    "ARCHITECTURES",
    "CHEST_BODY_PARTS",
    "CODES",
    "CxrFindingsPipeline",
    "DEFAULT_WEIGHTS",
    "FindingLabel",
    "INPUT_SIZE",
    "Letterbox",
    "MONAI_RESNET",
    "OOD_LAYER",
    "VERSION",
    "build_network",
    "explainable",
    "grad_cam",
    "labels_from_metadata",
    "model_input",
    "ood_features",
]

VERSION = "0.1.0"
"""Algorithm version reported in TID 4019 (the weights have their own sha256)."""

DEFAULT_WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights" / "cxr_findings.pt"
"""Shipped weights (float16 state dict; architecture and labels in the ``.json``)."""

INPUT_SIZE = 192
"""Side of the square network input (pixels) unless the sidecar says otherwise."""

MIN_MATRIX = 256
"""Smallest accepted rows/columns of a radiograph."""

OOD_LAYER = "layer3"
"""Residual stage whose pooled activations are the OOD features (:func:`ood_features`)."""

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "CHEST_LAT", "TORAX", "THORAX_LAT"})
"""Body Part Examined values taken as a chest (PS3.16 Annex L defined terms and
common vendor spellings)."""


@dataclass(frozen=True)
class FindingLabel:
    """One output of the classifier: its name, codes and operating threshold."""

    name: str
    """Tracking identifier and caption, e.g. ``"Pleural effusion"``."""
    finding_type: CodedConcept
    finding_site: CodedConcept | None
    threshold: float = 0.5


DEFAULT_LABELS: tuple[FindingLabel, ...] = (
    FindingLabel("Lung opacity", CODES.OPACITY, CODES.LUNG),
    FindingLabel("Pleural effusion", CODES.PLEURAL_EFFUSION, None),
    FindingLabel("Cardiomegaly", CODES.CARDIOMEGALY, CODES.HEART),
    FindingLabel("Pneumothorax", CODES.PNEUMOTHORAX, None),
)
"""Outputs of the shipped model, in order (thresholds come from the sidecar)."""


def _concept(value: Any, what: str) -> CodedConcept | None:
    if value is None:
        return None
    try:
        code, scheme, meaning = (str(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{what} must be [value, scheme, meaning], got {value!r}") from exc
    return coded(code, scheme, meaning)


def labels_from_metadata(meta: dict[str, Any]) -> tuple[FindingLabel, ...]:
    """The outputs described by a weights sidecar (``"labels"`` list).

    Each entry: ``{"name": ..., "code": [value, scheme, meaning],
    "site": [value, scheme, meaning] | null, "threshold": 0.5}``.  Without a
    ``"labels"`` entry: :data:`DEFAULT_LABELS`.

    Raises
    ------
    ModelLoadError
        For a malformed entry.
    """
    entries = meta.get("labels")
    if not entries:
        return DEFAULT_LABELS
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or "name" not in e or "code" not in e:
            raise ModelLoadError(f"labels[{i}] needs 'name' and 'code'")
        code = _concept(e["code"], f"labels[{i}].code")
        assert code is not None
        threshold = float(e.get("threshold", 0.5))
        if not 0.0 <= threshold <= 1.0:
            raise ModelLoadError(f"labels[{i}].threshold must be in 0..1")
        out.append(
            FindingLabel(
                str(e["name"]), code, _concept(e.get("site"), f"labels[{i}].site"), threshold
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- input


@dataclass(frozen=True)
class Letterbox:
    """Where the image sits in the square network input: rows ``r0:r0+h``,
    columns ``c0:c0+w`` of a ``size`` x ``size`` array."""

    size: int
    r0: int
    c0: int
    h: int
    w: int


def model_input(image: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, Letterbox]:
    """Network input from a presentation image (``0..1``, dense bright).

    Area-averaged so that the longer side is ``size``, stretched between its
    1st and 99th percentiles to ``0..1``, centred in a ``size`` x ``size``
    square padded with 0 (black) and standardised as ``(x - 0.5) / 0.25``.

    Returns
    -------
    (array, letterbox)
        ``(size, size)`` float32 and where the image lies in it.
    """
    rows, cols = image.shape
    scale = size / max(rows, cols)
    h, w = max(1, int(round(rows * scale))), max(1, int(round(cols * scale)))
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    small = F.adaptive_avg_pool2d(t, (h, w))[0, 0].numpy()
    lo, hi = np.percentile(small, [1.0, 99.0])
    small = np.clip((small - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    out = np.zeros((size, size), np.float32)
    r0, c0 = (size - h) // 2, (size - w) // 2
    out[r0 : r0 + h, c0 : c0 + w] = small
    return (out - 0.5) / 0.25, Letterbox(size, r0, c0, h, w)


def looks_like_chest(x: np.ndarray, box: Letterbox) -> tuple[bool, str]:
    """Image check for a frontal chest radiograph on the network input.

    ``x`` and ``box`` as :func:`model_input` returns them; the letterbox
    padding is removed and the standardisation undone, then
    :func:`ai_models.radiograph.frontal_chest` decides (its docstring lists
    the features and limits).

    Returns
    -------
    (ok, reason)
    """
    img = x[box.r0 : box.r0 + box.h, box.c0 : box.c0 + box.w] * 0.25 + 0.5
    if min(img.shape) < 16:
        return False, "the image is too small to check"
    ok, reason, _ = frontal_chest(img)
    return ok, reason


# --------------------------------------------------------------------------- model


def _build(meta: dict[str, Any]) -> torch.nn.Module:
    """The untrained network a weights sidecar describes (labels checked against it)."""
    arch = meta.get("architecture") or ARCHITECTURE
    name = arch.get("name") if isinstance(arch, dict) else arch
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ModelLoadError(
            f"architecture {name!r} is not supported; "
            f"use {ARCHITECTURE['name']!r} (or {MONAI_RESNET['name']!r})"
        )
    labels = labels_from_metadata(meta)
    kwargs = dict(ARCHITECTURES[name]["kwargs"])
    kwargs.update(arch.get("kwargs") or {})
    if int(kwargs.get("num_classes", 0)) != len(labels):
        raise ModelLoadError(f"{kwargs.get('num_classes')} outputs but {len(labels)} labels")
    return build_network(kwargs, name)


def _load(
    path: pathlib.Path, device: str | None
) -> tuple[runtime.LoadedModel, tuple[FindingLabel, ...]]:
    """The state dict + sidecar, once per process (:func:`ai_models.runtime.load_built_model`)."""
    model = runtime.load_built_model(path, _build, device=device, name=CXR_FINDINGS)
    return model, labels_from_metadata(model.metadata)


def explainable(network: torch.nn.Module, layer: str) -> bool:
    """Whether :func:`grad_cam` can hook ``layer`` (not in a TorchScript network)."""
    if isinstance(network, torch.jit.ScriptModule):
        return False
    return layer in dict(network.named_modules())


def grad_cam(
    network: torch.nn.Module, x: torch.Tensor, classes: Sequence[int], layer: str = "layer4"
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and Grad-CAM maps (Selvaraju et al., ICCV 2017).

    Parameters
    ----------
    network:
        The classifier (eval mode), with a sub-module called ``layer``.
    x:
        ``(1, 1, H, W)`` input on the network's device.
    classes:
        Output indices to explain.
    layer:
        Name of the feature layer (the last residual stage).

    Returns
    -------
    (probabilities, maps)
        ``(n_outputs,)`` sigmoid probabilities and ``(len(classes), H, W)``
        maps in ``0..1`` (each scaled by its own maximum; all-zero when the
        gradient-weighted activations are nowhere positive).
    """
    module = dict(network.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"the network has no layer {layer!r}")
    feats: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: feats.append(out))
    try:
        with torch.enable_grad():
            xi = x.detach().clone().requires_grad_(True)
            logits = network(xi)
            probs = torch.sigmoid(logits[0]).detach().float().cpu().numpy()
            maps: list[np.ndarray] = []
            for c in classes:
                (grad,) = torch.autograd.grad(logits[0, int(c)], feats[0], retain_graph=True)
                weights = grad.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * feats[0]).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
                cam_np = cam[0, 0].detach().float().cpu().numpy()
                peak = float(cam_np.max())
                maps.append(cam_np / peak if peak > 0 else np.zeros_like(cam_np))
    finally:
        handle.remove()
    shape = (len(maps),) + tuple(x.shape[2:])
    return probs, (np.stack(maps) if maps else np.zeros(shape, np.float32))


def ood_features(
    network: torch.nn.Module, x: torch.Tensor, layer: str = OOD_LAYER
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and OOD features of a batch of network inputs.

    The features are the channel means and standard deviations of ``layer``'s
    activations over the image (``2 x 256`` values for the shipped ResNet's
    ``layer3``): pooled intermediate features as in Lee et al. (NeurIPS
    2018), which separated real and foreign images from the phantoms better
    than the final pooled features or the energy score (see
    ``ai_models/README.md``).

    Parameters
    ----------
    network:
        The classifier (eval mode) with a sub-module called ``layer``.
    x:
        ``(B, 1, H, W)`` inputs on the network's device.

    Returns
    -------
    (logits, features)
        ``(B, n_outputs)`` and ``(B, 2 * channels)`` float32.
    """
    module = dict(network.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"the network has no layer {layer!r}")
    acts: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: acts.append(out))
    try:
        with torch.inference_mode():
            logits = network(x)
    finally:
        handle.remove()
    a = acts[0].float()
    feats = torch.cat([a.mean(dim=(2, 3)), a.std(dim=(2, 3))], dim=1)
    return logits.float().cpu().numpy(), feats.cpu().numpy()


def _to_image_grid(cam: np.ndarray, box: Letterbox, shape: tuple[int, int]) -> np.ndarray:
    """A map on the network input back onto the image's own grid."""
    crop = cam[box.r0 : box.r0 + box.h, box.c0 : box.c0 + box.w]
    t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))[None, None]
    up = F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.clip(up, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- pipeline

_EXPLAIN = ("positive", "all", "none")


class CxrFindingsPipeline(Pipeline):
    """Findings on a frontal chest radiograph (see the module docstring).

    Parameters
    ----------
    weights:
        State dict with its JSON sidecar; default :data:`DEFAULT_WEIGHTS`.
        A site model of the same architecture with its own labels, codes
        and thresholds plugs in here (see ``ai_models/README.md``).
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...
    explain:
        Which findings get a Grad-CAM map: ``"positive"`` (those reported
        present, else the most probable one; default), ``"all"`` or
        ``"none"``.
    weights_kind:
        How ``weights`` is loaded: ``state_dict`` (default; the sidecar names
        the architecture), ``torchscript`` or ``bundle``
        (:func:`ai_models.runtime.load_model`).  The sidecar, or the bundle's
        ``configs/metadata.json``, gives ``labels`` (and ``input_size``,
        ``cam_layer``).  A TorchScript network cannot be hooked, so its
        findings come without Grad-CAM maps (the result says so).
    """

    name = CXR_FINDINGS
    description = (
        "CR/DX frontal chest radiograph: lung opacity, pleural effusion, cardiomegaly, "
        "pneumothorax (demo model, synthetic training)"
    )
    modalities = RADIOGRAPH_MODALITIES
    version = VERSION
    gpu_memory_mb = 1024  # ResNet-10 on one radiograph, with Grad-CAM

    def __init__(
        self,
        weights: str | pathlib.Path | None = None,
        device: str | None = None,
        explain: str = "positive",
        weights_kind: str = "state_dict",
    ) -> None:
        if explain not in _EXPLAIN:
            raise ValueError(f"explain must be one of {_EXPLAIN}, got {explain!r}")
        self.weights = pathlib.Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.weights_kind = weights_kind_of(weights_kind)
        self.device = device
        self.explain = explain

    @classmethod
    def static_info(cls) -> PipelineInfo:
        """Listing info without instantiating (no model load)."""
        return PipelineInfo(cls.name, cls.description, cls.modalities, cls.version, "built-in")

    def read_series(self, files: Sequence[DicomFile]) -> Volume:
        """The series' radiograph as a one-slice volume (frontal view first)."""
        return load_radiograph(files)

    def load(self) -> tuple[runtime.LoadedModel, tuple[FindingLabel, ...]]:
        """The warm model and its output labels (loaded once per process)."""
        if self.weights_kind is not runtime.ModelKind.STATE_DICT:
            model = runtime.load_model(self.weights, self.weights_kind, device=self.device)
            if not model.metadata.get("labels"):
                raise ModelLoadError(
                    f"{model.path.name}: a {self.weights_kind} model needs 'labels' in its "
                    "metadata (the sidecar JSON, or configs/metadata.json of a bundle)"
                )
            return model, labels_from_metadata(model.metadata)
        return _load(self.weights, self.device)

    def input_size(self) -> int:
        """Side of the network input, from the sidecar (default :data:`INPUT_SIZE`)."""
        model, _ = self.load()
        return int(model.metadata.get("input_size", INPUT_SIZE))

    def check(self, volume: Volume) -> None:
        """CR/DX, one frontal chest image of at least 256 x 256 pixels.

        Header first (Body Part Examined another body part, a lateral View
        Position, a small matrix), then always the pixels
        (:func:`ai_models.radiograph.frontal_chest` on a downsampled copy, with
        the imaged field size when the pixel size is recorded): two lung
        fields symmetric about a bright mediastinum, abdomen below, the body
        filling the film.  Headers lie or are empty, so a header saying CHEST
        never replaces the image check.
        """
        super().check(volume)
        n, rows, cols = volume.shape
        if n != 1 or not volume.source_datasets:
            raise PipelineNotApplicable(f"{self.name}: expects one radiograph, got {n} image(s)")
        ds = volume.source_datasets[0]
        part = body_part(ds)
        if part and part not in CHEST_BODY_PARTS:
            raise PipelineNotApplicable(
                f"{self.name}: Body Part Examined is {part!r}, not a chest radiograph"
            )
        view = view_position(ds)
        if view and view not in FRONTAL_VIEWS:
            raise PipelineNotApplicable(
                f"{self.name}: View Position {view!r} is out of scope; the model reads frontal "
                "(PA/AP) chest views only"
            )
        spacing = pixel_spacing(ds)
        field = (rows * spacing[0], cols * spacing[1]) if spacing else None
        if min(rows, cols) < MIN_MATRIX:
            raise PipelineNotApplicable(
                f"{self.name}: matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
            )
        # The pixels decide whatever the header says: a header saying CHEST
        # does not make an ankle a chest.
        x, box = model_input(thumbnail(ds, volume.array[0]), INPUT_SIZE)
        img = x[box.r0 : box.r0 + box.h, box.c0 : box.c0 + box.w] * 0.25 + 0.5
        ok, reason, features = frontal_chest(img, field)
        logger.debug("%s: image check %s", self.name, features.as_dict())
        if not ok:
            raise PipelineNotApplicable(
                f"{self.name}: {reason}; not taken for a frontal chest radiograph"
            )
        # Then the model's own view: is the image like its training data?
        self.check_ood(self.preprocess(volume)[0])

    def ood_score(self, x: np.ndarray) -> tuple[float, float] | None:
        """OOD score and threshold of a network input ``(size, size)``.

        ``None`` when the weights have no OOD statistics beside them (a
        site's weights, or a TorchScript/bundle model whose layers cannot be
        hooked): the model then runs without the check, which is logged
        once per weights file.

        Raises
        ------
        ModelLoadError
            The statistics belong to other weights.
        """
        model, _ = self.load()
        if model.kind is not runtime.ModelKind.STATE_DICT:
            ood.note_unchecked(self.name, model.path, f"a {model.kind.value} model")
            return None
        stats = ood.stats_for(model.path, model.sha256, self.name)
        if stats is None:
            return None
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        layer = str(stats.info.get("layer", OOD_LAYER))
        _, feats = ood_features(model.network, xt.to(model.device), layer)
        return float(stats.score(feats)[0]), stats.threshold

    def check_ood(self, x: np.ndarray) -> None:
        """Refuse a network input the model has not learnt to read.

        Raises
        ------
        PipelineNotApplicable
            Its OOD score (:meth:`ood_score`) is above the threshold; the
            message gives both.
        """
        ood.refuse_out_of_distribution(self.name, self.ood_score(x), "findings")

    def preprocess(self, volume: Volume, model: Any = None) -> tuple[np.ndarray, Letterbox]:
        """The network input ``(size, size)`` for the volume's radiograph.

        ``model`` is what :meth:`load` returned (``None``: load it); the size
        is its metadata's ``input_size`` (default :data:`INPUT_SIZE`).
        """
        loaded = model[0] if model is not None else self.load()[0]
        size = int(loaded.metadata.get("input_size", INPUT_SIZE))
        image = presentation_image(volume.source_datasets[0], volume.array[0])
        return model_input(image, size)

    def predict(
        self,
        model: tuple[runtime.LoadedModel, tuple[FindingLabel, ...]],
        inputs: tuple[np.ndarray, Letterbox],
    ) -> tuple[np.ndarray, torch.Tensor]:
        """Probabilities per label, and the input tensor (for the explanation maps).

        Raises
        ------
        ModelLoadError
            The network gives another number of outputs than there are labels.
        """
        loaded, labels = model
        xt = torch.from_numpy(inputs[0])[None, None].to(loaded.device)
        with torch.inference_mode():
            probs = torch.sigmoid(loaded.network(xt)[0]).float().cpu().numpy()
        if probs.shape != (len(labels),):
            raise ModelLoadError(
                f"{loaded.path.name}: the network gives {probs.size} output(s) for "
                f"{len(labels)} label(s)"
            )
        return probs, xt

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """Findings with probabilities, and Grad-CAM maps (stage ``explain``)."""
        volume = run.volume
        model, labels = run.model
        _, box = run.inputs
        probs, xt = run.outputs
        timer = run.timer
        layer = str(model.metadata.get("cam_layer", "layer4"))
        present = [float(p) >= lab.threshold for p, lab in zip(probs, labels, strict=True)]
        if self.explain == "all":
            explain = list(range(len(labels)))
        elif self.explain == "positive":
            explain = [i for i, v in enumerate(present) if v] or [int(np.argmax(probs))]
        else:
            explain = []
        notes = []
        if explain and not explainable(model.network, layer):
            notes.append(f"no explanation maps: the network has no hookable layer {layer!r}")
            explain = []
        with timer("explain"):
            maps: np.ndarray | list[np.ndarray] = (
                grad_cam(model.network, xt, explain, layer)[1] if explain else []
            )
        series_uid = volume.series_instance_uid
        findings = []
        for p, lab in zip(probs, labels, strict=True):
            findings.append(
                ClassificationFinding(
                    tracking_id=lab.name,
                    tracking_uid=tracking_uid(series_uid, self.name, lab.name),
                    finding_type=lab.finding_type,
                    finding_site=lab.finding_site,
                    probability=float(np.clip(p, 0.0, 1.0)),
                    threshold=lab.threshold,
                    source_frames=(0,),
                )
            )
        heatmaps = [
            HeatMap(
                label=labels[c].name,
                tracking_id=findings[c].tracking_id,
                tracking_uid=findings[c].tracking_uid,
                frame_index=0,
                map=_to_image_grid(m, box, volume.shape[1:]),
                probability=findings[c].probability,
                present=findings[c].present,
                method=f"Grad-CAM ({layer})",
            )
            for c, m in zip(explain, maps, strict=True)
        ]
        if not view_position(volume.source_datasets[0]):
            notes.append("View Position not recorded; read as a frontal view")
        logger.info(
            "%s: %s",
            self.name,
            ", ".join(f"{lab.name} {p:.2f}" for p, lab in zip(probs, labels, strict=True)),
        )
        return self.result(
            volume,
            model.sha256,
            parameters=(
                f"input_size={box.size}",
                *(f"threshold {lab.name}={lab.threshold:.3f}" for lab in labels),
            ),
            findings=list(findings),
            procedure_reported=CODES.PLAIN_CHEST_XRAY,
            notes=notes,
            heatmaps=heatmaps,
        )

"""An nnU-Net v2 trained-model folder run unchanged: nnU-Net's own inference.

TotalSegmentator and most public nnU-Net models ship the folder that
``nnUNetv2_train`` leaves behind::

    Dataset291_TotalSegmentator_part1_organs_1559subj/
        nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/
            dataset.json   plans.json
            fold_0/checkpoint_final.pth

:class:`NnUNetPipeline` runs such a folder through nnU-Net's own
``nnUNetPredictor`` (``initialize_from_trained_model_folder``,
``predict_single_npy_array``): nnU-Net's cropping, resampling,
normalisation, sliding window with Gaussian weighting, test-time mirroring,
fold ensembling and resampling back, exactly as ``nnUNetv2_predict`` does.
The predictor stays warm between series (one per folder, folds, checkpoint,
device and inference settings; reloaded when a checkpoint changes).

Orientation
-----------
nnU-Net never reorients: it uses the array its image reader returns, with
the spacing in array order, and was trained on arrays read the same way.
The node hands it the array it would read from a NIfTI that SimpleITK wrote
from the DICOM series (the usual way such models are run on DICOM):

``source``
    What nnU-Net's default ``SimpleITKIO`` (and ``NibabelIO``) reads:
    ``(z, y, x)`` = (slices ascending along the slice normal
    ``row x column``, rows, columns), i.e. the volume's ``(k, i, j)``, with
    ``k`` reversed should the volume's slice axis point the other way.
``RAS``
    What ``NibabelIOWithReorient`` reads (TotalSegmentator's folders use
    it): nibabel's closest canonical (RAS+) layout of that NIfTI
    (``io_orientation`` of its affine), transposed to ``(z, y, x)``: axes
    towards patient superior, anterior and right.
``LPS``
    The LPS-canonical layout (axes towards superior, posterior and left).
``auto`` (default)
    ``RAS`` when the folder's image reader (``plans.json``
    ``image_reader_writer``, which nnU-Net's predictor uses, else
    ``dataset.json`` ``overwrite_image_reader_writer``) is
    ``NibabelIOWithReorient``, ``source`` for ``SimpleITKIO`` and
    ``NibabelIO``.

The spacing handed over is the volume's along the same axes, rounded to
float32 as a NIfTI header stores it.  The predicted label map is permuted
and flipped back onto the volume's own ``(k, i, j)`` grid.

Labels come from ``dataset.json`` (``"labels": {"liver": 1, ...}``) and are
coded by :func:`ai_models.label_codes.label_specs`; a site's ``labels``
override them.  Region-based models (label values that are lists) are
refused.

Example::

    spec = NnUNetSpec(
        name="total-organs",
        path=Path("/models/Dataset291_TotalSegmentator_part1_organs_1559subj"),
        configuration="3d_fullres",
        folds=(0,),
        use_mirroring=False,
    )
    result = spec.build().run(volume)

.. warning::
   nnU-Net checkpoints are pickles (``torch.load(weights_only=False)``):
   only run model folders from trusted sources.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_models.errors import ModelLoadError
from ai_models.pipelines._folder import FolderPipeline
from ai_models.pipelines._grid import Orientation, orientation_from_direction
from ai_models.pipelines.base import PipelineInfo, PipelineRun
from ai_models.pipelines.configured import LabelSpec
from ai_models.types import PipelineResult, Volume

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

__all__ = [
    "ORIENTATIONS",
    "READER_ORIENTATIONS",
    "LoadedPredictor",
    "NnUNetInputs",
    "NnUNetPipeline",
    "NnUNetSpec",
    "clear_predictor_cache",
    "load_predictor",
    "nnunet_orientation",
]

ORIENTATIONS = ("auto", "source", "RAS", "LPS")
"""Valid :attr:`NnUNetSpec.orientation` values (see the module docstring)."""

#: Image readers of nnU-Net -> the orientation ``"auto"`` resolves to.
READER_ORIENTATIONS = {
    "SimpleITKIO": "source",
    "NibabelIO": "source",
    "NibabelIOWithReorient": "RAS",
}

_MODEL_FOLDER = re.compile(r"^(?P<trainer>[^_].*?)__(?P<plans>.+?)__(?P<configuration>[^_].*)$")
"""``<trainer>__<plans>__<configuration>``: a folder ``nnUNetv2_train`` writes."""

#: ``dataset.json`` channel names that are DICOM Modality values (or name one).
_MODALITIES = {"CT": "CT", "MR": "MR", "MRI": "MR", "PET": "PT", "PT": "PT"}


def _trained_as(folder_name: str) -> str | None:
    """The configuration of a ``<trainer>__<plans>__<configuration>`` folder name."""
    match = _MODEL_FOLDER.match(folder_name)
    return match["configuration"] if match else None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{what} {path} cannot be read: {exc}") from exc


@dataclass
class NnUNetSpec:
    """An nnU-Net v2 trained-model folder to run with nnU-Net's own inference.

    Attributes
    ----------
    name:
        Pipeline name (routing rules refer to it).
    path:
        The trained-model folder (``dataset.json``, ``plans.json``,
        ``fold_N/``), or the dataset folder above it holding
        ``<trainer>__<plans>__<configuration>`` folders (the one for
        :attr:`configuration` is used).
    configuration:
        nnU-Net configuration, a key of ``plans.json`` ``configurations``
        (``3d_fullres``, ``3d_lowres``, ``2d``...).
    folds:
        Folds to ensemble (``fold_N`` folders), or ``("all",)``.
    checkpoint:
        Checkpoint file name inside each fold folder.
    tile_step_size:
        Sliding-window step as a fraction of the patch size (``0 < s <= 1``;
        0.5: half overlap, nnU-Net's default).
    use_mirroring:
        Test-time mirroring (up to 8 passes in 3D).
    orientation:
        Array layout nnU-Net gets (:data:`ORIENTATIONS`).
    labels:
        Codes of output labels (by value); they override those
        :func:`ai_models.label_codes.label_specs` finds for the names of
        ``dataset.json``, and may add labels it does not name.
    description:
        One line for listings (default: from ``dataset.json``).
    modalities:
        Accepted Modality values (default: from ``dataset.json``
        ``channel_names``: ``("CT",)`` for a CT model; otherwise any).
    version:
        Algorithm version for TID 4019 (default: ``"nnunetv2 <dataset>
        <configuration> folds <folds>"``).
    gpu_memory_mb:
        The most GPU memory one run needs (MiB).
    min_slices:
        Refuse volumes with fewer slices.
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...
    """

    name: str
    path: Path
    configuration: str = "3d_fullres"
    folds: tuple[int | str, ...] = (0,)
    checkpoint: str = "checkpoint_final.pth"
    tile_step_size: float = 0.5
    use_mirroring: bool = True
    orientation: str = "auto"
    labels: list[LabelSpec] = field(default_factory=list)
    description: str = ""
    modalities: tuple[str, ...] = ()
    version: str = ""
    gpu_memory_mb: int = 4096
    min_slices: int = 1
    device: str | None = None

    # ------------------------------------------------------------------ folder

    def model_folder(self) -> Path:
        """The trained-model folder: :attr:`path`, or its child for :attr:`configuration`.

        Raises
        ------
        ModelLoadError
            No such folder, or :attr:`path` is neither a trained-model folder
            nor holds exactly one for :attr:`configuration` (the message lists
            what it holds).
        """
        root = Path(self.path)
        if not root.is_dir():
            raise ModelLoadError(f"{self.name}: nnU-Net model folder {root} is not a directory")
        if (root / "plans.json").is_file() or (root / "dataset.json").is_file():
            return root
        found = sorted(p for p in root.iterdir() if p.is_dir() and _trained_as(p.name))
        chosen = [p for p in found if _trained_as(p.name) == self.configuration]
        if len(chosen) == 1:
            return chosen[0]
        if not found:
            raise ModelLoadError(
                f"{self.name}: {root} is not an nnU-Net trained-model folder (no dataset.json "
                "and plans.json) and holds no <trainer>__<plans>__<configuration> folders"
            )
        names = ", ".join(p.name for p in found)
        if not chosen:
            raise ModelLoadError(
                f"{self.name}: {root} holds no trained model for configuration "
                f"{self.configuration!r}; it holds {names}"
            )
        raise ModelLoadError(
            f"{self.name}: {root} holds several trained models for configuration "
            f"{self.configuration!r} ({', '.join(p.name for p in chosen)}); "
            "set path to the one to use"
        )

    def dataset_json(self) -> dict[str, Any]:
        """The folder's ``dataset.json``.

        Raises
        ------
        ModelLoadError
            Missing, unreadable or not a JSON object.
        """
        data = _read_json(self.model_folder() / "dataset.json", f"{self.name}: dataset.json")
        if not isinstance(data, dict):
            raise ModelLoadError(f"{self.name}: dataset.json is not a JSON object")
        return data

    def plans_json(self) -> dict[str, Any]:
        """The folder's ``plans.json``.

        Raises
        ------
        ModelLoadError
            Missing, unreadable or not a JSON object.
        """
        data = _read_json(self.model_folder() / "plans.json", f"{self.name}: plans.json")
        if not isinstance(data, dict):
            raise ModelLoadError(f"{self.name}: plans.json is not a JSON object")
        return data

    def fold_names(self) -> list[str]:
        """``fold_N`` folder names of :attr:`folds`."""
        return [f"fold_{f}" for f in self.folds]

    def checkpoint_paths(self) -> list[Path]:
        """The checkpoint file of each fold, in :attr:`folds` order."""
        folder = self.model_folder()
        return [folder / fold / self.checkpoint for fold in self.fold_names()]

    # -------------------------------------------------------------- validation

    def validate(self) -> None:
        """Check the spec and the folder without importing torch or nnU-Net.

        Raises
        ------
        ValueError
            A bad field: empty name, unknown orientation, no folds or a fold
            that is neither a non-negative integer nor ``"all"``,
            ``tile_step_size`` outside ``(0, 1]``, repeated label values.
        ModelLoadError
            The folder is incomplete or unsupported: no ``dataset.json`` or
            ``plans.json``, a configuration the plans lack (the message lists
            theirs), a cascade stage, a missing fold folder or checkpoint, a
            region-based or multi-channel model, an image reader
            ``orientation = "auto"`` cannot interpret.
        """
        if not self.name or not self.name.strip():
            raise ValueError("pipeline name must not be empty")
        if self.orientation not in ORIENTATIONS:
            raise ValueError(
                f"{self.name}: orientation {self.orientation!r} is not one of "
                f"{', '.join(ORIENTATIONS)}"
            )
        if not self.folds:
            raise ValueError(f"{self.name}: at least one fold is needed (e.g. folds = [0])")
        for f in self.folds:
            ok = f == "all" or (isinstance(f, int) and not isinstance(f, bool) and f >= 0)
            if not ok:
                raise ValueError(
                    f"{self.name}: fold {f!r} is neither a fold number (0, 1, ...) nor 'all'"
                )
        if len(set(self.folds)) != len(self.folds):
            raise ValueError(f"{self.name}: folds repeat: {list(self.folds)}")
        if not 0.0 < float(self.tile_step_size) <= 1.0:
            raise ValueError(
                f"{self.name}: tile_step_size must be in (0, 1], got {self.tile_step_size}"
            )
        if self.gpu_memory_mb < 0:
            raise ValueError(f"{self.name}: gpu_memory_mb must be >= 0")
        if self.min_slices < 1:
            raise ValueError(f"{self.name}: min_slices must be >= 1")
        values = [ls.value for ls in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"{self.name}: label values repeat: {values}")
        if any(v < 1 for v in values):
            raise ValueError(f"{self.name}: label values must be >= 1 (0 is background)")

        folder = self.model_folder()
        where = f"{self.name}: nnU-Net model {folder}"
        for required in ("dataset.json", "plans.json"):
            if not (folder / required).is_file():
                raise ModelLoadError(f"{where} has no {required}")
        dataset, plans = self.dataset_json(), self.plans_json()
        configs = plans.get("configurations")
        if not isinstance(configs, dict) or not configs:
            raise ModelLoadError(f"{where}: plans.json has no configurations")
        if self.configuration not in configs:
            raise ModelLoadError(
                f"{where}: configuration {self.configuration!r} is not in plans.json; "
                f"it has {', '.join(sorted(configs))}"
            )
        trained = _trained_as(folder.name)
        if trained is not None and trained != self.configuration:
            raise ModelLoadError(
                f"{where} was trained as configuration {trained!r}, not {self.configuration!r}"
            )
        if configs[self.configuration].get("previous_stage"):
            raise ModelLoadError(
                f"{where}: configuration {self.configuration!r} is a cascade stage (it needs "
                f"the prediction of {configs[self.configuration]['previous_stage']!r}); "
                "cascades are not supported"
            )
        for fold, ckpt in zip(self.fold_names(), self.checkpoint_paths(), strict=True):
            if not ckpt.parent.is_dir():
                have = sorted(p.name for p in folder.glob("fold_*") if p.is_dir())
                raise ModelLoadError(
                    f"{where} has no {fold} folder; it has {', '.join(have) or 'no fold folders'}"
                )
            if not ckpt.is_file():
                have = sorted(p.name for p in ckpt.parent.glob("*.pth"))
                raise ModelLoadError(
                    f"{where}: {fold} has no {self.checkpoint}; it has "
                    f"{', '.join(have) or 'no checkpoints'}"
                )
        channels = dataset.get("channel_names", dataset.get("modality"))
        if not isinstance(channels, dict) or len(channels) != 1:
            n = len(channels) if isinstance(channels, dict) else "no"
            raise ModelLoadError(
                f"{where}: dataset.json names {n} input channels; the node gives one image "
                "(one series) per run, so only single-channel models are supported"
            )
        self._label_values(dataset)
        if self.orientation == "auto":
            self.resolved_orientation()

    def _label_values(self, dataset: dict[str, Any]) -> dict[int, str]:
        labels = dataset.get("labels")
        if not isinstance(labels, dict) or not labels:
            raise ModelLoadError(f"{self.name}: dataset.json has no labels")
        regions = [k for k, v in labels.items() if isinstance(v, (list, tuple))]
        if regions or "regions_class_order" in dataset:
            raise ModelLoadError(
                f"{self.name}: a region-based nnU-Net model (overlapping regions "
                f"{', '.join(repr(r) for r in regions) or 'with regions_class_order'}) is not "
                "supported: its output is not one label per voxel"
            )
        names: dict[int, str] = {}
        for name, value in labels.items():
            try:
                v = int(value)
            except (TypeError, ValueError) as exc:
                raise ModelLoadError(
                    f"{self.name}: dataset.json label {name!r} has value {value!r}, not an integer"
                ) from exc
            if v == 0 or str(name).lower() == "background" or str(name).lower() == "ignore":
                continue
            names[v] = str(name)
        return dict(sorted(names.items()))

    def label_names(self) -> dict[int, str]:
        """Label value -> name from ``dataset.json`` (background and ``ignore`` left out).

        Raises
        ------
        ModelLoadError
            No labels, region-based labels or a non-integer value.
        """
        return self._label_values(self.dataset_json())

    def image_reader(self) -> str:
        """The folder's image reader: ``plans.json`` ``image_reader_writer``
        (what nnU-Net's predictor reads with), else ``dataset.json``
        ``overwrite_image_reader_writer``, else ``SimpleITKIO``."""
        reader = self.plans_json().get("image_reader_writer")
        if not reader or reader == "None":
            reader = self.dataset_json().get("overwrite_image_reader_writer")
        return str(reader) if reader and reader != "None" else "SimpleITKIO"

    def resolved_orientation(self) -> str:
        """:attr:`orientation`, with ``"auto"`` resolved from the folder's image reader.

        Raises
        ------
        ModelLoadError
            ``"auto"`` with a reader other than those of
            :data:`READER_ORIENTATIONS`.
        """
        if self.orientation != "auto":
            return self.orientation
        reader = self.image_reader()
        try:
            return READER_ORIENTATIONS[reader]
        except KeyError:
            raise ModelLoadError(
                f"{self.name}: the model reads its images with {reader}; set orientation "
                f"to one of {', '.join(o for o in ORIENTATIONS if o != 'auto')}"
            ) from None

    def default_modalities(self) -> tuple[str, ...]:
        """``dataset.json``'s single channel as a DICOM Modality (``()``: any)."""
        try:
            channels = self.dataset_json().get("channel_names", {})
        except ModelLoadError:
            return ()
        if not isinstance(channels, dict) or len(channels) != 1:
            return ()
        found = _MODALITIES.get(str(next(iter(channels.values()))).strip().upper())
        return (found,) if found else ()

    def dataset_name(self) -> str:
        """The dataset's name (``dataset.json`` ``name``, or the dataset folder's)."""
        try:
            name = self.dataset_json().get("name")
            folder = self.model_folder()
        except ModelLoadError:
            return Path(self.path).name
        if isinstance(name, str) and name.strip():
            return name.strip()
        return folder.parent.name if _trained_as(folder.name) else folder.name

    def default_version(self) -> str:
        """``"nnunetv2 <dataset> <configuration> folds <folds>"``."""
        folds = ",".join(str(f) for f in self.folds)
        return f"nnunetv2 {self.dataset_name()} {self.configuration} folds {folds}"

    def info(self) -> PipelineInfo:
        """Listing info from the spec and the folder's JSON (no torch or nnU-Net import)."""
        description = self.description
        if not description:
            try:
                what = str(self.dataset_json().get("description") or "").strip()
            except ModelLoadError:
                what = ""
            description = f"nnU-Net {self.dataset_name()} ({self.configuration})" + (
                f": {what}" if what else ""
            )
        try:
            names = tuple(self.label_names().values())
        except ModelLoadError:
            names = ()
        return PipelineInfo(
            self.name,
            description,
            tuple(self.modalities) or self.default_modalities(),
            self.version or self.default_version(),
            "configured",
            labels=names,
        )

    def build(self) -> NnUNetPipeline:
        """Validate and make the pipeline (the predictor loads on its first run)."""
        return NnUNetPipeline(self)


# --------------------------------------------------------------------------- #
# Orientation


def _sitk_slice_flip(volume: Volume) -> bool:
    """Whether the volume's ``k`` runs against SimpleITK's slice order (``row x column``)."""
    d = np.asarray(volume.direction, dtype=float)
    normal = np.cross(d[:, 2], d[:, 1])
    return bool(float(normal @ d[:, 0]) < 0)


def nnunet_orientation(volume: Volume, orientation: str) -> Orientation:
    """How the volume's ``(k, i, j)`` array maps onto the array nnU-Net gets.

    Parameters
    ----------
    volume:
        The volume (its direction decides).
    orientation:
        ``"source"``, ``"RAS"`` or ``"LPS"`` (see the module docstring).

    Returns
    -------
    Orientation
        ``to_canonical`` gives nnU-Net's ``(z, y, x)`` array,
        ``from_canonical`` maps its prediction back, ``spacing`` the
        spacing in that order.
    """
    flip_k = _sitk_slice_flip(volume)
    if orientation == "source":
        return Orientation(perm=(0, 1, 2), flip=(flip_k, False, False))
    if orientation == "LPS":
        return orientation_from_direction(volume.direction)
    if orientation != "RAS":
        raise ValueError(f"orientation must be source, RAS or LPS, got {orientation!r}")
    from nibabel.orientations import io_orientation

    # The NIfTI SimpleITK writes: voxel axes (x, y, z) = (j, i, k in SimpleITK's
    # slice order); its affine maps them to RAS.
    d = np.asarray(volume.direction, dtype=float)
    k_dir = -d[:, 0] if flip_k else d[:, 0]
    lps = np.column_stack([d[:, 2], d[:, 1], k_dir]) * np.asarray(volume.spacing)[[2, 1, 0]]
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ lps
    ornt = io_orientation(affine)
    nifti_to_kij = (2, 1, 0)  # NIfTI voxel axis -> volume axis
    perm: list[int] = [0, 0, 0]
    flip: list[bool] = [False, False, False]
    for a in range(3):
        # nibabel moves NIfTI axis a to RAS axis ornt[a, 0] (reversed when -1);
        # NibabelIOWithReorient then transposes (x, y, z) -> (z, y, x).
        out = 2 - int(ornt[a, 0])
        src = nifti_to_kij[a]
        perm[out] = src
        flip[out] = bool(ornt[a, 1] < 0) != (flip_k and src == 0)
    return Orientation(perm=tuple(perm), flip=tuple(flip))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# Warm predictors


@dataclass
class LoadedPredictor:
    """An initialised ``nnUNetPredictor`` with what identifies it."""

    predictor: Any
    device: torch.device
    folder: Path
    sha256: str
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while it predicts (it swaps fold weights into one network)."""


_PREDICTORS: dict[tuple[Any, ...], LoadedPredictor] = {}
_PREDICTORS_LOCK = threading.Lock()


def clear_predictor_cache() -> None:
    """Forget every warm predictor (tests; freeing device memory)."""
    with _PREDICTORS_LOCK:
        _PREDICTORS.clear()


def _model_sha256(folder: Path, paths: list[Path]) -> str:
    """sha256 over the files' paths relative to ``folder`` and their bytes' sha256, in order.

    Identifies the weights and what shapes their use (plans, labels); a copy
    of the folder elsewhere has the same value.
    """
    from ai_models.runtime import file_sha256

    h = hashlib.sha256()
    for p in paths:
        h.update(f"{p.relative_to(folder).as_posix()}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()


def load_predictor(spec: NnUNetSpec) -> LoadedPredictor:
    """The warm predictor of ``spec`` (loaded on first use, again when a file changes).

    Raises
    ------
    ModelLoadError
        nnU-Net is not installed, the device is unavailable, or nnU-Net
        cannot load the folder (the message gives its reason).
    """
    from ai_models.runtime import select_device

    device = select_device(spec.device)
    folder = spec.model_folder().resolve()
    files = [folder / fold / spec.checkpoint for fold in spec.fold_names()]
    files += [folder / "plans.json", folder / "dataset.json"]
    try:
        stamp = tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    except OSError as exc:
        raise ModelLoadError(f"{spec.name}: {exc}") from exc
    key = (
        str(folder),
        spec.configuration,
        tuple(str(f) for f in spec.folds),
        spec.checkpoint,
        str(device),
        float(spec.tile_step_size),
        bool(spec.use_mirroring),
        stamp,
    )
    with _PREDICTORS_LOCK:
        cached = _PREDICTORS.get(key)
        if cached is not None:
            return cached
        stale = [k for k in _PREDICTORS if k[:7] == key[:7]]
        for k in stale:
            del _PREDICTORS[k]
        loaded = _load_predictor(spec, folder, device, files)
        _PREDICTORS[key] = loaded
        return loaded


def _load_predictor(
    spec: NnUNetSpec, folder: Path, device: torch.device, files: list[Path]
) -> LoadedPredictor:
    try:
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    except ImportError as exc:
        raise ModelLoadError(
            f"{spec.name}: nnU-Net v2 is not installed (pip install nnunetv2): {exc}"
        ) from exc
    t0 = time.perf_counter()
    predictor = nnUNetPredictor(
        tile_step_size=float(spec.tile_step_size),
        use_gaussian=True,
        use_mirroring=bool(spec.use_mirroring),
        perform_everything_on_device=device.type == "cuda",
        device=device,
        verbose=False,
        verbose_preprocessing=False,
        allow_tqdm=False,
    )
    folds = tuple(f if f == "all" else int(f) for f in spec.folds)
    try:
        predictor.initialize_from_trained_model_folder(str(folder), folds, spec.checkpoint)
    except Exception as exc:  # nnU-Net raises whatever its loaders raise
        raise ModelLoadError(
            f"{spec.name}: nnU-Net could not load {folder}: {type(exc).__name__}: {exc}"
        ) from exc
    # nnU-Net takes the configuration from the first checkpoint
    wanted = predictor.plans_manager.get_configuration(spec.configuration).configuration
    if predictor.configuration_manager.configuration != wanted:
        raise ModelLoadError(
            f"{spec.name}: the checkpoints in {folder} were not trained as configuration "
            f"{spec.configuration!r}"
        )
    sha = _model_sha256(folder, files)
    seconds = time.perf_counter() - t0
    logger.info(
        "%s: loaded nnU-Net %s (%s, folds %s) on %s in %.1f s",
        spec.name, folder.name, spec.configuration, folds, device, seconds,
    )  # fmt: skip
    return LoadedPredictor(predictor, device, folder, sha, seconds)


# --------------------------------------------------------------------------- #
# The pipeline


@dataclass
class NnUNetInputs:
    """What :meth:`NnUNetPipeline.preprocess` hands to :meth:`NnUNetPipeline.predict`."""

    image: np.ndarray
    """``(1, z, y, x)`` float32 in nnU-Net's orientation."""
    spacing: list[float]
    """Spacing along ``(z, y, x)`` (mm)."""
    orientation: Orientation
    """Maps the volume's ``(k, i, j)`` to ``(z, y, x)`` and back."""
    layout: str
    """``source``, ``RAS`` or ``LPS``."""


class NnUNetPipeline(FolderPipeline):
    """A :class:`Pipeline` running an nnU-Net v2 folder (see :class:`NnUNetSpec`)."""

    spec: NnUNetSpec

    def __init__(self, spec: NnUNetSpec) -> None:
        super().__init__(spec)
        self.orientation = spec.resolved_orientation()
        self._labels: list[LabelSpec] | None = None

    @property
    def labels(self) -> list[LabelSpec]:
        """Output labels with their codes (``dataset.json`` names, site overrides).

        Raises
        ------
        ModelLoadError
            A label name has no known code and is not configured.
        """
        if self._labels is None:
            from ai_models.label_codes import label_specs

            self._labels = label_specs(self.spec.label_names(), self.spec.labels, model=self.name)
        return self._labels

    def load(self) -> LoadedPredictor:
        """The warm predictor (and the label codes, so a bad label fails before inference)."""
        _ = self.labels
        return load_predictor(self.spec)

    def preprocess(self, volume: Volume, model: Any = None) -> NnUNetInputs:
        """The volume in nnU-Net's orientation, with its spacing (nnU-Net preprocesses itself)."""
        orient = nnunet_orientation(volume, self.orientation)
        image = np.ascontiguousarray(orient.to_canonical(volume.array), dtype=np.float32)[None]
        # as a NIfTI header (pixdim, float32) hands it to nnU-Net's readers
        spacing = [float(np.float32(s)) for s in orient.spacing(volume.spacing)]
        return NnUNetInputs(image, spacing, orient, self.orientation)

    def predict(self, model: LoadedPredictor, inputs: NnUNetInputs) -> np.ndarray:
        """nnU-Net's ``predict_single_npy_array``: the ``(z, y, x)`` label map."""
        with model.lock:
            seg = model.predictor.predict_single_npy_array(
                inputs.image, {"spacing": inputs.spacing}, None, None, False
            )
        seg = np.asarray(seg)
        if seg.shape != inputs.image.shape[1:]:
            raise ModelLoadError(
                f"{self.name}: nnU-Net returned a {seg.shape} label map for a "
                f"{inputs.image.shape[1:]} input"
            )
        return seg

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """The label map back on the volume's grid: one segment and volume finding per label."""
        from ai_models.pipelines.configured import label_map_result

        inputs: NnUNetInputs = run.inputs
        label_map = np.ascontiguousarray(inputs.orientation.from_canonical(run.outputs))
        s = self.spec
        folds = ",".join(str(f) for f in s.folds)
        parameters = (
            "kind=nnunetv2",
            f"configuration={s.configuration}",
            f"folds={folds}",
            f"checkpoint={s.checkpoint}",
            f"tile_step_size={s.tile_step_size:g}",
            f"use_mirroring={str(bool(s.use_mirroring)).lower()}",
            f"orientation={inputs.layout}",
        )
        return label_map_result(
            self, run.volume, label_map, self.labels, run.model.sha256, parameters
        )

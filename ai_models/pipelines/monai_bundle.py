"""A MONAI Model Zoo bundle run unchanged: its own pre- and post-processing.

``kind = "bundle"`` (:mod:`ai_models.pipelines.configured`) takes a bundle's
network and weights and wraps them in the node's generic preprocessing.  A
:class:`MonaiBundlePipeline` instead executes the bundle's own inference
config (``configs/inference.json``) through MONAI's
:class:`~monai.bundle.ConfigParser`, the way ``python -m monai.bundle run``
would, with two changes:

* the ``LoadImaged`` entry of ``preprocessing`` reads the node's
  :class:`~ai_models.types.Volume` instead of a file.  It is handed what
  MONAI's NIfTI reader returns for a NIfTI that SimpleITK wrote from the same
  DICOM series: the array in NIfTI voxel order ``(columns, rows, slices)``,
  float32, and its RAS affine (the LPS affine with the x and y rows negated,
  the direction made orthonormal as ITK's DICOM reader does, rounded to
  float32 as a NIfTI header stores it), so the bundle sees the numbers it
  would see in its own workflow (see :func:`volume_to_nifti_order`).
  ``LoadImaged``'s own options (``ensure_channel_first``, ``image_only``,
  ``dtype``...) still apply;
* ``SaveImage(d)`` entries of ``postprocessing`` are replaced by a
  pass-through: the node writes DICOM SEG itself.

Then it does what the bundle's ``SupervisedEvaluator`` does: the network in
eval mode with the weights the config's ``checkpointloader`` names (default
``models/model.pt``; ``models/model.ts`` when there is no state dict),
``torch.no_grad()``, float16 autocast only where the evaluator's ``amp`` is
true and the device is CUDA, the bundle's ``inferer(inputs, network)``,
decollation and the bundle's ``postprocessing`` per item (whose ``Invertd``
brings the prediction back to the input grid).  The label map it ends with
(one channel of label values, or one channel per class, argmax taken) is
mapped back onto the volume's own ``(k, i, j)`` grid.

Labels come from ``configs/metadata.json``
(``network_data_format.outputs.pred.channel_def``) and are coded by
:func:`ai_models.label_codes.label_specs`; a site's ``labels`` override them.

The parsed bundle and its network stay warm between series (one per bundle
folder, config, overrides and device; reloaded when a file changes).

Notes
-----
* Only the config's top-level ``device`` is set to the node's device; a
  device the bundle names elsewhere (e.g. ``inferer#device`` for stitching
  sliding windows) stays as the bundle says unless overridden.
* On an oblique stack the bundle's result can depend on the last digits of
  its input affine: MONAI's ``Spacingd`` decides its output grid origin with
  an ``allclose(..., atol=1e-8)`` test on the input corners, so a NIfTI
  written by another program (ITK's NIfTI writer re-orthogonalises the
  direction in float32) may give the bundle a grid shifted by half a voxel.
  Axis-aligned stacks are not affected.

Example::

    spec = MonaiBundleSpec(
        name="spleen",
        path=Path("/models/spleen_ct_segmentation"),
        overrides={"inferer#sw_batch_size": 2},
    )
    result = spec.build().run(volume)

.. warning::
   MONAI's ``ConfigParser`` evaluates ``$`` expressions with Python's
   ``eval`` and ``_target_`` instantiates any class: only run bundles from
   trusted sources.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ai_models.errors import ModelLoadError
from ai_models.pipelines._folder import FolderPipeline
from ai_models.pipelines.base import PipelineInfo, PipelineRun
from ai_models.types import PipelineResult, Volume

if TYPE_CHECKING:
    import torch

    from ai_models.pipelines.configured import LabelSpec

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "LoadedBundle",
    "MonaiBundlePipeline",
    "MonaiBundleSpec",
    "clear_bundle_cache",
    "volume_to_nifti_order",
]

DEFAULT_CONFIG_FILE = "configs/inference.json"
"""The bundle config a :class:`MonaiBundleSpec` runs unless told otherwise."""

METADATA_FILE = "configs/metadata.json"

_REQUIRED_IDS = ("preprocessing", "inferer", "postprocessing")
_LOADERS = frozenset({"LoadImaged", "LoadImageD", "LoadImageDict", "LoadImage"})
_SAVERS = frozenset({"SaveImaged", "SaveImageD", "SaveImageDict", "SaveImage"})
_DICT_LOADERS = _LOADERS - {"LoadImage"}

#: Modality names of bundle metadata that are DICOM Modality values (or name one).
_MODALITIES = {
    "CT": "CT",
    "MR": "MR",
    "MRI": "MR",
    "PT": "PT",
    "PET": "PT",
    "NM": "NM",
    "US": "US",
    "CR": "CR",
    "DX": "DX",
    "MG": "MG",
    "XA": "XA",
}

_REF = re.compile(r"@(\w*(?:(?:::|#)\w*)*)")


def _norm_id(id_: str) -> str:
    return id_.replace("#", "::")


def _child(node: Any, key: str) -> Any:
    if isinstance(node, dict):
        return node[key]
    if isinstance(node, list):
        return node[int(key)]
    raise KeyError(key)


def _raw_get(config: Any, id_: str) -> Any:
    """The raw config node at ``id_`` (``::`` or ``#`` separated)."""
    node = config
    for key in _norm_id(id_).split("::") if id_ else ():
        try:
            node = _child(node, key)
        except (KeyError, IndexError, ValueError):
            raise KeyError(id_) from None
    return node


def _raw_set(config: dict[str, Any], id_: str, value: Any) -> None:
    """Set ``id_`` in a raw config (missing dict levels are created)."""
    *parents, last = _norm_id(id_).split("::")
    node: Any = config
    for key in parents:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            node = _child(node, key)
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def _target_name(node: Any) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("_target_"), str):
        return str(node["_target_"]).rsplit(".", 1)[-1]
    return None


@dataclass
class _Found:
    """Transform configs found by :func:`_find_transforms`."""

    ids: list[tuple[str, str]] = field(default_factory=list)
    """``(id, class name)`` of each match."""
    macros: bool = False
    """A ``%`` macro (a config in another file) was met and not followed."""


def _find_transforms(get: Callable[[str], Any], start: str, names: frozenset[str]) -> _Found:
    """The transform configs named ``names`` reachable from config id ``start``.

    Follows ``@id`` references (whole strings and inside ``$`` expressions);
    relative references and ``%`` macros are not followed (``ConfigParser``
    resolves them first when it has the config).
    """
    found = _Found()
    seen: set[str] = set()

    def visit(id_: str) -> None:
        id_ = _norm_id(id_)
        if id_ in seen:
            return
        seen.add(id_)
        try:
            node = get(id_)
        except (KeyError, IndexError, ValueError, TypeError):  # a dangling reference
            return
        walk(node, id_)

    def walk(node: Any, id_: str) -> None:
        name = _target_name(node)
        if name in names:
            found.ids.append((id_, str(name)))
            return
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{id_}::{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{id_}::{i}")
        elif isinstance(node, str):
            if node.startswith("%"):
                found.macros = True
            elif node.startswith(("@", "$")):
                for ref in _REF.findall(node):
                    if ref and not ref.startswith(("::", "#")):
                        visit(ref)

    visit(start)
    return found


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {what} {path.name}: {exc}") from exc


def _read_config(path: Path) -> dict[str, Any]:
    """A bundle config file (JSON, or YAML when PyYAML is installed) as a dict."""
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise ModelLoadError(f"{path.name}: reading a YAML bundle config needs PyYAML") from exc
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ModelLoadError(f"cannot read bundle config {path.name}: {exc}") from exc
    else:
        data = _read_json(path, "bundle config")
    if not isinstance(data, dict):
        raise ModelLoadError(f"bundle config {path.name} is not a mapping of ids")
    return data


@dataclass
class MonaiBundleSpec:
    """A MONAI bundle folder to run with its own inference config.

    Attributes
    ----------
    name:
        Pipeline name (routing rules refer to it).
    path:
        The bundle folder (``configs/``, ``models/``).
    config_file:
        The config to run, relative to :attr:`path`.
    overrides:
        Bundle config ids to override, e.g. ``{"inferer#sw_batch_size": 2}``
        (``#`` or ``::`` separate nested ids; values as in the config,
        ``$`` expressions included).
    labels:
        Codes of output labels (by value); they override those
        :func:`ai_models.label_codes.label_specs` finds for the names of
        ``metadata.json``, and may add labels it does not name.
    description:
        One line for listings (default: the metadata's name and description).
    modalities:
        Accepted Modality values (default: the metadata's input modality
        when it is a DICOM one, e.g. ``CT``; otherwise any).
    version:
        Algorithm version for TID 4019 (default: the metadata's version).
    gpu_memory_mb:
        The most GPU memory one run needs (MiB).
    min_slices:
        Refuse volumes with fewer slices.
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...; the config's
        ``device`` is set to it.
    """

    name: str
    path: Path
    config_file: str = DEFAULT_CONFIG_FILE
    overrides: dict[str, Any] = field(default_factory=dict)
    labels: list[LabelSpec] = field(default_factory=list)
    description: str = ""
    modalities: tuple[str, ...] = ()
    version: str = ""
    gpu_memory_mb: int = 4096
    min_slices: int = 1
    device: str | None = None

    @property
    def config_path(self) -> Path:
        """The config file that runs."""
        return Path(self.path) / self.config_file

    @property
    def metadata_path(self) -> Path:
        """The bundle's ``configs/metadata.json``."""
        return Path(self.path) / METADATA_FILE

    def metadata(self) -> dict[str, Any]:
        """The bundle's metadata (``{}`` when it is missing or not a mapping)."""
        if not self.metadata_path.is_file():
            return {}
        meta = _read_json(self.metadata_path, "bundle metadata")
        return meta if isinstance(meta, dict) else {}

    def weights_candidates(self) -> tuple[Path, Path]:
        """``models/model.pt`` and ``models/model.ts`` of the bundle."""
        models = Path(self.path) / "models"
        return models / "model.pt", models / "model.ts"

    def validate(self) -> None:
        """Check the spec and the bundle folder without importing torch or MONAI.

        Raises
        ------
        ValueError
            A bad field (empty name, negative memory, repeated label values).
        ModelLoadError
            The bundle is incomplete: no folder, config or metadata; neither
            ``models/model.pt`` nor ``models/model.ts``; no ``preprocessing``,
            ``inferer``, ``postprocessing`` (or, for a state dict,
            ``network_def``) in the config; no ``LoadImaged`` in the
            preprocessing (the input the node replaces).
        """
        if not self.name or not self.name.strip():
            raise ValueError("pipeline name must not be empty")
        if self.gpu_memory_mb < 0:
            raise ValueError(f"{self.name}: gpu_memory_mb must be >= 0")
        if self.min_slices < 1:
            raise ValueError(f"{self.name}: min_slices must be >= 1")
        values = [ls.value for ls in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"{self.name}: label values repeat: {values}")
        if any(v < 1 for v in values):
            raise ValueError(f"{self.name}: label values must be >= 1 (0 is background)")
        if any(not isinstance(k, str) or not k for k in self.overrides):
            raise ValueError(f"{self.name}: override ids must be non-empty strings")
        root = Path(self.path)
        where = f"{self.name}: bundle {root}"
        if not root.is_dir():
            raise ModelLoadError(f"{where} is not a directory")
        if not self.config_path.is_file():
            raise ModelLoadError(f"{where} has no {self.config_file}")
        if not self.metadata_path.is_file():
            raise ModelLoadError(f"{where} has no {METADATA_FILE}")
        meta = _read_json(self.metadata_path, "bundle metadata")
        if not isinstance(meta, dict):
            raise ModelLoadError(f"{where}: {METADATA_FILE} is not a JSON object")
        pt, ts = self.weights_candidates()
        if not pt.is_file() and not ts.is_file():
            raise ModelLoadError(f"{where} has neither models/model.pt nor models/model.ts")
        config = self._raw_config()
        required = _REQUIRED_IDS + (("network_def",) if pt.is_file() else ())
        missing = [i for i in required if i not in config]
        if missing:
            raise ModelLoadError(
                f"{where}: {self.config_file} lacks {', '.join(repr(m) for m in missing)} "
                "(a bundle inference config defines preprocessing, network_def, inferer "
                "and postprocessing)"
            )
        found = _find_transforms(lambda i: _raw_get(config, i), "preprocessing", _LOADERS)
        if not found.ids and not found.macros:
            raise ModelLoadError(
                f"{where}: the preprocessing of {self.config_file} has no LoadImaged; the node "
                "feeds its volume in place of that file reader"
            )
        for id_, name in found.ids:
            if name not in _DICT_LOADERS:
                raise ModelLoadError(
                    f"{where}: {id_} is the array transform {name}; only dictionary "
                    "bundles (LoadImaged, as the evaluator's data loader feeds) are supported"
                )
        if len(found.ids) > 1:
            raise ModelLoadError(
                f"{where}: the preprocessing loads images {len(found.ids)} times "
                f"({', '.join(i for i, _ in found.ids)}); one LoadImaged is supported"
            )

    def _raw_config(self) -> dict[str, Any]:
        config = copy.deepcopy(_read_config(self.config_path))
        for id_, value in self.overrides.items():
            with contextlib.suppress(KeyError, IndexError, ValueError, TypeError):
                _raw_set(config, id_, value)
        return config

    def label_names(self) -> dict[int, str]:
        """Label value -> name from ``metadata.json`` (``outputs.pred.channel_def``).

        Background (value 0, or a channel named "background") is left out.

        Raises
        ------
        ModelLoadError
            A channel key is not an integer.
        """
        fmt = self.metadata().get("network_data_format") or {}
        pred = ((fmt.get("outputs") or {}).get("pred") or {}) if isinstance(fmt, dict) else {}
        channels = pred.get("channel_def") or {} if isinstance(pred, dict) else {}
        names: dict[int, str] = {}
        for key, value in channels.items() if isinstance(channels, dict) else ():
            try:
                v = int(key)
            except (TypeError, ValueError) as exc:
                raise ModelLoadError(
                    f"{self.name}: metadata channel_def key {key!r} is not a label value"
                ) from exc
            name = str(value).strip()
            if v == 0 or name.lower() == "background":
                continue
            names[v] = name
        return dict(sorted(names.items()))

    def default_modalities(self) -> tuple[str, ...]:
        """The metadata's input modality as DICOM Modality values (``()``: unknown)."""
        fmt = self.metadata().get("network_data_format") or {}
        image = ((fmt.get("inputs") or {}).get("image") or {}) if isinstance(fmt, dict) else {}
        modality = image.get("modality") if isinstance(image, dict) else None
        if not isinstance(modality, str):
            return ()
        found = _MODALITIES.get(modality.strip().upper())
        return (found,) if found else ()

    def info(self) -> PipelineInfo:
        """Listing info from the spec and ``metadata.json`` (no torch or MONAI import).

        A missing or unreadable ``metadata.json`` still lists (without its
        name, version and labels): building the pipeline reports it.
        """
        try:
            meta = self.metadata()
            names = self.label_names()
        except ModelLoadError:
            meta, names = {}, {}
        names.update({ls.value: ls.label for ls in self.labels})
        description = self.description
        if not description:
            title = str(meta.get("name") or Path(self.path).name)
            what = str(meta.get("description") or "").strip()
            description = f"MONAI bundle {title}" + (f": {what}" if what else "")
        try:
            modalities = tuple(self.modalities) or self.default_modalities()
        except ModelLoadError:
            modalities = ()
        return PipelineInfo(
            self.name,
            description,
            modalities,
            self.version or str(meta.get("version") or "0"),
            "configured",
            labels=tuple(names[v] for v in sorted(names)),
        )

    def build(self) -> MonaiBundlePipeline:
        """Validate and make the pipeline (the bundle loads on its first run)."""
        return MonaiBundlePipeline(self)


# --------------------------------------------------------------------------- #
# The volume as MONAI's NIfTI reader would return it.

_VOLUMES: dict[str, Volume] = {}
_VOLUMES_LOCK = threading.Lock()


def volume_to_nifti_order(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """The volume as a NIfTI written by SimpleITK holds it.

    ITK's DICOM reader makes the direction matrix orthonormal: it keeps the
    column direction and the slice normal and recomputes the row direction as
    ``column x normal``.  ImageOrientationPatient is often orthogonal only to
    about 1e-5; the same correction is made here, since MONAI's ``Spacingd``
    chooses its output grid from the affine and a difference in the last
    digits can move that grid by half a voxel.

    Returns
    -------
    (array, affine)
        ``array``: ``(columns, rows, slices)`` float32, a transposed view of
        :attr:`Volume.array`; ``affine``: 4x4 float64 mapping NIfTI voxel
        indices to RAS mm, rounded to float32 precision as the header's
        ``srow_*`` fields store it.
    """
    direction = np.array(volume.direction, dtype=np.float64)
    k_dir, i_dir, j_dir = direction[:, 0], direction[:, 1], direction[:, 2]
    row = np.cross(i_dir, k_dir)
    norm = float(np.linalg.norm(row))
    if norm > 0 and float(row @ j_dir) / norm > 0.999:  # a right-handed, nearly orthogonal stack
        direction[:, 2] = row / norm
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    lps = np.eye(4)
    lps[:3, :3] = (direction * spacing[None, :])[:, [2, 1, 0]]
    lps[:3, 3] = np.asarray(volume.origin, dtype=np.float64)
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    ras = ras.astype(np.float32).astype(np.float64)
    ras[3] = (0.0, 0.0, 0.0, 1.0)
    return np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0), ras


def _volume_meta(shape: tuple[int, ...], affine: np.ndarray) -> dict[str, Any]:
    from monai.utils import MetaKeys, SpaceKeys

    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    qfac = -1.0 if np.linalg.det(affine[:3, :3]) < 0 else 1.0
    pixdim = np.array([qfac, *zooms, 0.0, 0.0, 0.0, 0.0], dtype=np.float32)
    return {
        MetaKeys.PIXDIM: pixdim,
        MetaKeys.ORIGINAL_PIXDIM: pixdim.copy(),
        MetaKeys.AFFINE: affine.copy(),
        MetaKeys.ORIGINAL_AFFINE: affine.copy(),
        MetaKeys.SPATIAL_SHAPE: np.asarray(shape, dtype=np.int16),
        MetaKeys.SPACE: SpaceKeys.RAS,
        MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
    }


def _make_volume_reader() -> Any:
    """A MONAI ``ImageReader`` that returns a registered volume for its name."""
    from monai.data import ImageReader

    class VolumeReader(ImageReader):  # type: ignore[misc]
        """Reads the volume registered under a name (see ``_registered_volume``)."""

        def verify_suffix(self, filename: Any) -> bool:
            return all(str(f) in _VOLUMES for f in _as_tuple(filename))

        def read(self, data: Any, **kwargs: Any) -> Volume:
            names = _as_tuple(data)
            if len(names) != 1:
                raise ModelLoadError(f"one volume per input expected, got {len(names)}")
            try:
                return _VOLUMES[str(names[0])]
            except KeyError:
                raise ModelLoadError(f"no volume registered as {names[0]!r}") from None

        def get_data(self, img: Volume) -> tuple[np.ndarray, dict[str, Any]]:
            array, affine = volume_to_nifti_order(img)
            return array, _volume_meta(array.shape, affine)

    return VolumeReader()


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


@contextlib.contextmanager
def _registered_volume(volume: Volume) -> Iterator[str]:
    """A unique file-like name under which the volume reader finds ``volume``."""
    name = f"{volume.series_instance_uid or 'volume'}-{uuid.uuid4().hex[:12]}.nii.gz"
    with _VOLUMES_LOCK:
        _VOLUMES[name] = volume
    try:
        yield name
    finally:
        with _VOLUMES_LOCK:
            _VOLUMES.pop(name, None)


# --------------------------------------------------------------------------- #
# The parsed, warm bundle.


@dataclass
class LoadedBundle:
    """A bundle parsed and ready: its transforms, inferer and network.

    Attributes
    ----------
    path, config_path, weights_path:
        The bundle folder, the config that was parsed and the weights file.
    sha256:
        Hex sha256 of the weights file's bytes followed by the config's.
    device:
        Where the network runs.
    network:
        In eval mode, on :attr:`device`.
    preprocessing, inferer, postprocessing:
        The bundle's own objects (file reader replaced, file writer removed).
    input_key:
        The data key ``LoadImaged`` reads (the volume is given there).
    amp:
        The evaluator's ``amp`` (float16 autocast, on CUDA only).
    metadata:
        ``configs/metadata.json``.
    load_seconds:
        Time parsing and loading took.
    """

    path: Path
    config_path: Path
    weights_path: Path
    sha256: str
    device: torch.device
    network: torch.nn.Module
    preprocessing: Callable[[Any], Any]
    inferer: Callable[..., Any]
    postprocessing: Callable[[Any], Any]
    input_key: str
    amp: bool
    metadata: dict[str, Any]
    load_seconds: float


_CACHE: dict[tuple[str, ...], LoadedBundle] = {}
_CACHE_LOCK = threading.Lock()


def clear_bundle_cache() -> None:
    """Forget every warm bundle (tests; freeing device memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _mtime(p: Path) -> str:
    return str(p.stat().st_mtime_ns) if p.exists() else "-"


def _bundle_sha256(weights: Path, config: Path) -> str:
    h = hashlib.sha256()
    for p in (weights, config):
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def load_bundle(spec: MonaiBundleSpec) -> LoadedBundle:
    """Parse the spec's bundle and load its network once per process.

    Cached by bundle folder, config, overrides and device, and reloaded when
    the config, metadata or weights change on disk.

    Raises
    ------
    ModelLoadError
        Anything that stops the bundle from being parsed or its weights from
        being loaded (the message names the bundle and the cause).
    """
    from ai_models import runtime

    spec.validate()
    root = Path(spec.path).expanduser().resolve()
    cfg = (root / spec.config_file).resolve()
    dev = runtime.select_device(spec.device)
    pt, ts = (root / "models" / "model.pt"), (root / "models" / "model.ts")
    key = (
        str(root),
        str(cfg),
        _mtime(cfg),
        _mtime(root / METADATA_FILE),
        _mtime(pt),
        _mtime(ts),
        json.dumps(spec.overrides, sort_keys=True, default=str),
        str(dev),
    )
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        try:
            bundle = _parse_bundle(spec, root, cfg, dev)
        except ModelLoadError:
            raise
        except Exception as exc:  # ConfigParser raises many kinds (KeyError, eval errors...)
            raise ModelLoadError(f"{spec.name}: cannot load bundle {root.name}: {exc}") from exc
        bundle.load_seconds = time.perf_counter() - t0
        for stale in [k for k in _CACHE if k[:2] == key[:2] and k[-2:] == key[-2:]]:
            del _CACHE[stale]  # an older version of the same bundle
        _CACHE[key] = bundle
    logger.info(
        "loaded MONAI bundle %s (%s) on %s in %.2f s",
        root.name,
        bundle.weights_path.name,
        dev,
        bundle.load_seconds,
    )
    return bundle


def _parse_bundle(spec: MonaiBundleSpec, root: Path, cfg: Path, dev: torch.device) -> LoadedBundle:
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import ensure_tuple

    from ai_models import runtime

    where = f"{spec.name}: bundle {root.name}"
    parser = ConfigParser()
    parser.read_config(str(cfg))
    meta_path = root / METADATA_FILE
    with warnings.catch_warnings():  # renamed metadata keys of older bundles
        warnings.filterwarnings("ignore", message="Detected deprecated name", category=UserWarning)
        parser.read_meta(str(meta_path))
    parser["bundle_root"] = str(root)
    parser["device"] = f"$torch.device({str(dev)!r})"
    for id_, value in spec.overrides.items():
        parser.set(value, id_)
    parser.resolve_macro_and_relative_ids()

    loaders = _find_transforms(parser.__getitem__, "preprocessing", _LOADERS).ids
    if len(loaders) != 1 or loaders[0][1] not in _DICT_LOADERS:
        raise ModelLoadError(f"{where}: the preprocessing needs exactly one LoadImaged")
    load_id = loaders[0][0]
    parser[f"{load_id}::reader"] = _make_volume_reader()
    for save_id, _ in _find_transforms(parser.__getitem__, "postprocessing", _SAVERS).ids:
        parser[save_id] = {"_target_": "Lambda", "func": "$lambda data: data"}

    keys = ensure_tuple(parser.get_parsed_content(f"{load_id}::keys"))
    if len(keys) != 1:
        raise ModelLoadError(
            f"{where}: LoadImaged reads {len(keys)} keys {list(keys)}; one image is supported"
        )

    weights = _weights_path(parser, root)
    if weights.suffix == ".ts":
        network = runtime._load_torchscript(weights)
    else:
        net_id = "network" if "network" in parser else "network_def"
        network = parser.get_parsed_content(net_id)
        if not isinstance(network, torch.nn.Module):
            raise ModelLoadError(f"{where}: {net_id} is not a torch module")
        state = runtime._read_state_dict(weights)
        runtime._load_into(network, state, f"{root.name}/{weights.relative_to(root)}")
    network = network.to(dev).eval()

    amp = False
    if "evaluator::amp" in parser:
        amp = bool(parser.get_parsed_content("evaluator::amp"))
    meta = parser.get("_meta_", {}) or {}
    return LoadedBundle(
        path=root,
        config_path=cfg,
        weights_path=weights,
        sha256=_bundle_sha256(weights, cfg),
        device=dev,
        network=network,
        preprocessing=parser.get_parsed_content("preprocessing"),
        inferer=parser.get_parsed_content("inferer"),
        postprocessing=parser.get_parsed_content("postprocessing"),
        input_key=str(keys[0]),
        amp=amp,
        metadata=dict(meta) if isinstance(meta, Mapping) else {},
        load_seconds=0.0,
    )


def _weights_path(parser: Any, root: Path) -> Path:
    """The checkpoint the config's ``checkpointloader`` loads, else ``models/model.pt|ts``."""
    if "checkpointloader::load_path" in parser:
        try:
            named = Path(str(parser.get_parsed_content("checkpointloader::load_path")))
        except Exception as exc:  # an expression the config cannot evaluate here
            logger.debug("checkpointloader#load_path not evaluated: %s", exc)
        else:
            if named.is_file():
                return named.resolve()
            logger.warning("bundle %s: checkpoint %s not found; trying models/", root.name, named)
    for name in ("model.pt", "model.ts"):
        if (root / "models" / name).is_file():
            return root / "models" / name
    raise ModelLoadError(f"bundle {root.name} has neither models/model.pt nor models/model.ts")


# --------------------------------------------------------------------------- #
# The pipeline.


class MonaiBundlePipeline(FolderPipeline):
    """A :class:`Pipeline` that runs a MONAI bundle's own inference config."""

    spec: MonaiBundleSpec

    def __init__(self, spec: MonaiBundleSpec) -> None:
        from ai_models.label_codes import label_specs

        super().__init__(spec)
        self.labels: list[LabelSpec] = label_specs(spec.label_names(), spec.labels, model=spec.name)
        if not self.labels:
            raise ModelLoadError(
                f"{spec.name}: {METADATA_FILE} names no output label "
                "(network_data_format.outputs.pred.channel_def) and none is configured"
            )

    def load(self) -> LoadedBundle:
        """The parsed bundle and its network (warm after the first run)."""
        return load_bundle(self.spec)

    def preprocess(self, volume: Volume, model: Any = None) -> dict[str, Any]:
        """The bundle's preprocessing on the volume, collated into a batch of one."""
        from monai.data import list_data_collate
        from monai.transforms import apply_transform

        bundle: LoadedBundle = model if model is not None else self.load()
        with _registered_volume(volume) as name:
            item = apply_transform(bundle.preprocessing, {bundle.input_key: name})
        batch: dict[str, Any] = list_data_collate([item])
        return batch

    def predict(self, model: LoadedBundle, inputs: dict[str, Any]) -> dict[str, Any]:
        """The evaluator's iteration: ``inferer(image, network)`` under ``no_grad``."""
        import torch
        from monai.engines.utils import default_prepare_batch
        from monai.utils import CommonKeys

        if CommonKeys.IMAGE not in inputs:
            raise ModelLoadError(
                f"{self.name}: the preprocessing gives no {CommonKeys.IMAGE!r} key, "
                "which the bundle's evaluator feeds to the network"
            )
        image, label = default_prepare_batch(inputs, model.device)
        output: dict[str, Any] = {CommonKeys.IMAGE: image, CommonKeys.LABEL: label}
        autocast = (
            torch.autocast("cuda")
            if model.amp and model.device.type == "cuda"
            else contextlib.nullcontext()
        )
        model.network.eval()
        with torch.no_grad(), autocast:
            output[CommonKeys.PRED] = model.inferer(image, model.network)
        return output

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """The bundle's postprocessing, then the label map on the volume's grid."""
        from monai.engines.utils import engine_apply_transform
        from monai.transforms import Decollated
        from monai.utils import CommonKeys

        bundle: LoadedBundle = run.model
        decollate = Decollated(keys=None, detach=True)
        batch, output = decollate(run.inputs), decollate(run.outputs)
        _, out = engine_apply_transform(batch[0], output[0], bundle.postprocessing)
        run.outputs = None  # free the raw network output
        label_map = self._label_map(out[CommonKeys.PRED], run.volume)
        return self._result(run.volume, label_map, bundle)

    def _result(
        self, volume: Volume, label_map: np.ndarray, bundle: LoadedBundle
    ) -> PipelineResult:
        from ai_models.pipelines.configured import label_map_result

        meta = bundle.metadata
        parameters = (
            "kind=monai-bundle",
            f"bundle={meta.get('name') or bundle.path.name} {meta.get('version') or ''}".strip(),
            f"config={self.spec.config_file}",
            *(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(self.spec.overrides.items())),
        )
        return label_map_result(
            self, volume, label_map, self.labels, bundle.sha256, tuple(parameters)
        )

    def _label_map(self, pred: Any, volume: Volume) -> np.ndarray:
        """The postprocessed prediction as integer labels on ``volume``'s ``(k, i, j)`` grid."""
        import torch

        if not isinstance(pred, torch.Tensor) or pred.ndim != 4:
            raise ModelLoadError(
                f"{self.name}: the postprocessing gives {type(pred).__name__} "
                f"{tuple(getattr(pred, 'shape', ()))}, not a (channels, x, y, z) label map"
            )
        values = pred.detach()
        if values.shape[0] == 1:
            lab = torch.round(values[0].float()).to(torch.int32)
        else:
            lab = values.argmax(0).to(torch.int32)
        lab_np = lab.cpu().numpy()
        array_shape, affine = _nifti_geometry(volume)
        pred_affine = _affine_of(pred)
        if lab_np.shape == array_shape and (
            pred_affine is None or np.allclose(pred_affine, affine, atol=1e-3, rtol=0)
        ):
            return np.ascontiguousarray(lab_np.transpose(2, 1, 0))
        if pred_affine is None:
            raise ModelLoadError(
                f"{self.name}: the prediction {lab_np.shape} is not on the input grid "
                f"{array_shape} and carries no affine (is Invertd missing?)"
            )
        logger.info(
            "%s: prediction grid %s differs from the input grid %s; nearest-neighbour resampling",
            self.name,
            lab_np.shape,
            array_shape,
        )
        return _resample_nearest(lab_np, pred_affine, affine, volume.shape)


def _nifti_geometry(volume: Volume) -> tuple[tuple[int, int, int], np.ndarray]:
    k, i, j = volume.shape
    _, affine = volume_to_nifti_order(volume)
    return (j, i, k), affine


def _affine_of(pred: Any) -> np.ndarray | None:
    affine = getattr(pred, "affine", None)
    if affine is None:
        return None
    a = np.asarray(affine.detach().cpu().numpy() if hasattr(affine, "detach") else affine)
    return a.astype(np.float64) if a.shape == (4, 4) else None


def _resample_nearest(
    lab: np.ndarray, lab_affine: np.ndarray, affine: np.ndarray, shape: tuple[int, int, int]
) -> np.ndarray:
    """``lab`` (NIfTI order, ``lab_affine``) at the voxels of a ``(k, i, j)`` grid.

    ``affine`` maps the grid's NIfTI order ``(j, i, k)`` to RAS; voxels
    outside ``lab`` are background.
    """
    k, i, j = shape
    to_lab = np.linalg.inv(lab_affine) @ affine
    out = np.zeros(shape, dtype=np.int32)
    jj, ii = np.meshgrid(np.arange(j), np.arange(i), indexing="xy")
    for kk in range(k):
        pts = np.stack([jj.ravel(), ii.ravel(), np.full(jj.size, kk), np.ones(jj.size)])
        idx = np.rint(to_lab @ pts)[:3].astype(np.int64)
        ok = np.all((idx >= 0) & (idx < np.asarray(lab.shape)[:, None]), axis=0)
        sl = np.zeros(jj.size, dtype=np.int32)
        sl[ok] = lab[idx[0, ok], idx[1, ok], idx[2, ok]]
        out[kk] = sl.reshape(i, j)
    return out

"""Model runtime: device choice, warm model cache, inference, stage timings.

A pipeline asks :func:`load_model` for its network once per process; the
loaded model is cached (keyed by resolved path, file modification time, kind
and device) and stays warm for later series.  :func:`run_network` runs it
under :func:`torch.inference_mode`, with autocast on CUDA, and switches to
MONAI's :func:`~monai.inferers.sliding_window_inference` when the input is
larger than the patch size; ``sw_batch_size`` bounds how many patches are on
the device at once (and so the GPU memory used).

Three ways to load weights (:class:`ModelKind`):

``state_dict``
    A ``torch.save`` state dict for a built-in architecture
    (:data:`ARCHITECTURES`), loaded with ``weights_only=True``.  The
    architecture comes from the caller or from a JSON sidecar next to the
    weights (``model.pt`` -> ``model.json`` with an ``"architecture"`` entry
    ``{"name": ..., "kwargs": {...}}``).
``torchscript``
    A TorchScript file (``torch.jit.save``); no Python class needed.
``bundle``
    A MONAI bundle directory: ``configs/`` (``inference.json`` or
    ``inference.yaml``, ``metadata.json``) and ``models/`` (``model.ts`` is
    used as TorchScript when present, else ``model.pt`` is loaded into the
    ``network_def`` of the inference config).

.. warning::
   MONAI's ``ConfigParser`` evaluates ``$``-prefixed expressions in bundle
   configs with Python's ``eval`` (and ``_target_`` instantiates arbitrary
   classes), and TorchScript files and pickled checkpoints can also run code.
   Only load bundles and model files from trusted sources.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import logging
import pathlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ai_models.errors import ModelLoadError

logger = logging.getLogger(__name__)

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_SW_BATCH_SIZE",
    "DEFAULT_OVERLAP",
    "loaded_model_paths",
    "LoadedModel",
    "load_built_model",
    "ModelKind",
    "StageTimer",
    "build_architecture",
    "clear_model_cache",
    "file_sha256",
    "load_model",
    "run_network",
    "select_device",
]

DEFAULT_SW_BATCH_SIZE = 2
"""Patches per forward pass in sliding-window inference (bounds device memory)."""

DEFAULT_OVERLAP = 0.25
"""Fractional overlap of neighbouring sliding windows."""


class ModelKind(str, enum.Enum):
    """How a model file is stored (see the module docstring)."""

    STATE_DICT = "state_dict"
    TORCHSCRIPT = "torchscript"
    BUNDLE = "bundle"


def _monai_net(name: str) -> Callable[..., torch.nn.Module]:
    def factory(**kwargs: Any) -> torch.nn.Module:
        import monai.networks.nets as nets

        return getattr(nets, name)(**kwargs)

    return factory


ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    "monai.networks.nets.UNet": _monai_net("UNet"),
    "monai.networks.nets.BasicUNet": _monai_net("BasicUNet"),
    "monai.networks.nets.SegResNet": _monai_net("SegResNet"),
    "monai.networks.nets.UNETR": _monai_net("UNETR"),
    "monai.networks.nets.SwinUNETR": _monai_net("SwinUNETR"),
    "monai.networks.nets.DynUNet": _monai_net("DynUNet"),
}
"""Built-in architectures a state dict can be loaded into (name -> factory).

Short names (``"UNet"``) are accepted too."""


def build_architecture(name: str, kwargs: dict[str, Any] | None = None) -> torch.nn.Module:
    """Instantiate a built-in architecture.

    Raises
    ------
    ModelLoadError
        For an unknown name (the message lists the valid ones) or bad kwargs.
    """
    key = name if name in ARCHITECTURES else f"monai.networks.nets.{name}"
    if key not in ARCHITECTURES:
        raise ModelLoadError(
            f"unknown architecture {name!r}; built-in ones: {', '.join(sorted(ARCHITECTURES))}"
        )
    try:
        return ARCHITECTURES[key](**(kwargs or {}))
    except TypeError as exc:
        raise ModelLoadError(f"bad arguments for architecture {name!r}: {exc}") from exc


def select_device(device: str | torch.device | None = None) -> torch.device:
    """Pick the device: ``cuda`` when available, else CPU; a string overrides.

    Parameters
    ----------
    device:
        ``None`` or ``"auto"`` to choose, or any torch device string
        (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Raises
    ------
    ModelLoadError
        When CUDA is requested but not available.
    """
    if device is None or (isinstance(device, str) and device.lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {str(device)!r} requested but CUDA is not available")
    return dev


def file_sha256(path: str | pathlib.Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LoadedModel:
    """A network ready for inference.

    Attributes
    ----------
    network:
        The module in eval mode, on :attr:`device`.
    device:
        Where it runs.
    kind:
        How it was stored.
    path:
        The file (or bundle directory) it came from.
    weights_path:
        The exact file holding the weights (inside a bundle: ``models/...``).
    sha256:
        Hex sha256 of :attr:`weights_path`; identifies the weights.
    load_seconds:
        Time the first load took (0 afterwards is not recorded: it is cached).
    metadata:
        Sidecar JSON or the bundle's ``configs/metadata.json`` (may be empty).
    """

    network: torch.nn.Module
    device: torch.device
    kind: ModelKind
    path: pathlib.Path
    weights_path: pathlib.Path
    sha256: str
    load_seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


_CACHE: dict[tuple[str, float, float, str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def loaded_model_paths() -> list[str]:
    """The model files or folders loaded (warm) in this process, oldest first."""
    with _CACHE_LOCK:
        return [key[0] for key in _CACHE]


def clear_model_cache() -> None:
    """Forget every warm model (tests; freeing device memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_model(
    path: str | pathlib.Path,
    kind: ModelKind | str,
    device: str | torch.device | None = None,
    architecture: str | None = None,
    architecture_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a model once per process and keep it warm.

    Parameters
    ----------
    path:
        State-dict file, TorchScript file or bundle directory.
    kind:
        A :class:`ModelKind` or its value.
    device:
        See :func:`select_device`.
    architecture, architecture_kwargs:
        For ``state_dict`` only: the built-in architecture and its arguments;
        default from the JSON sidecar (``<stem>.json``, key ``architecture``).

    Returns
    -------
    LoadedModel
        The cached instance when the same path (unchanged on disk, its
        sidecar or bundle metadata too), kind, device and architecture were
        loaded before.

    Raises
    ------
    ModelLoadError
        Missing files, unreadable weights, mismatching state dict, bad bundle.
    """
    try:
        kind = ModelKind(kind)
    except ValueError as exc:
        valid = ", ".join(k.value for k in ModelKind)
        raise ModelLoadError(f"unknown model kind {kind!r}; valid kinds: {valid}") from exc
    p = pathlib.Path(path).expanduser().resolve()
    if not p.exists():
        raise ModelLoadError(f"{kind.value} model not found: {p}")
    dev = select_device(device)
    arch_key = json.dumps([architecture, architecture_kwargs], sort_keys=True, default=str)
    # The metadata counts too: a changed sidecar (labels, thresholds) reloads.
    meta_file = p / "configs" / "metadata.json" if p.is_dir() else p.with_suffix(".json")
    meta_mtime = meta_file.stat().st_mtime if meta_file.is_file() else 0.0
    key = (str(p), p.stat().st_mtime, meta_mtime, kind.value, str(dev), arch_key)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        if kind is ModelKind.STATE_DICT:
            net, weights, meta = _load_state_dict(p, architecture, architecture_kwargs)
        elif kind is ModelKind.TORCHSCRIPT:
            net, weights, meta = _load_torchscript(p), p, _sidecar(p)
        else:
            net, weights, meta = _load_bundle(p)
        net = net.to(dev).eval()
        model = LoadedModel(
            network=net,
            device=dev,
            kind=kind,
            path=p,
            weights_path=weights,
            sha256=file_sha256(weights),
            load_seconds=time.perf_counter() - t0,
            metadata=meta,
        )
        _CACHE[key] = model
    logger.info("loaded %s model %s on %s in %.2f s", kind.value, p.name, dev, model.load_seconds)
    return model


def load_built_model(
    path: str | pathlib.Path,
    build: Callable[[dict[str, Any]], torch.nn.Module],
    *,
    device: str | torch.device | None = None,
    name: str = "model",
) -> LoadedModel:
    """A state dict in the network ``build(sidecar)`` makes; cached like :func:`load_model`.

    For pipelines whose network is not one of :data:`ARCHITECTURES` (e.g. a
    torchvision classifier or detector with a custom first layer): ``build``
    reads the JSON sidecar (``<stem>.json``, ``{}`` without one) and returns
    the untrained network, raising :class:`ModelLoadError` for an
    architecture it does not make (``TypeError`` / ``ValueError`` /
    ``KeyError`` for bad arguments are reported as such).  The weights are
    read with ``weights_only=True``, as float32, gradients off, in eval mode.
    Reloaded when the weights or the sidecar change on disk.
    """
    p = pathlib.Path(path).expanduser().resolve()
    if not p.is_file():
        raise ModelLoadError(f"{name} weights not found: {p}")
    dev = select_device(device)
    side = p.with_suffix(".json")
    meta_mtime = side.stat().st_mtime if side.is_file() else 0.0
    key = (str(p), p.stat().st_mtime, meta_mtime, ModelKind.STATE_DICT.value, str(dev), name)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        t0 = time.perf_counter()
        meta = _sidecar(p)
        try:
            net = build(meta)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{p.name}: {exc}") from exc
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"bad architecture arguments in {side.name}: {exc}") from exc
        _load_into(net, {k: v.float() for k, v in _read_state_dict(p).items()}, p.name)
        for param in net.parameters():
            param.requires_grad_(False)
        model = LoadedModel(
            network=net.to(dev).eval(),
            device=dev,
            kind=ModelKind.STATE_DICT,
            path=p,
            weights_path=p,
            sha256=file_sha256(p),
            load_seconds=time.perf_counter() - t0,
            metadata=meta,
        )
        _CACHE[key] = model
    logger.info("loaded %s model %s on %s in %.2f s", name, p.name, dev, model.load_seconds)
    return model


def _sidecar(p: pathlib.Path) -> dict[str, Any]:
    side = p.with_suffix(".json")
    if side.is_file():
        try:
            return json.loads(side.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"bad JSON sidecar {side.name}: {exc}") from exc
    return {}


def _read_state_dict(p: pathlib.Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise ModelLoadError(f"cannot read state dict {p.name}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    elif isinstance(sd, dict) and "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"{p.name} does not hold a state dict")
    return sd


def _load_into(net: torch.nn.Module, sd: dict[str, torch.Tensor], name: str) -> None:
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"state dict {name} does not fit the architecture: {exc}") from exc


def _load_state_dict(
    p: pathlib.Path, architecture: str | None, kwargs: dict[str, Any] | None
) -> tuple[torch.nn.Module, pathlib.Path, dict[str, Any]]:
    meta = _sidecar(p)
    if architecture is None:
        arch = meta.get("architecture")
        if not isinstance(arch, dict) or "name" not in arch:
            raise ModelLoadError(
                f"state dict {p.name}: no architecture given and no "
                f"{p.with_suffix('.json').name} sidecar with an 'architecture' entry"
            )
        architecture, kwargs = arch["name"], arch.get("kwargs", {})
    net = build_architecture(architecture, kwargs)
    _load_into(net, _read_state_dict(p), p.name)
    return net, p, meta


def _load_torchscript(p: pathlib.Path) -> torch.nn.Module:
    try:
        with (
            warnings.catch_warnings()
        ):  # TorchScript is deprecated upstream but still the format sites ship
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(p), map_location="cpu")
    except Exception as exc:  # RuntimeError / ValueError from the TorchScript loader
        raise ModelLoadError(f"cannot load TorchScript {p.name}: {exc}") from exc


def _load_bundle(p: pathlib.Path) -> tuple[torch.nn.Module, pathlib.Path, dict[str, Any]]:
    """Load a MONAI bundle directory (trusted bundles only: configs are evaluated)."""
    if not p.is_dir():
        raise ModelLoadError(f"bundle {p} is not a directory")
    configs, models = p / "configs", p / "models"
    meta: dict[str, Any] = {}
    if (configs / "metadata.json").is_file():
        try:
            meta = json.loads((configs / "metadata.json").read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"bundle {p.name}: bad configs/metadata.json: {exc}") from exc
    ts = models / "model.ts"
    if ts.is_file():
        return _load_torchscript(ts), ts, meta
    pt = models / "model.pt"
    if not pt.is_file():
        raise ModelLoadError(f"bundle {p.name}: neither models/model.ts nor models/model.pt")
    cfg = next(
        (
            configs / n
            for n in ("inference.json", "inference.yaml", "inference.yml")
            if (configs / n).is_file()
        ),
        None,
    )
    if cfg is None:
        raise ModelLoadError(f"bundle {p.name}: models/model.pt needs configs/inference.json|yaml")
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(cfg))
        if (configs / "metadata.json").is_file():
            parser.read_meta(str(configs / "metadata.json"))
        parser["bundle_root"] = str(p)
        key = "network_def" if "network_def" in parser else "network"
        net = parser.get_parsed_content(key)
    except Exception as exc:  # ConfigParser raises many kinds (KeyError, eval errors...)
        raise ModelLoadError(f"bundle {p.name}: cannot build the network: {exc}") from exc
    if not isinstance(net, torch.nn.Module):
        raise ModelLoadError(f"bundle {p.name}: network_def is not a torch module")
    _load_into(net, _read_state_dict(pt), f"{p.name}/models/model.pt")
    return net, pt, meta


def run_network(
    model: LoadedModel,
    x: torch.Tensor,
    roi_size: Sequence[int] | None = None,
    sw_batch_size: int = DEFAULT_SW_BATCH_SIZE,
    overlap: float = DEFAULT_OVERLAP,
    divisible_by: int = 1,
    amp: bool = True,
    output_device: str | torch.device = "cpu",
    spatial_dims: int = 3,
) -> torch.Tensor:
    """Run the network on one input and return its raw output.

    Parameters
    ----------
    model:
        From :func:`load_model`.
    x:
        ``(C, *spatial)`` or ``(B, C, *spatial)`` float input on any device.
    roi_size:
        Patch size; when given and the input is larger along any axis,
        sliding-window inference (Gaussian blending) is used, ``sw_batch_size``
        patches at a time.  ``None`` runs the whole input at once.
    divisible_by:
        For whole-input runs, pad each spatial axis (at its end, with the
        minimum of the input) up to a multiple of this (e.g. 16 for a
        5-level UNet) and crop the output back.
    amp:
        Use float16 autocast on CUDA (ignored on CPU).
    output_device:
        Where the output is returned.
    spatial_dims:
        Number of spatial axes (3 for volumes, 2 for images).

    Returns
    -------
    torch.Tensor
        ``(B, C_out, *spatial)`` float32 (``B`` = 1 for an unbatched input),
        same spatial size as ``x``.
    """
    if x.ndim not in (spatial_dims + 1, spatial_dims + 2):
        raise ValueError(
            f"input must be (C, *spatial) or (B, C, *spatial) with {spatial_dims} spatial "
            f"axes, got shape {tuple(x.shape)}"
        )
    dev = model.device
    xb = x if x.ndim == spatial_dims + 2 else x[None]
    spatial = xb.shape[2:]
    xb = xb.to(dev, dtype=torch.float32)
    use_amp = amp and dev.type == "cuda"
    with (
        torch.inference_mode(),
        torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext(),
    ):
        if roi_size is not None and any(
            int(s) > int(r) for s, r in zip(xb.shape[2:], roi_size, strict=False)
        ):
            from monai.inferers import sliding_window_inference

            out = sliding_window_inference(
                xb,
                roi_size=tuple(int(r) for r in roi_size),
                sw_batch_size=int(sw_batch_size),
                predictor=model.network,
                overlap=overlap,
                mode="gaussian",
                sw_device=dev,
                device=torch.device(output_device),
            )
        else:
            pad = [(-int(n)) % max(int(divisible_by), 1) for n in xb.shape[2:]]
            if any(pad):
                fill = float(xb.min())
                flat = [v for p in reversed(pad) for v in (0, p)]
                xb = F.pad(xb, flat, value=fill)
            out = model.network(xb)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if any(pad):
                out = out[(slice(None), slice(None)) + tuple(slice(0, int(n)) for n in spatial)]
    return out.float().to(output_device)  # type: ignore[union-attr]


class StageTimer:
    """Collects wall-clock seconds per named stage.

    Examples
    --------
    >>> t = StageTimer()
    >>> with t("preprocess"):
    ...     pass
    >>> sorted(t.timings)
    ['preprocess']
    """

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        """Time the ``with`` block and add it to ``timings[stage]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

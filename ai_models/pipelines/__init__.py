"""Pipelines: the registry of built-in and configured analyses.

Built-in pipelines (names are an interface: routing rules and docs use them):

``ct-lungs``
    :data:`CT_LUNGS` -- lungs (per side), bone and lung nodules on CT, with
    lung volumes and per-nodule volume and longest diameter.

``cxr-findings``
    :data:`CXR_FINDINGS` -- lung opacity, pleural effusion, cardiomegaly and
    pneumothorax on a frontal chest radiograph (CR / DX): presence and
    probability per finding, with Grad-CAM explanation maps.

``mr-brain-lesion``
    :data:`MR_BRAIN_LESION` -- brain, lesions and surrounding edema on
    anatomical brain MR, with brain, per-lesion (volume, longest diameter)
    and edema volumes.

``mg-masses``
    :data:`MG_MASSES` -- masses on a mammogram (MG, or a breast image sent as
    RG / DX / CR / OT): a box and a score per mass, with the image's
    laterality and view.

A site adds its own segmentation models from config as
:class:`SegmentationSpec` objects (TorchScript, MONAI bundle or state dict),
or as a public model's folder run unchanged (:data:`MODEL_SPECS`: nnU-Net v2
trained-model folders, MONAI Model Zoo bundles); pass them to
:func:`list_pipelines` / :func:`get_pipeline` as ``configured``.

Examples
--------
>>> [p.name for p in list_pipelines()]
['ct-lungs', 'cxr-findings', 'mr-brain-lesion', 'mg-masses']
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import pathlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from ai_models.pipelines.base import (
    CODES,
    Pipeline,
    PipelineInfo,
    PipelineRun,
    UnknownPipelineError,
    tracking_uid,
    volume_measurement,
)
from ai_models.pipelines.configured import (
    ConfiguredSegmentationPipeline,
    LabelSpec,
    SegmentationSpec,
    build_configured_pipeline,
)

logger = logging.getLogger(__name__)

__all__ = [
    "CODES",
    "CT_LUNGS",
    "CXR_FINDINGS",
    "ConfiguredSegmentationPipeline",
    "LabelSpec",
    "MG_MASSES",
    "MODEL_SPECS",
    "ModelSpec",
    "MR_BRAIN_LESION",
    "Pipeline",
    "PipelineEntry",
    "PipelineInfo",
    "PipelineRun",
    "PipelineTarget",
    "SHIPPED_PIPELINES",
    "SegmentationSpec",
    "SiteWeightsSpec",
    "UnknownPipelineError",
    "build_configured_pipeline",
    "build_model_spec",
    "get_pipeline",
    "list_pipelines",
    "register_pipeline",
    "unregister_pipeline",
    "tracking_uid",
    "volume_measurement",
]

CT_LUNGS = "ct-lungs"
"""Name of the built-in CT lungs / bone / nodules pipeline."""

CXR_FINDINGS = "cxr-findings"
"""Name of the built-in chest radiograph findings pipeline (CR / DX)."""

MR_BRAIN_LESION = "mr-brain-lesion"
"""Name of the built-in MR brain / lesion / edema pipeline."""

MG_MASSES = "mg-masses"
"""Name of the built-in mammography mass detection pipeline."""


PipelineTarget = str | type[Pipeline] | Callable[..., Pipeline]
"""What the registry builds a pipeline from: ``"package.module:ClassName"``
(imported on first use, so listing pipelines loads no torch), a
:class:`Pipeline` subclass, or a factory ``f(**options) -> Pipeline``."""


@dataclass(frozen=True)
class PipelineEntry:
    """One registered pipeline: how to build it and how to list it."""

    target: PipelineTarget
    info: Callable[[], PipelineInfo] | None = None
    """Listing info without building the pipeline; default: the class's
    :meth:`Pipeline.static_info` (a factory target must give one)."""

    def pipeline_class(self) -> type[Pipeline] | None:
        """The target's class (imported now), or ``None`` for a factory."""
        target = self.target
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module_name), attr)
        if isinstance(target, type) and issubclass(target, Pipeline):
            return target
        return None

    def build(self, **options: Any) -> Pipeline:
        cls = self.pipeline_class()
        if cls is not None:
            return cls(**options)
        assert callable(self.target) and not isinstance(self.target, str)
        return self.target(**options)

    def describe(self) -> PipelineInfo:
        if self.info is not None:
            return self.info()
        cls = self.pipeline_class()
        if cls is None:
            raise TypeError("a pipeline factory needs an info callable")
        return cls.static_info()


#: The registry: pipeline name -> entry.  A new built-in pipeline is one module
#: under ``ai_models/pipelines/`` and one line here.
_BUILTIN: dict[str, PipelineEntry] = {
    CT_LUNGS: PipelineEntry("ai_models.pipelines.ct_lungs:CtLungsPipeline"),
    CXR_FINDINGS: PipelineEntry("ai_models.pipelines.cxr_findings:CxrFindingsPipeline"),
    MR_BRAIN_LESION: PipelineEntry("ai_models.pipelines.mr_brain_lesion:MrBrainLesionPipeline"),
    MG_MASSES: PipelineEntry("ai_models.pipelines.mg_masses:MgMassesPipeline"),
}


def register_pipeline(
    name: str, factory: PipelineTarget, info: Callable[[], PipelineInfo] | None = None
) -> None:
    """Add a pipeline (for extensions and tests).

    Parameters
    ----------
    name:
        The name routing rules use.
    factory:
        ``"package.module:ClassName"``, a :class:`Pipeline` subclass, or a
        callable ``factory(**options) -> Pipeline``.
    info:
        Listing info without building it (required for a plain callable).

    Raises
    ------
    ValueError
        The name is taken.
    """
    if name in _BUILTIN:
        raise ValueError(f"pipeline {name!r} is already registered")
    if info is None and not isinstance(factory, (str, type)):
        raise ValueError(f"pipeline {name!r}: a factory function needs an info callable")
    _BUILTIN[name] = PipelineEntry(factory, info)


@dataclass(frozen=True)
class SiteWeightsSpec:
    """A shipped pipeline run with a site's own weights, under a name of its own.

    Attributes
    ----------
    name:
        Pipeline name (routing rules refer to it).
    pipeline:
        The shipped pipeline whose pre- and post-processing it uses
        (:data:`SHIPPED_PIPELINES`).
    kind:
        ``"torchscript"``, ``"bundle"`` or ``"state_dict"``.
    path:
        Model file or bundle directory; its sidecar JSON (or the bundle's
        ``configs/metadata.json``) holds what the shipped weights' sidecar
        holds (e.g. labels and thresholds).
    description, version:
        For listings and TID 4019 (default: the shipped pipeline's).
    device:
        ``None`` (automatic), ``"cpu"``, ``"cuda"``...
    """

    name: str
    pipeline: str
    kind: str
    path: pathlib.Path
    description: str = ""
    version: str = ""
    device: str | None = None


def _site_weights_pipeline(spec: SiteWeightsSpec) -> Pipeline:
    if spec.pipeline not in SHIPPED_PIPELINES:
        raise UnknownPipelineError(
            f"model {spec.name!r}: {spec.pipeline!r} is not a shipped pipeline; "
            f"shipped: {', '.join(sorted(SHIPPED_PIPELINES))}"
        )
    options: dict[str, Any] = {"weights": spec.path, "weights_kind": spec.kind}
    if spec.device is not None:
        options["device"] = spec.device
    pipe = _BUILTIN[spec.pipeline].build(**options)
    pipe.name = spec.name
    pipe.source = "configured"
    if spec.version:
        pipe.version = spec.version
    if spec.description:
        pipe.description = spec.description
    return pipe


#: Model kinds that run a public model's folder unchanged: ``[[models]] kind``
#: -> its spec class (``"package.module:Class"``, imported on first use).  A
#: spec class is a dataclass with ``name``, ``info() -> PipelineInfo`` (cheap:
#: no torch) and ``build() -> Pipeline``.  A new kind is one module and one
#: line here (and its options in :class:`dicom_node.config.ModelSettings`).
MODEL_SPECS: dict[str, str] = {
    "nnunetv2": "ai_models.pipelines.nnunet:NnUNetSpec",
    "monai-bundle": "ai_models.pipelines.monai_bundle:MonaiBundleSpec",
}


class ModelSpec(Protocol):
    """What :data:`MODEL_SPECS` classes give the registry."""

    name: str

    def info(self) -> PipelineInfo: ...

    def build(self) -> Pipeline: ...


def build_model_spec(kind: str, **options: Any) -> ModelSpec:
    """The spec of a model folder of ``kind`` (see :data:`MODEL_SPECS`).

    Raises
    ------
    ValueError
        Unknown kind, or an option the kind's spec does not take.
    """
    target = MODEL_SPECS.get(kind)
    if target is None:
        raise ValueError(f"unknown model kind {kind!r}; choose from {', '.join(MODEL_SPECS)}")
    module_name, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module_name), attr)
    accepted = {f.name for f in dataclasses.fields(cls)}
    stray = sorted(set(options) - accepted)
    if stray:
        raise ValueError(f"model kind {kind!r} takes no {', '.join(stray)}")
    spec: ModelSpec = cls(**options)
    return spec


#: The pipelines shipped with the node; :func:`unregister_pipeline` keeps them.
SHIPPED_PIPELINES = frozenset(_BUILTIN)


def unregister_pipeline(name: str) -> None:
    """Remove a pipeline added with :func:`register_pipeline` (shipped ones stay).

    Raises
    ------
    ValueError
        ``name`` is one of :data:`SHIPPED_PIPELINES`.
    """
    if name in SHIPPED_PIPELINES:
        raise ValueError(f"{name!r} is built in and cannot be removed")
    _BUILTIN.pop(name, None)


def list_pipelines(
    configured: Iterable[SegmentationSpec | SiteWeightsSpec | ModelSpec] = (),
) -> list[PipelineInfo]:
    """One :class:`PipelineInfo` per available pipeline, built-in first.

    Parameters
    ----------
    configured:
        The site's configured models.
    """
    out = [entry.describe() for entry in _BUILTIN.values()]
    for spec in configured:
        if not isinstance(spec, (SiteWeightsSpec, SegmentationSpec)):
            out.append(spec.info())
            continue
        if isinstance(spec, SiteWeightsSpec):
            base = _BUILTIN[spec.pipeline].describe() if spec.pipeline in _BUILTIN else None
            out.append(
                PipelineInfo(
                    spec.name,
                    spec.description or f"{spec.pipeline} with site weights ({spec.kind})",
                    tuple(base.modalities) if base is not None else (),
                    spec.version or (base.version if base is not None else ""),
                    "configured",
                )
            )
            continue
        out.append(
            PipelineInfo(
                spec.name,
                spec.description or f"site segmentation model ({spec.kind})",
                tuple(spec.modalities),
                spec.version,
                "configured",
                labels=tuple(ls.label for ls in spec.labels),
            )
        )
    return out


def get_pipeline(
    name: str,
    configured: Iterable[SegmentationSpec | SiteWeightsSpec | ModelSpec] = (),
    **options: Any,
) -> Pipeline:
    """The pipeline called ``name``.

    Parameters
    ----------
    name:
        A built-in name (e.g. :data:`CT_LUNGS`) or a configured one.
    configured:
        The site's configured models (its own segmentation models, and
        shipped pipelines with its own weights); a configured name that
        equals a built-in one shadows nothing: built-ins win and a warning
        is logged.
    **options:
        Passed to a built-in pipeline's constructor (e.g. ``device="cpu"``).

    Raises
    ------
    UnknownPipelineError
        No such pipeline; the message lists the valid names and suggests the
        closest one.
    """
    specs = {s.name: s for s in configured}
    if name in _BUILTIN:
        if name in specs:
            logger.warning("configured pipeline %r is shadowed by the built-in one", name)
        return _BUILTIN[name].build(**options)
    if name in specs:
        spec = specs[name]
        if isinstance(spec, SiteWeightsSpec):
            return _site_weights_pipeline(spec)
        if isinstance(spec, SegmentationSpec):
            return build_configured_pipeline(spec)
        return spec.build()
    valid = sorted(_BUILTIN) + sorted(specs)
    close = difflib.get_close_matches(name, valid, n=1)
    msg = f"unknown pipeline {name!r}"
    if close:
        msg += f" (did you mean {close[0]!r}?)"
    raise UnknownPipelineError(f"{msg}; valid pipelines: {', '.join(valid)}")

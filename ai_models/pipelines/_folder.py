"""What the pipelines of public model folders share (``[[models]] kind =
"nnunetv2"`` / ``"monai-bundle"``): identity and checks from their spec."""

from __future__ import annotations

from typing import Any

from ai_models.errors import PipelineNotApplicable
from ai_models.pipelines.base import Pipeline, PipelineInfo
from ai_models.types import Volume

__all__ = ["FolderPipeline"]


class FolderPipeline(Pipeline):
    """A pipeline whose name, listing, version, GPU memory and minimum slice
    count come from a validated spec (a :data:`ai_models.pipelines.MODEL_SPECS`
    class: ``validate()``, ``info()``, ``gpu_memory_mb``, ``min_slices``)."""

    source = "configured"

    def __init__(self, spec: Any) -> None:
        spec.validate()
        self.spec = spec
        info = spec.info()
        self.name = spec.name
        self.description = info.description
        self.modalities = info.modalities
        self.version = info.version
        self.gpu_memory_mb = spec.gpu_memory_mb

    def info(self) -> PipelineInfo:
        """Listing info, with the folder's label names."""
        info: PipelineInfo = self.spec.info()
        return info

    def check(self, volume: Volume) -> None:
        """Modality and minimum slice count."""
        super().check(volume)
        if volume.shape[0] < self.spec.min_slices:
            raise PipelineNotApplicable(
                f"{self.name}: {volume.shape[0]} slice(s), at least {self.spec.min_slices} needed"
            )

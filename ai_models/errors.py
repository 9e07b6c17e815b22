"""Exceptions raised by the AI side.

Tree::

    AIModelsError
    ├── VolumeError              a series cannot be turned into one volume
    │   ├── MixedOrientationError   frames lie in different planes (localizer)
    │   ├── IrregularSpacingError   uneven / tilted slices that were not resampled
    │   ├── MissingSlicesError      a gap in the slice positions
    │   └── DuplicateSlicesError    frames repeat positions (several stacks)
    ├── PipelineNotApplicable    the series is out of scope for a pipeline
    └── ModelLoadError           weights / TorchScript / bundle could not be loaded
"""

from __future__ import annotations


class AIModelsError(Exception):
    """Base class of every error raised by :mod:`ai_models`."""


class VolumeError(AIModelsError):
    """A series cannot be assembled into a single, geometrically sound volume."""


class MixedOrientationError(VolumeError):
    """Frames of the series do not share one ImageOrientationPatient."""


class IrregularSpacingError(VolumeError):
    """Slice spacing is uneven or the stack is sheared (e.g. gantry tilt)."""


class MissingSlicesError(VolumeError):
    """The slice positions show a gap larger than the regular spacing."""


class DuplicateSlicesError(VolumeError):
    """Several frames lie at the same position (e.g. magnitude + phase, time points)."""


class PipelineNotApplicable(AIModelsError):
    """The series is outside what a pipeline is made for (the message says why)."""


class ModelLoadError(AIModelsError):
    """Model weights, a TorchScript file or a MONAI bundle could not be loaded."""

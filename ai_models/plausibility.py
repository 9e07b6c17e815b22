"""Plausibility ranges for what the pipelines measure: plausible or silent.

A segmentation network can produce a mask of any size: half a lung on a
child, both lungs and the air beside the arms on an adult, a "brain" that
runs down into the neck.  A radiologist reading "right lung 11,800 mL" next
to the images should never have to decide whether the number is a finding
or a failure, so every whole-organ measurement is checked against the range
an adult organ can have when the images cover it completely.  A value outside
it is not reported as a measurement: the finding keeps its segment and says
``Finding = Value out of range`` (DCM 114009, from CID 42 "Numeric Value
Qualifier", PS3.16) instead, and the result's notes say which value and which
range.

The ranges are deliberately wide (they flag failures, not disease) and name
their basis; :data:`RANGES` is the one table, shown in ``ai_models/README.md``.
Use :func:`check_volume` in a pipeline's post-processing::

    why = check_volume("lungs", total_ml)
    if why:
        notes.append(why)
        for f in lung_findings:
            mark_out_of_range(f)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ai_models.codes import CODES
from ai_models.types import Finding, QualitativeEvaluation

__all__ = [
    "FINDING",
    "RANGES",
    "VALUE_OUT_OF_RANGE",
    "PlausibleRange",
    "check_volume",
    "mark_out_of_range",
]

FINDING = CODES.FINDING
VALUE_OUT_OF_RANGE = CODES.VALUE_OUT_OF_RANGE
"""CID 42 "Numeric Value Qualifier": why a measurement is not given."""


@dataclass(frozen=True)
class PlausibleRange:
    """The values a measurement of one structure can plausibly take.

    Attributes
    ----------
    structure:
        What is measured, as the notes name it (``"both lungs"``).
    low, high:
        Inclusive bounds, in :attr:`unit`.
    unit:
        ``"mL"`` or ``"mm"``.
    basis:
        Where the bounds come from, one short clause for the notes and the
        model cards.
    """

    structure: str
    low: float
    high: float
    unit: str
    basis: str

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"{self.structure}: need finite low < high, got {self.low}..{self.high}"
            )

    def contains(self, value: float) -> bool:
        """Whether ``value`` is finite and within ``[low, high]``."""
        return math.isfinite(value) and self.low <= value <= self.high

    def describe(self, value: float) -> str:
        """``"both lungs 620 mL is outside the plausible 1,000-9,000 mL (...)"``."""
        return (
            f"{self.structure} {value:,.0f} {self.unit} is outside the plausible "
            f"{self.low:,.0f}-{self.high:,.0f} {self.unit} ({self.basis}): not reported"
        )


RANGES: dict[str, PlausibleRange] = {
    "lungs": PlausibleRange("both lungs", 1000.0, 9000.0, "mL", "adult lungs on CT, fully covered"),
    "brain": PlausibleRange("brain", 900.0, 1900.0, "mL", "adult brain parenchyma, fully covered"),
}
"""Structure key -> range.  Keys are what pipelines pass to :func:`check_volume`."""


def check_volume(structure: str, value_ml: float) -> str | None:
    """``None`` when ``value_ml`` is plausible for ``structure``, else the reason.

    Raises
    ------
    KeyError
        ``structure`` is not in :data:`RANGES`.
    """
    rng = RANGES[structure]
    return None if rng.contains(float(value_ml)) else rng.describe(float(value_ml))


def mark_out_of_range(finding: Finding) -> None:
    """Drop ``finding``'s measurements; say ``Finding = Value out of range`` instead."""
    finding.measurements = []
    if not any(q.value == VALUE_OUT_OF_RANGE for q in finding.qualitative_evaluations):
        finding.qualitative_evaluations.append(QualitativeEvaluation(FINDING, VALUE_OUT_OF_RANGE))

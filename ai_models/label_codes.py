"""Codes for the label names of public segmentation models (PS3.3 C.8.20.2).

nnU-Net's ``dataset.json`` and a MONAI bundle's ``metadata.json`` name their
output labels ("liver", "kidney_left", "vertebrae_L1", ...) but give no
codes; a DICOM SEG needs a Segmented Property Category and Type (CID 7150 /
7151) per segment, and a TID 1500 report a finding type and site.  This
module maps such names onto SNOMED CT codes from a shipped table, so a
TotalSegmentator-style model folder needs no per-label configuration.

The table, ``ai_models/data/anatomy_codes.csv``, is TotalSegmentator's
``totalsegmentator_snomed_mapping.csv`` (Apache License 2.0, see
``anatomy_codes.LICENSE``), kept unchanged: one row per structure with the
category, type, type modifier (laterality), anatomic region and its
modifier.  Two category codes are read as the ones this project writes
elsewhere (:data:`ai_models.codes.CODES`): SCT 123037004 as "Anatomical
Structure" (SCT 91723000, CID 7150) and SCT 49755003 with its CID 7150
meaning.

A site overrides any label, or names one the table lacks, with
``[[models.labels]]`` in its config (value, label, category, type, ...).
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources

from ai_models.codes import CODES
from ai_models.errors import ModelLoadError
from ai_models.pipelines.configured import LabelSpec
from ai_models.types import CodedConcept

__all__ = ["AnatomyCodes", "anatomy_codes", "codes_for", "label_specs", "normalise_name"]

_TABLE = "anatomy_codes.csv"

#: Category codes of the table read as this project's CID 7150 concepts.
_CATEGORY_ALIASES = {
    ("SCT", "123037004"): CODES.ANATOMICAL_STRUCTURE,
    ("SCT", "49755003"): CODES.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    ("SCT", "85756007"): CODES.TISSUE,
}


@dataclass(frozen=True)
class AnatomyCodes:
    """The codes of one structure (PS3.3 Table 10-26 Segment Description)."""

    category: CodedConcept
    type: CodedConcept
    type_modifier: CodedConcept | None = None
    anatomic_region: CodedConcept | None = None
    anatomic_region_modifier: CodedConcept | None = None


def normalise_name(name: str) -> str:
    """A label name as the table spells it: lower case, words joined by ``_``.

    Upper-case runs of vertebra names stay (``vertebrae_L1``): the table's
    lookup ignores case.
    """
    return re.sub(r"[\s\-/]+", "_", name.strip()).strip("_")


def _code(row: Mapping[str, str], prefix: str) -> CodedConcept | None:
    scheme = (row.get(f"{prefix}.CodingSchemeDesignator") or "").strip()
    value = (row.get(f"{prefix}.CodeValue") or "").strip()
    meaning = (row.get(f"{prefix}.CodeMeaning") or "").strip()
    if not (scheme and value and meaning):
        return None
    return CodedConcept(value, scheme, meaning)


@functools.lru_cache(maxsize=1)
def anatomy_codes() -> dict[str, AnatomyCodes]:
    """The shipped table: lower-cased structure name -> codes."""
    table = resources.files("ai_models").joinpath("data").joinpath(_TABLE)
    text = table.read_text(encoding="utf-8")
    out: dict[str, AnatomyCodes] = {}
    for row in csv.DictReader(io.StringIO(text)):
        name = (row.get("Structure") or "").strip()
        category = _code(row, "SegmentedPropertyCategoryCodeSequence")
        type_ = _code(row, "SegmentedPropertyTypeCodeSequence")
        if not name or category is None or type_ is None:
            continue
        category = _CATEGORY_ALIASES.get((category.scheme_designator, category.value), category)
        out[name.lower()] = AnatomyCodes(
            category=category,
            type=type_,
            type_modifier=_code(row, "SegmentedPropertyTypeModifierCodeSequence"),
            anatomic_region=_code(row, "AnatomicRegionSequence"),
            anatomic_region_modifier=_code(row, "AnatomicRegionModifierSequence"),
        )
    return out


def codes_for(name: str) -> AnatomyCodes | None:
    """The codes of a label name (``"kidney_left"``, ``"Kidney left"``), or ``None``."""
    return anatomy_codes().get(normalise_name(name).lower())


def label_specs(
    names: Mapping[int, str],
    overrides: Sequence[LabelSpec] = (),
    *,
    model: str = "model",
) -> list[LabelSpec]:
    """The :class:`LabelSpec` of each output label, by label value.

    Parameters
    ----------
    names:
        Label value -> name as the model's folder gives them (background
        left out).
    overrides:
        Labels configured by the site (``[[models.labels]]``), matched by
        value; they replace the table's codes (and may name a label the
        model's metadata lacks).
    model:
        The pipeline's name, for error messages.

    Raises
    ------
    ModelLoadError
        A label is neither in the table nor configured: writing it with a
        made-up code would tell a viewer something false.  The message
        names each such label and the config lines that fix it.
    """
    by_value = {ls.value: ls for ls in overrides}
    specs: list[LabelSpec] = []
    unknown: list[tuple[int, str]] = []
    for value in sorted(set(names) | set(by_value)):
        if value in by_value:
            specs.append(by_value[value])
            continue
        name = names[value]
        codes = codes_for(name)
        if codes is None:
            unknown.append((value, name))
            continue
        specs.append(
            LabelSpec(
                value=value,
                label=name,
                category=codes.category,
                type=codes.type,
                anatomic_region=codes.anatomic_region,
                type_modifier=codes.type_modifier,
                anatomic_region_modifier=codes.anatomic_region_modifier,
            )
        )
    if unknown:
        listed = ", ".join(f"{v} ({n!r})" for v, n in unknown)
        value, name = unknown[0]
        raise ModelLoadError(
            f"{model}: no code is known for label(s) {listed}; give each one in the config "
            f'as a [[models.labels]] table: value = {value}, label = "{name}", '
            'category = ["91723000", "SCT", "Anatomical Structure"], '
            'type = ["<code>", "SCT", "<meaning>"]'
        )
    return [replace(s) for s in specs]

"""What an SR holds, read the way OHIF reads it (for the viewer tests)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pydicom


def _items(ds: pydicom.Dataset) -> list[pydicom.Dataset]:
    return list(ds.get("ContentSequence", []))


def _code(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


@dataclass
class Finding:
    """A finding of the SR as OHIF groups it: every Measurement Group with its tracking UID."""

    tracking_uid: str
    tracking_id: str
    lines: list[str]
    """``<concept>: <value> <unit>`` of each NUM, formatted as OHIF does (2 decimals),
    then ``363698007: <site>`` of the first Finding Site, as OHIF draws them."""
    outline: np.ndarray | None
    """The first SCOORD's points (column, row), as the viewer draws it."""
    outline_image: str | None


def sr_findings(sr: pydicom.Dataset) -> list[Finding]:
    """The findings of a TID 1500 report, read from the SR the node wrote."""
    (measurements,) = [i for i in _items(sr) if _code(i) == "126010"]  # Imaging Measurements
    by_uid: dict[str, Finding] = {}
    sites: dict[str, str] = {}
    for group in _items(measurements):
        items = _items(group)
        uid = next(str(i.UID) for i in items if _code(i) == "112040")
        # The finding's name: a cross-section group's Comment, else a Tracking Identifier.
        comment = next((str(i.TextValue) for i in items if _code(i) == "121106"), None)
        identifier = next(str(i.TextValue) for i in items if _code(i) == "112039")
        finding = by_uid.setdefault(uid, Finding(uid, comment or identifier, [], None, None))
        if comment:
            finding.tracking_id = comment
        for item in items:
            if item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                measured = item.MeasuredValueSequence[0]
                value = Decimal(float(measured.NumericValue)).quantize(
                    Decimal("0.01"), rounding=ROUND_HALF_UP
                )
                unit = measured.MeasurementUnitsCodeSequence[0].CodeValue
                finding.lines.append(
                    f"{item.ConceptNameCodeSequence[0].CodeMeaning}: {value} {unit}"
                )
            if item.ValueType == "CODE" and _code(item) == "363698007":  # Finding Site
                sites.setdefault(uid, str(item.ConceptCodeSequence[0].CodeMeaning))
            if item.ValueType == "SCOORD" and finding.outline is None:
                finding.outline = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
                ref = item.ContentSequence[0].ReferencedSOPSequence[0]
                finding.outline_image = str(ref.ReferencedSOPInstanceUID)
    for uid, site in sites.items():
        by_uid[uid].lines.append(f"363698007: {site}")
    return list(by_uid.values())


SR_ANNOTATIONS_JS = """
() => {
  const out = {};
  for (const g of document.querySelectorAll('svg.svg-layer g[data-annotation-uid]')) {
    const uid = g.getAttribute('data-annotation-uid');
    const lines = [...g.querySelectorAll('tspan')].map(t => t.textContent);
    out[uid] = {lines};
  }
  const polylines = [...document.querySelectorAll('svg.svg-layer polyline')].map(p => {
    const r = p.ownerSVGElement.getBoundingClientRect();
    const n = p.getAttribute('points').trim().split(/[\\s,]+/).map(Number);
    const points = [];
    for (let i = 0; i + 1 < n.length; i += 2) points.push([n[i] + r.left, n[i + 1] + r.top]);
    return points;
  });
  return {annotations: out, polylines};
}
"""


def listed_labels(sr: pydicom.Dataset) -> list[str]:
    """Labels of the groups a Cornerstone adapter hydrates: their Comment (DCM 121106)."""
    (measurements,) = [i for i in _items(sr) if _code(i) == "126010"]
    return [
        str(i.TextValue)
        for group in _items(measurements)
        for i in _items(group)
        if _code(i) == "121106"
    ]

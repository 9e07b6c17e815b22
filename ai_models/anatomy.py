"""Is the anatomy a pipeline is made for in the image?  Checks on the pixels.

Headers lie or are empty: real scanners leave Body Part Examined blank, a
head CT arrives with a chest protocol name, a research export strips the
descriptions.  A pipeline that reports lungs on a head CT puts a confident
wrong result beside the images in the PACS, so each built-in pipeline asks
the pixels first and, when its anatomy is absent, raises
:class:`~ai_models.errors.PipelineNotApplicable` with the figures that
decided it (the job then ends ``skipped`` and nothing is sent).

The checks are coarse on purpose: a few physical measurements on a
downsampled copy of the volume (about 4 mm in plane), well under a second on a
300-slice CT, with thresholds that sit far from the values measured on the
shared real series and on the synthetic phantoms the models were trained on
(the figures are in ``ai_models/README.md``, "Applicability checks").

* :func:`ct_lung_fields` -- lung-field air on CT: air (< -400 HU) enclosed by
  the body contour in each axial slice (air connected to the outside, beside
  the arms or under the table, is never lung), on slices whose body
  cross-section is that of an adult trunk, over enough superior-inferior
  extent; its median HU tells parenchyma (about -850 HU) from the pure air
  (-1000 HU) of an air-filled phantom.  It also tells whether the lungs are
  cut by the first or last slice (partial coverage).
* :func:`mr_head` -- a head on MR: the foreground's size along the patient's
  left-right and anterior-posterior axes (a head is 12-22 cm wide and longer
  front to back than wide; a pelvis or abdomen is wider), not cut by the
  field of view; a round cross-section (a cylindrical QA phantom) is not a
  head either.

All geometry is in LPS through the volume's ``direction``; the arrays are
looked at in the canonical ``(z, y, x)`` order of
:func:`ai_models.pipelines._grid.orientation_from_direction` (superior,
posterior, patient left), so axial, coronal and sagittal series are treated
alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ai_models.types import Volume

__all__ = [
    "CtLungFields",
    "MrHead",
    "ct_lung_fields",
    "mr_head",
    "LUNG_AIR_HU",
    "MIN_LUNG_AREA_CM2",
    "MIN_LUNG_FRACTION",
    "MAX_LUNG_FRACTION",
    "MIN_TRUNK_AREA_CM2",
    "MIN_LUNG_EXTENT_MM",
    "MIN_PARENCHYMA_HU",
    "PARTIAL_END_FRACTION",
    "MAX_HEAD_WIDTH_MM",
    "MAX_HEAD_LENGTH_MM",
    "MIN_HEAD_LENGTH_MM",
    "MIN_HEAD_WIDTH_MM",
    "MIN_HEAD_AP_TO_LR",
    "MAX_BORDER_CONTACT",
    "MrIntracranial",
    "mr_head_mask",
    "mr_intracranial",
    "HEAD_FRACTION",
    "HEAD_CLOSING_MM",
    "SCALP_SKULL_MM",
    "NECK_AREA_FRACTION",
    "MAX_VERTEX_TO_BASE_MM",
]

# --------------------------------------------------------------------------- CT: lung fields

BODY_HU = -500.0
"""Body contour threshold (HU): skin, fat and everything denser."""

LUNG_AIR_HU = -400.0
"""Air threshold (HU) inside the body contour (lung parenchyma is about -850)."""

MIN_LUNG_AREA_CM2 = 20.0
"""A slice shows lung fields when the enclosed air covers at least this much.
Paranasal sinuses and the trachea stay below it (measured: at most 6 cm2 on the
shared head CT, 1 cm2 on synthetic heads; chest phantoms 40-180 cm2)."""

MIN_LUNG_FRACTION = 0.06
"""... and at least this fraction of the body cross-section."""

MAX_LUNG_FRACTION = 0.75
"""Enclosed air over this fraction of the body cross-section is an air-filled
object (a phantom shell), not a chest: lungs leave the chest wall, the
mediastinum and the spine (measured: chest phantoms at most 0.33; air-filled
shells up to 0.75 at their widest slices and 0.9 in real ones)."""

MIN_TRUNK_AREA_CM2 = 250.0
"""Median body cross-section (cm2) over the lung slices: an adult trunk is
300-900 cm2, an adult head at most about 250 cm2 (measured: shared head CT
at most 85 cm2 above -500 HU, synthetic heads 205 cm2, chest phantoms
400-600 cm2, the shared abdominal CT 910 cm2)."""

MIN_LUNG_EXTENT_MM = 30.0
"""Lung slices must span at least this superior-inferior extent (mm)."""

MIN_PARENCHYMA_HU = -960.0
"""The median HU of the enclosed air must be above this: lung parenchyma holds
vessels and interstitium (measured: -790 to -810 on chest phantoms, -808 on
the lung bases of the shared abdominal CT); an air-filled phantom is pure air
(measured: -989 to -999)."""

PARTIAL_END_FRACTION = 0.25
"""The lungs are cut by the volume's first or last slice (partial coverage)
when that slice's lung-field area is at least this fraction of the largest."""

_WORK_MM = 4.0
"""In-plane sampling of the checks (mm)."""

_WORK_Z_MM = 2.0
"""Finest superior-inferior sampling the checks look at (mm)."""


@dataclass(frozen=True)
class CtLungFields:
    """What :func:`ct_lung_fields` measured (areas in cm2, lengths in mm).

    Attributes
    ----------
    extent_mm:
        Superior-inferior extent of the longest run of lung slices.
    max_area_cm2:
        Largest enclosed-air area on one slice.
    max_fraction:
        Largest enclosed-air fraction of the body cross-section on a slice
        that shows lung fields.
    trunk_area_cm2:
        Median body cross-section over the lung slices (0 without any).
    median_hu:
        Median HU of the enclosed air on the lung slices (0 without any).
    cut_superior, cut_inferior:
        The lung fields reach the volume's superior / inferior end (their
        area there is at least :data:`PARTIAL_END_FRACTION` of the largest).
    """

    extent_mm: float
    max_area_cm2: float
    max_fraction: float
    trunk_area_cm2: float
    median_hu: float
    cut_superior: bool
    cut_inferior: bool
    interior: np.ndarray | None = field(default=None, repr=False, compare=False)
    """What the body contour encloses, slice by slice, on the working copy
    (canonical ``(z, y, x)``, every ``steps``-th voxel)."""
    steps: tuple[int, int, int] = (1, 1, 1)

    def interior_on(self, shape: tuple[int, ...]) -> np.ndarray:
        """:attr:`interior` on the full canonical grid of ``shape`` (nearest cell).

        Everything is inside when no interior was measured.
        """
        if self.interior is None:
            return np.ones(shape, bool)
        idx = [
            np.minimum(np.arange(n) // k, m - 1)
            for n, k, m in zip(shape, self.steps, self.interior.shape, strict=True)
        ]
        return self.interior[np.ix_(*idx)]

    @property
    def partial(self) -> bool:
        """The lungs are cut by the first or last slice."""
        return self.cut_superior or self.cut_inferior

    def coverage(self) -> str:
        """``"complete"``, or which end cuts the lungs, in words."""
        ends = [n for n, c in (("apices", self.cut_superior), ("bases", self.cut_inferior)) if c]
        return "complete" if not ends else f"partial (the {' and '.join(ends)} are cut off)"

    def reasons(self) -> list[str]:
        """Why these are not the lung fields of a chest (empty: they are)."""
        if self.max_area_cm2 < MIN_LUNG_AREA_CM2:
            return [
                f"no lung fields: the largest air region inside the body contour is "
                f"{self.max_area_cm2:.0f} cm2 on one slice (at least "
                f"{MIN_LUNG_AREA_CM2:.0f} cm2 expected)"
            ]
        out: list[str] = []
        if self.max_fraction > MAX_LUNG_FRACTION:
            out.append(
                f"air fills {100 * self.max_fraction:.0f}% of the body cross-section "
                f"(lungs at most {100 * MAX_LUNG_FRACTION:.0f}%): an air-filled object, not a chest"
            )
        if self.median_hu <= MIN_PARENCHYMA_HU:
            out.append(
                f"the air inside the body is uniform (median {self.median_hu:.0f} HU), "
                f"not lung parenchyma (above {MIN_PARENCHYMA_HU:.0f} HU)"
            )
        if self.trunk_area_cm2 < MIN_TRUNK_AREA_CM2:
            out.append(
                f"the body cross-section where the air lies is {self.trunk_area_cm2:.0f} cm2, "
                f"smaller than an adult chest ({MIN_TRUNK_AREA_CM2:.0f} cm2 or more)"
            )
        if self.extent_mm < MIN_LUNG_EXTENT_MM:
            out.append(
                f"lung fields over only {self.extent_mm:.0f} mm superior-inferior "
                f"(at least {MIN_LUNG_EXTENT_MM:.0f} mm needed)"
            )
        return out


def _canonical(volume: Volume) -> tuple[np.ndarray, np.ndarray, int]:
    """The array in canonical ``(z, y, x)`` order, its spacing, and the slice axis."""
    from ai_models.pipelines._grid import orientation_from_direction

    orient = orientation_from_direction(volume.direction)
    arr = orient.to_canonical(volume.array)
    spacing = orient.spacing(volume.spacing)
    return arr, spacing, int(orient.perm.index(0))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n <= 1:
        return mask.astype(bool, copy=False)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.asarray(lab == int(sizes.argmax()))


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """Fill holes in each axial slice (what the body contour encloses)."""
    out = np.empty_like(mask)
    for z in range(mask.shape[0]):
        out[z] = ndimage.binary_fill_holes(mask[z])
    return out


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def ct_lung_fields(volume: Volume) -> CtLungFields:
    """Measure the lung fields of a CT volume (HU) on a ~4 mm working copy.

    Steps, on the canonical axial slices: body = the largest connected
    region above :data:`BODY_HU` (after a 3x3 in-plane opening, which drops
    the table and blankets); each slice's body contour is filled; enclosed
    air = filled contour and below :data:`LUNG_AIR_HU` (so air outside the
    patient, beside the arms or under the table, never counts).  A slice
    shows lung fields when that air covers :data:`MIN_LUNG_AREA_CM2` and
    :data:`MIN_LUNG_FRACTION` of the body cross-section.

    Returns
    -------
    CtLungFields
        The measurements; :meth:`CtLungFields.reasons` says whether they are
        a chest's.
    """
    hu, sp, _ = _canonical(volume)
    sz, sy, sx = (float(v) for v in sp)
    kz = max(1, int(round(_WORK_Z_MM / max(sz, 1e-3))))
    ky = max(1, int(round(_WORK_MM / max(sy, 1e-3))))
    kx = max(1, int(round(_WORK_MM / max(sx, 1e-3))))
    h = np.asarray(hu[::kz, ::ky, ::kx], dtype=np.float32)
    px_cm2 = sy * ky * sx * kx / 100.0
    body = ndimage.binary_opening(h > BODY_HU, np.ones((1, 3, 3), bool))
    body = _largest_component(body)
    filled = _fill_slices(body)
    air = filled & (h < LUNG_AIR_HU)
    body_area = filled.sum(axis=(1, 2)) * px_cm2
    air_area = air.sum(axis=(1, 2)) * px_cm2
    fraction = air_area / np.maximum(body_area, 1e-6)
    lung = (air_area >= MIN_LUNG_AREA_CM2) & (fraction >= MIN_LUNG_FRACTION)
    if not lung.any():
        return CtLungFields(
            extent_mm=0.0,
            max_area_cm2=float(air_area.max(initial=0.0)),
            max_fraction=0.0,
            trunk_area_cm2=0.0,
            median_hu=0.0,
            cut_superior=False,
            cut_inferior=False,
            interior=filled,
            steps=(kz, ky, kx),
        )
    largest = float(air_area[lung].max())
    end_min = PARTIAL_END_FRACTION * largest
    return CtLungFields(
        extent_mm=_longest_run(lung) * sz * kz,
        max_area_cm2=float(air_area.max()),
        max_fraction=float(fraction[lung].max()),
        trunk_area_cm2=float(np.median(body_area[lung])),
        median_hu=float(np.median(h[air & lung[:, None, None]])),
        cut_superior=bool(lung[-1] and air_area[-1] >= end_min),
        cut_inferior=bool(lung[0] and air_area[0] >= end_min),
        interior=filled,
        steps=(kz, ky, kx),
    )


# --------------------------------------------------------------------------- MR: head

MAX_HEAD_WIDTH_MM = 220.0
"""Largest left-right extent of a head (mm); an adult head is 13-17 cm wide
with the scalp, a pelvis or abdomen 30-45 cm."""

MIN_HEAD_WIDTH_MM = 90.0
"""Smallest left-right extent of a head (mm; synthetic heads: 106 mm or more)."""

MIN_HEAD_LENGTH_MM = 130.0
"""Smallest anterior-posterior extent of a head (mm); an adult head is 17-21 cm
long (synthetic heads: 148 mm or more), a knee or an ankle about 10-12 cm."""

MAX_HEAD_LENGTH_MM = 260.0
"""Largest anterior-posterior extent of a head (mm)."""

MIN_HEAD_AP_TO_LR = 1.0
"""A head is longer front to back than it is wide: the cephalic index (width /
length) of adults is 0.70-0.90, so length / width is 1.1-1.4 (measured on
synthetic heads: 1.03-1.59, the lowest on oblique slices).  The pelvis and
abdomen are wider than deep (the shared prostate MR: 0.69) and a cylindrical QA
phantom is round (the shared Philips phantom: 0.96).  Checked where both axes
lie in the image plane."""

MAX_BORDER_CONTACT = 0.2
"""The head lies inside the field of view: the foreground touches at most
this fraction of the left-right and anterior-posterior image borders (a
trunk imaged with a small field of view fills them)."""


@dataclass(frozen=True)
class MrHead:
    """What :func:`mr_head` measured (mm).

    Attributes
    ----------
    width_mm, length_mm:
        Foreground extent along left-right and anterior-posterior (``nan``
        where that axis is the slice axis and the coverage decides it).
    ap_to_lr:
        ``length_mm / width_mm`` where both lie in the image plane (``nan``
        otherwise).
    border_contact:
        Fraction of the in-plane image border (left-right and
        anterior-posterior edges) that the foreground touches.
    """

    width_mm: float
    length_mm: float
    ap_to_lr: float
    border_contact: float

    def reasons(self) -> list[str]:
        """Why this is not a head (empty: it is)."""
        out: list[str] = []
        if self.border_contact > MAX_BORDER_CONTACT:
            out.append(
                f"the body fills {100 * self.border_contact:.0f}% of the image border: it is "
                "larger than the field of view, not a head"
            )
        if np.isfinite(self.width_mm) and not (
            MIN_HEAD_WIDTH_MM <= self.width_mm <= MAX_HEAD_WIDTH_MM
        ):
            out.append(
                f"the imaged body is {self.width_mm:.0f} mm wide (a head: "
                f"{MIN_HEAD_WIDTH_MM:.0f}-{MAX_HEAD_WIDTH_MM:.0f} mm)"
            )
        if np.isfinite(self.length_mm) and not (
            MIN_HEAD_LENGTH_MM <= self.length_mm <= MAX_HEAD_LENGTH_MM
        ):
            out.append(
                f"the imaged body is {self.length_mm:.0f} mm front to back (a head: "
                f"{MIN_HEAD_LENGTH_MM:.0f}-{MAX_HEAD_LENGTH_MM:.0f} mm)"
            )
        if np.isfinite(self.ap_to_lr) and self.ap_to_lr < MIN_HEAD_AP_TO_LR:
            out.append(
                f"the cross-section is not a head's (front-to-back / width "
                f"{self.ap_to_lr:.2f}; a head: {MIN_HEAD_AP_TO_LR:.2f} or more)"
            )
        return out


def mr_head(volume: Volume) -> MrHead:
    """Measure the imaged body of an MR volume (see the module docstring).

    The foreground is the largest connected region above 15 % of the 99.5th
    intensity percentile, holes filled slice by slice; its extents are
    measured along the canonical axes (left-right ``x``, anterior-posterior
    ``y``).  An extent along the slice axis is left out (``nan``): it is the
    coverage, not the anatomy.
    """
    arr, sp, slice_axis = _canonical(volume)
    steps = [max(1, int(round(_WORK_MM / max(float(s), 1e-3)))) for s in sp]
    steps[slice_axis] = 1
    a = np.asarray(arr[:: steps[0], :: steps[1], :: steps[2]], dtype=np.float32)
    step_sp = np.asarray(sp, float) * np.asarray(steps, float)
    nan = float("nan")
    top = float(np.percentile(a, 99.5)) if a.size else 0.0
    if top <= 0:
        return MrHead(nan, nan, nan, 0.0)
    fg = ndimage.binary_opening(a > 0.15 * top, np.ones((3, 3, 3), bool))
    fg = _largest_component(fg)
    if not fg.any():
        return MrHead(nan, nan, nan, 0.0)
    # fill holes in the image planes (slice by slice along the slice axis)
    fg = np.moveaxis(_fill_slices(np.moveaxis(fg, slice_axis, 0)), 0, slice_axis)

    def extent(axis: int) -> float:
        if axis == slice_axis:
            return nan
        other = tuple(i for i in range(3) if i != axis)
        idx = np.flatnonzero(fg.any(axis=other))
        return float((idx[-1] - idx[0] + 1) * step_sp[axis])

    width, length = extent(2), extent(1)
    ratio = length / width if np.isfinite(width) and np.isfinite(length) and width > 0 else nan
    edges = []
    for axis in (1, 2):
        if axis == slice_axis:
            continue
        edges += [np.take(fg, 0, axis=axis).ravel(), np.take(fg, -1, axis=axis).ravel()]
    contact = float(np.concatenate(edges).mean()) if edges else 0.0
    return MrHead(width, length, ratio, contact)


# --------------------------------------------------------------------------- MR: intracranial space

HEAD_FRACTION = 0.08
"""Head mask threshold: this fraction of the 99.5th intensity percentile.  Lower
than :func:`mr_head`'s 15 %: a head mask that is too small would move the skin
inwards and the intracranial space with it, into the brain."""

SCALP_SKULL_MM = 6.0
"""Depth below the skin (mm) that is scalp and skull, never brain: adult scalp
3-8 mm plus skull 4-10 mm (the thin temporal squama lies under the temporalis
muscle), plus 1-4 mm of extra-axial CSF before the cortex.  Synthetic heads:
scalp + skull + CSF 9.5-20 mm."""

NECK_AREA_FRACTION = 0.5
"""The neck starts where the head's axial cross-section, going down from its
largest, first falls below this fraction of the largest (an adult head is about
170-220 cm2 at the temporal lobes; the neck below the jaw about half that, the
face and the occiput keep the cross-section above 0.8 of it at the foramen
magnum)."""

MAX_VERTEX_TO_BASE_MM = 175.0
"""Nothing more than this far (mm, superior-inferior) below the top of the
head's skin is brain: adult skin vertex to foramen magnum is 130-155 mm
(synthetic heads: skin vertex to the lowest brain voxel at most 145 mm,
poses included).  Applied only when the top of the head is in the volume."""

HEAD_CLOSING_MM = 5.0
"""Gaps in the head's outline up to about twice this (mm) are closed before
its holes are filled: a thin scalp that noise, a dark bias field or a low
threshold breaks would otherwise let the dark skull and CSF count as outside
air, and the skin depth of the brain would be measured from them."""

_HEAD_WORK_MM = 2.0
"""Sampling of the head and intracranial masks (mm)."""


@dataclass(frozen=True)
class MrIntracranial:
    """The head and the intracranial space of an MR volume (canonical ``(z, y, x)``).

    Masks are on a working copy (every ``steps``-th voxel, about 2 mm); use
    :meth:`intracranial_on` for the full canonical grid.

    Attributes
    ----------
    head:
        The head: largest connected foreground region, holes filled slice by
        slice in the three canonical planes.
    intracranial:
        Head voxels at least :data:`SCALP_SKULL_MM` below the skin and above
        :attr:`inferior_limit`.
    inferior_limit:
        Working-copy ``z`` index at and below which nothing is brain (the neck),
        ``None`` when no limit was found.
    limit_reason:
        How the limit was found, in words (empty without one).
    head_top_in_volume:
        The top of the head lies below the volume's superior end.
    """

    head: np.ndarray = field(repr=False)
    intracranial: np.ndarray = field(repr=False)
    steps: tuple[int, int, int]
    inferior_limit: int | None
    limit_reason: str
    head_top_in_volume: bool

    def intracranial_on(self, shape: tuple[int, ...]) -> np.ndarray:
        """:attr:`intracranial` on the full canonical grid of ``shape`` (nearest cell)."""
        idx = [
            np.minimum(np.arange(n) // k, m - 1)
            for n, k, m in zip(shape, self.steps, self.intracranial.shape, strict=True)
        ]
        return self.intracranial[np.ix_(*idx)]


def _fill_planes(mask: np.ndarray) -> np.ndarray:
    """Holes filled slice by slice along each of the three axes (union)."""
    out = mask.copy()
    for axis in range(3):
        moved = np.moveaxis(mask, axis, 0)
        out |= np.moveaxis(_fill_slices(moved), 0, axis)
    return out


def _ball(step_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    """A ball of ``radius_mm`` on a grid of ``step_mm`` (at least one voxel each way)."""
    half = [max(1, int(radius_mm // float(s))) for s in step_mm]
    grid = np.ogrid[tuple(slice(-n, n + 1) for n in half)]
    return np.asarray(
        sum((g * float(s) / radius_mm) ** 2 for g, s in zip(grid, step_mm, strict=True)) <= 1.0
    )


def mr_head_mask(arr: np.ndarray, step_mm: np.ndarray | None = None) -> np.ndarray:
    """The head in a canonical MR array: intensity, connectivity, holes filled.

    Foreground above :data:`HEAD_FRACTION` of the 99.5th percentile, its
    largest connected region (noise in the air falls away; no opening, which
    would erase a scalp thinner than three voxels across thick slices), closed
    with a ball of :data:`HEAD_CLOSING_MM` (gaps in a thin or dark scalp; the
    volume's faces are not closed off), holes filled in 3D and
    slice-wise in all three planes (a head cut by the field of view is open
    towards the cut).
    """
    a = np.asarray(arr, dtype=np.float32)
    top = float(np.percentile(a, 99.5)) if a.size else 0.0
    if top <= 0:
        return np.zeros(a.shape, bool)
    fg = _largest_component(a > HEAD_FRACTION * top)
    if not fg.any():
        return fg
    ball = _ball(np.ones(3) if step_mm is None else np.asarray(step_mm, float), HEAD_CLOSING_MM)
    pad = [(n // 2, n // 2) for n in ball.shape]
    closed = ndimage.binary_closing(np.pad(fg, pad, mode="edge"), ball)
    fg |= closed[tuple(slice(p, p + n) for (p, _), n in zip(pad, fg.shape, strict=True))]
    fg = ndimage.binary_fill_holes(fg)
    return _fill_planes(fg)


def _neck_level(area: np.ndarray) -> int | None:
    """Highest ``z`` below the largest cross-section where ``area`` falls below
    :data:`NECK_AREA_FRACTION` of it (``None``: the neck is not in the volume)."""
    if not area.size or area.max() <= 0:
        return None
    smooth = ndimage.uniform_filter1d(area.astype(float), 3, mode="nearest")
    z_max = int(np.argmax(smooth))
    below = np.flatnonzero(smooth[:z_max] < NECK_AREA_FRACTION * smooth[z_max])
    return int(below[-1]) if below.size else None


def mr_intracranial(volume: Volume) -> MrIntracranial:
    """Head mask and intracranial space of an MR head volume (see :class:`MrIntracranial`).

    The depth below the skin is a Euclidean distance in mm (anisotropic
    voxels and any plane alike, via the canonical orientation); the faces of
    the volume are not skin, so a head cut by the field of view keeps its
    interior.  Inferior limit: the higher of the neck level (cross-section
    narrowing, :data:`NECK_AREA_FRACTION`) and :data:`MAX_VERTEX_TO_BASE_MM`
    below the top of the head (when that is in the volume).
    """
    arr, sp, _ = _canonical(volume)
    steps = tuple(max(1, int(round(_HEAD_WORK_MM / max(float(s), 1e-3)))) for s in sp)
    a = np.asarray(arr[:: steps[0], :: steps[1], :: steps[2]], dtype=np.float32)
    step_sp = np.asarray(sp, float) * np.asarray(steps, float)
    head = mr_head_mask(a, step_sp)
    if not head.any():
        return MrIntracranial(head, head.copy(), steps, None, "", False)  # type: ignore[arg-type]
    depth = ndimage.distance_transform_edt(head, sampling=step_sp)
    inside = head & (depth >= SCALP_SKULL_MM)
    zs = np.flatnonzero(head.any(axis=(1, 2)))
    top_in = bool(zs[-1] < head.shape[0] - 1)
    limits: list[tuple[int, str]] = []
    neck = _neck_level(head.sum(axis=(1, 2)) * step_sp[1] * step_sp[2])
    if neck is not None:
        limits.append((neck, "neck: the head's cross-section narrows"))
    if top_in:
        z_cap = int(np.floor(zs[-1] - MAX_VERTEX_TO_BASE_MM / step_sp[0]))
        if z_cap >= 0:
            limits.append((z_cap, f"{MAX_VERTEX_TO_BASE_MM:.0f} mm below the top of the head"))
    limit, reason = max(limits) if limits else (None, "")
    if limit is not None:
        inside[: limit + 1] = False
    return MrIntracranial(head, inside, steps, limit, reason, top_in)  # type: ignore[arg-type]

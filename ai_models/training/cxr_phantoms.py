"""Synthetic frontal chest radiograph phantoms with finding labels.

Each phantom is a projection-like image built from soft-edged shapes: the
trunk with neck and shoulders, two lung fields (dark) with vessel markings
that branch out from the hila, the heart and mediastinum, the spine and
trachea, posterior and anterior ribs and the clavicles, the diaphragm domes
with the liver and a gastric bubble below them.  Four findings can be drawn
in, each independently:

* **lung opacity** -- one to three soft, irregular blobs of increased density
  inside a lung field;
* **pleural effusion** -- fluid filling the lower hemithorax up to a meniscus
  that rises laterally and blunts the costophrenic angle (one or both sides);
* **cardiomegaly** -- a heart wider than 0.55 of the thorax (cardiothoracic
  ratio; normal hearts are drawn at 0.36-0.49);
* **pneumothorax** -- the lung retracted from the lateral and apical chest
  wall: air without lung markings between the wall and a thin visceral
  pleural line.

Images are in *presentation* orientation and polarity, the way a viewer shows
a PA chest film: patient right on the image left, head up, dense (more
attenuating) tissue bright, values in ``0..1`` (MONOCHROME2 sense).  The
acquisition varies: patient size, inspiration depth, position, small
rotation, exposure, the grey-scale processing curve (gamma, contrast, edge
enhancement as CR/DX systems apply it), blur, quantum-like noise, collimation
borders and lead markers.

On top of that, each phantom gets seeded random **variants of what real
radiographs carry** (:data:`VARIANT_PROBABILITY` gives how often each is
drawn), from a child generator (:func:`ai_models.training.film.variant_rng`)
so that a seed keeps its anatomy and labels:

* **patient tilt** -- an in-plane rotation of up to
  :data:`MAX_TILT_DEG` degrees;
* **axial rotation** -- the patient turned about the long axis: the
  mediastinum, heart, hila and trachea shifted towards one side, the spinous
  processes less, the clavicles more (their medial ends no longer
  equidistant from the spine), one lung field narrower than the other;
* **film / detector texture** -- grain, non-uniform density, scanner lines
  (:func:`ai_models.training.film.film_texture`);
* **burned-in side marker** -- a bright block with a dark "R" or "L", or a
  bright letter, near an upper or lateral edge;
* **burned-in text strip** -- a technique / annotation label
  (``"PA ERECT 120KV"``) along the top or bottom edge, bright, sometimes on
  a dark band;
* **collimation** -- up to four collimated borders with slightly tilted,
  soft edges, dark or bright.

:func:`random_lateral_cxr` draws **lateral** chest radiographs in the same
style.  They are not a training class: the model reads frontal chests only,
and the pipeline must refuse a lateral view (the tests measure which check
does it).

Labels follow :data:`FINDINGS` (order of the network outputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ai_models.training.film import film_texture, random_label, text_mask, variant_rng

__all__ = [
    "CARDIOMEGALY",
    "EFFUSION",
    "FINDINGS",
    "OPACITY",
    "MAX_TILT_DEG",
    "PNEUMOTHORAX",
    "VARIANT_PROBABILITY",
    "CxrPhantom",
    "random_cxr_phantom",
    "random_lateral_cxr",
]

OPACITY, EFFUSION, CARDIOMEGALY, PNEUMOTHORAX = 0, 1, 2, 3
"""Indices of the findings in label vectors and network outputs."""

FINDINGS: tuple[str, ...] = ("lung opacity", "pleural effusion", "cardiomegaly", "pneumothorax")
"""Finding names, in label order."""

NORMAL_CTR = (0.36, 0.49)
"""Cardiothoracic ratio range of a normal heart."""

ENLARGED_CTR = (0.56, 0.70)
"""Cardiothoracic ratio range of an enlarged heart (cardiomegaly)."""

MAX_TILT_DEG = 6.0
"""Largest in-plane patient tilt drawn by the tilt variant (degrees)."""

MAX_AXIAL_SHIFT = 0.05
"""Largest mediastinal shift of the axial-rotation variant (normalised x; the
image is 2 wide)."""

VARIANT_PROBABILITY: dict[str, float] = {
    "tilt": 0.5,
    "axial_rotation": 0.5,
    "film_texture": 0.6,
    "side_marker": 0.6,
    "text_strip": 0.4,
    "collimation": 0.35,
}
"""How often each variant of real radiographs is drawn (independently)."""


@dataclass
class CxrPhantom:
    """A synthetic chest radiograph and what is drawn in it.

    Attributes
    ----------
    image:
        ``(rows, cols)`` float32 in ``0..1``, bright = dense (presentation).
    labels:
        ``(4,)`` float32, 1 where the finding of :data:`FINDINGS` is present.
    ctr:
        The cardiothoracic ratio drawn.
    sides:
        Per finding, the side(s) it was drawn on (``"R"``/``"L"``, patient
        sides); empty for cardiomegaly and absent findings.
    variants:
        The variants of :data:`VARIANT_PROBABILITY` drawn, with their
        parameters (``{"tilt": degrees, "axial_rotation": shift,
        "side_marker": "R", ...}``).
    """

    image: np.ndarray
    labels: np.ndarray
    ctr: float
    sides: dict[str, tuple[str, ...]] = field(default_factory=dict)
    variants: dict[str, Any] = field(default_factory=dict)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _soft(signed_dist: np.ndarray, width: float) -> np.ndarray:
    """0..1 inside-ness from a signed distance (negative inside), soft edge."""
    return _smoothstep(0.5 - signed_dist / max(width, 1e-6))


@dataclass
class _Anatomy:
    """Geometry of one phantom in normalised image coordinates.

    ``x`` runs from -1 (image left, patient right) to +1, ``y`` from -1 (top)
    to +1.  Per side ``s`` (0 = patient right = image left, 1 = patient left).
    """

    thorax_half: float
    apex_y: float
    dome_y: tuple[float, float]
    dome_h: tuple[float, float]
    lat_x: tuple[float, float]
    med_x: tuple[float, float]
    hilum: tuple[tuple[float, float], tuple[float, float]]
    heart_cx: float
    heart_cy: float
    heart_rx: float
    heart_ry: float
    ctr: float


def _lung_sdf(x: np.ndarray, y: np.ndarray, a: _Anatomy, s: int) -> np.ndarray:
    """Approximate signed distance to the lung field of side ``s`` (negative inside)."""
    sign = -1.0 if s == 0 else 1.0
    xs = x * sign  # mirrored: lateral is +xs
    lat, med = a.lat_x[s], a.med_x[s]
    top, dome, dome_h = a.apex_y, a.dome_y[s], a.dome_h[s]
    # lateral border: a rounded curve from the apex to the costophrenic angle
    t = np.clip((y - top) / (dome - top), 0.0, 1.0)
    lat_border = med + (lat - med) * np.sqrt(np.clip(t * 1.25, 0.0, 1.0)) ** 0.8
    d_lat = xs - lat_border
    d_med = med - xs
    # diaphragm dome: highest at mid-hemithorax, deepest at the lateral sulcus
    u = (xs - (med + lat) / 2.0) / max((lat - med) / 2.0, 1e-3)
    dome_curve = dome - dome_h * (1.0 - np.clip(u, -1.2, 1.0) ** 2)
    d_dome = y - dome_curve
    d_top = top - y
    return np.maximum.reduce([d_lat, d_med, d_dome, d_top])


def _heart_sdf(x: np.ndarray, y: np.ndarray, a: _Anatomy) -> np.ndarray:
    r = np.sqrt(((x - a.heart_cx) / a.heart_rx) ** 2 + ((y - a.heart_cy) / a.heart_ry) ** 2)
    return (r - 1.0) * min(a.heart_rx, a.heart_ry)


def _random_anatomy(rng: np.random.Generator, cardiomegaly: bool) -> _Anatomy:
    thorax_half = float(rng.uniform(0.70, 0.86))
    apex_y = float(rng.uniform(-0.80, -0.66))
    base = float(rng.uniform(0.30, 0.52))  # inspiration depth
    dome_y = (base - float(rng.uniform(0.02, 0.07)), base)  # right dome higher
    dome_h = (float(rng.uniform(0.10, 0.20)), float(rng.uniform(0.08, 0.18)))
    lat = thorax_half - float(rng.uniform(0.04, 0.08))
    lat_x = (lat + float(rng.normal(0, 0.015)), lat + float(rng.normal(0, 0.015)))
    med_x = (float(rng.uniform(0.07, 0.12)), float(rng.uniform(0.07, 0.12)))
    hilum = (
        (-(med_x[0] + 0.10), float(rng.uniform(-0.20, -0.08))),
        (med_x[1] + 0.10, float(rng.uniform(-0.22, -0.10))),
    )
    ctr = float(rng.uniform(*(ENLARGED_CTR if cardiomegaly else NORMAL_CTR)))
    heart_w = ctr * 2.0 * thorax_half
    left_frac = float(rng.uniform(0.60, 0.70))  # two thirds lie left of the midline
    heart_rx = heart_w / 2.0
    heart_cx = heart_w * left_frac - heart_rx
    heart_ry = float(rng.uniform(0.20, 0.27)) * (1.0 + 0.6 * (ctr - 0.42))
    heart_cy = base - heart_ry * float(rng.uniform(0.45, 0.70))
    return _Anatomy(
        thorax_half,
        apex_y,
        dome_y,
        dome_h,
        lat_x,
        med_x,
        hilum,
        heart_cx,
        heart_cy,
        heart_rx,
        heart_ry,
        ctr,
    )


def _draw_lines(
    shape: tuple[int, int],
    segments: list[tuple[tuple[float, float], tuple[float, float], float, float]],
) -> np.ndarray:
    """Rasterise ``(p0, p1, width_px, value)`` segments (pixel coordinates, max blend)."""
    img = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(img)
    for (x0, y0), (x1, y1), w, v in sorted(segments, key=lambda s: s[3]):
        draw.line([(x0, y0), (x1, y1)], fill=float(v), width=max(1, int(round(w))))
    return np.asarray(img, dtype=np.float32)


def _vessels(rng: np.random.Generator, a: _Anatomy, shape: tuple[int, int]) -> np.ndarray:
    """Branching vessel markings from both hila (pixel map, 0..1)."""
    rows, cols = shape
    to_px = lambda x, y: ((x + 1.0) * 0.5 * (cols - 1), (y + 1.0) * 0.5 * (rows - 1))  # noqa: E731
    segs: list[tuple[tuple[float, float], tuple[float, float], float, float]] = []
    scale = cols / 256.0
    for s in (0, 1):
        hx, hy = a.hilum[s]
        sign = -1.0 if s == 0 else 1.0
        stack = []
        for _ in range(int(rng.integers(7, 11))):
            ang = float(rng.uniform(-0.75, 0.95)) * np.pi  # mostly lateral, up and down
            dx, dy = np.cos(ang) * sign, np.sin(ang)
            if dx * sign < -0.2:
                dx = -dx
            stack.append((hx, hy, dx, dy, 3.2 * scale, 0.9, 0))
        while stack:
            x, y, dx, dy, w, v, depth = stack.pop()
            length = float(rng.uniform(0.06, 0.14)) * (1.0 - 0.12 * depth)
            nx, ny = x + dx * length, y + dy * length
            segs.append((to_px(x, y), to_px(nx, ny), w, v))
            if depth < 5 and w > 0.6 * scale:
                for _ in range(2 if rng.random() < 0.7 else 1):
                    turn = float(rng.normal(0.0, 0.45))
                    c, sn = np.cos(turn), np.sin(turn)
                    ndx, ndy = dx * c - dy * sn, dx * sn + dy * c
                    stack.append((nx, ny, ndx, ndy, w * 0.72, v * 0.85, depth + 1))
    img = _draw_lines(shape, segs)
    return ndimage.gaussian_filter(img, 0.6 * scale)


def _ribs(
    rng: np.random.Generator, a: _Anatomy, shape: tuple[int, int], clavicle_shift: float = 0.0
) -> np.ndarray:
    """Posterior and anterior ribs and clavicles as bands with brighter cortex.

    ``clavicle_shift`` moves both clavicles sideways (normalised x), as an
    axially rotated patient shows them.
    """
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    x = xx / (cols - 1) * 2.0 - 1.0
    y = yy / (rows - 1) * 2.0 - 1.0
    out = np.zeros(shape, np.float32)
    n = int(rng.integers(9, 12))
    span = (a.dome_y[1] + 0.15) - (a.apex_y - 0.05)
    width = span / n * float(rng.uniform(0.42, 0.55))
    ax = np.abs(x)
    for i in range(n):
        y0 = a.apex_y - 0.05 + span * (i + 0.5) / n
        # posterior rib: from the spine laterally, curving down
        rx = np.clip(ax - 0.05, 0.0, None)
        curve = y0 - 0.10 * rx + 0.55 * rx**2
        d = np.abs(y - curve) - width / 2.0
        band = _soft(d, width * 0.35) * (ax > 0.05) * (ax < a.thorax_half + 0.02)
        cortex = _soft(np.abs(d + width * 0.12) - width * 0.1, width * 0.2) * band
        out += 0.045 * band + 0.03 * cortex
        # anterior rib: from the lateral wall going medially and down (fainter)
        if i < n - 2:
            curve_a = y0 + 0.25 - 0.30 * np.clip(a.thorax_half - ax, 0.0, None) ** 1.2
            da = np.abs(y - curve_a) - width * 0.4
            band_a = _soft(da, width * 0.4) * (ax > 0.25) * (ax < a.thorax_half)
            out += 0.02 * band_a
    # clavicles
    for sign in (-1.0, 1.0):
        cy = a.apex_y + float(rng.uniform(-0.04, 0.06))
        xc = sign * (x - clavicle_shift)
        curve = cy + 0.12 * (xc - 0.1) - 0.10 * (xc - 0.4) ** 2
        d = np.abs(y - curve) - 0.035
        m = (xc > 0.06) * (xc < a.thorax_half + 0.08)
        out += 0.08 * _soft(d, 0.02) * m
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return n / (float(n.std()) + 1e-6)


def _blob(
    rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float
) -> np.ndarray:
    """Irregular soft blob (sum of a few Gaussians) with peak ~1."""
    acc = np.zeros_like(x)
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = rng.normal(0, r * 0.35, size=2)
        rr = r * float(rng.uniform(0.5, 1.0))
        acc += np.exp(-(((x - cx - ox) ** 2 + (y - cy - oy) ** 2) / (2 * rr * rr)))
    return np.clip(acc / max(float(acc.max()), 1e-6) * 1.3, 0.0, 1.0)


def random_cxr_phantom(
    rng: np.random.Generator,
    size: int = 320,
    labels: tuple[bool, bool, bool, bool] | None = None,
    prevalence: float = 0.4,
    variants: Mapping[str, bool] | None = None,
) -> CxrPhantom:
    """Draw one phantom.

    Parameters
    ----------
    rng:
        The only source of randomness.
    size:
        Length of the longer image side in pixels (the other side is drawn
        with an aspect ratio of 0.85-1.0).
    labels:
        Which findings to draw (in :data:`FINDINGS` order); default: each
        independently with probability ``prevalence``.
    prevalence:
        Probability of each finding when ``labels`` is not given.
    variants:
        Force variants of :data:`VARIANT_PROBABILITY` on (``True``) or off
        (``False``); the others are drawn at random.  The variant stream is
        drawn the same either way.
    """
    if labels is None:
        lab = tuple(bool(rng.random() < prevalence) for _ in FINDINGS)
    else:
        lab = tuple(bool(v) for v in labels)
    aspect = float(rng.uniform(0.85, 1.0))
    if rng.random() < 0.5:
        shape = (size, int(round(size * aspect)))
    else:
        shape = (int(round(size * aspect)), size)
    rows, cols = shape
    var = variant_rng(rng)  # the variants' own stream: rng's draws stay as they were
    variants = _draw_variants(var, variants)
    a = _random_anatomy(rng, lab[CARDIOMEGALY])
    dx = float(variants.get("axial_rotation", 0.0))  # mediastinal shift (axial rotation)
    if dx:
        a = dataclasses.replace(
            a,
            med_x=(max(0.03, a.med_x[0] - dx), max(0.03, a.med_x[1] + dx)),
            hilum=((a.hilum[0][0] + dx, a.hilum[0][1]), (a.hilum[1][0] + dx, a.hilum[1][1])),
            heart_cx=a.heart_cx + dx,
        )

    # patient position: scale, shift and a small rotation of the coordinates
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    x0 = xx / (cols - 1) * 2.0 - 1.0
    y0 = yy / (rows - 1) * 2.0 - 1.0
    y0 *= rows / max(rows, cols)
    x0 *= cols / max(rows, cols)
    zoom = float(rng.uniform(0.88, 1.10))
    rot = float(rng.normal(0.0, 0.03)) + float(np.radians(variants.get("tilt", 0.0)))
    tx, ty = rng.normal(0.0, 0.035, size=2)
    c, s_ = np.cos(rot), np.sin(rot)
    x = ((x0 - tx) * c + (y0 - ty) * s_) / zoom
    y = (-(x0 - tx) * s_ + (y0 - ty) * c) / zoom

    # ----- body: trunk, neck, shoulders; abdomen below the domes
    half = a.thorax_half + 0.08
    trunk_w = np.where(
        y < a.apex_y - 0.1, half + 0.25 * (1 - np.clip((a.apex_y - 0.1 - y) * 4, 0, 1)), half
    )
    neck = (np.abs(x) < 0.22) & (y < a.apex_y)
    d_trunk = np.abs(x) - trunk_w
    body = np.maximum(_soft(d_trunk, 0.06), _soft(np.abs(x) - 0.22, 0.05) * neck)
    thickness = np.sqrt(np.clip(1.0 - (x / (half + 0.1)) ** 2, 0.0, 1.0))
    dens = 0.30 * body * (0.45 + 0.55 * thickness)
    # arms / shoulders at the upper corners
    for sign in (-1.0, 1.0):
        cx, cy = sign * (half + 0.12), a.apex_y + 0.05
        r = np.sqrt(((x - cx) / 0.16) ** 2 + ((y - cy) / 0.14) ** 2)
        dens += 0.22 * _soft((r - 1.0) * 0.14, 0.02)  # humeral head
        arm = _soft(np.abs(x - sign * (half + 0.17)) - 0.10, 0.05) * (y > cy)
        dens = np.maximum(dens, 0.30 * arm * float(rng.random() < 0.6))

    # ----- lungs (air lowers density); vessel markings; soft texture
    lung = [_soft(_lung_sdf(x, y, a, s), 0.035) for s in (0, 1)]
    lung_any = np.maximum(lung[0], lung[1])
    # lungs are thicker (more air) centrally in each hemithorax
    air = 0.20 * lung_any * float(rng.uniform(0.85, 1.15))
    texture = 0.012 * _smooth_noise(rng, shape, 1.2 * max(rows, cols) / 256.0)
    vessels = 0.06 * _vessels(rng, a, shape) * float(rng.uniform(0.7, 1.2))
    markings = [np.clip(vessels + texture, 0, None) * lung[s] for s in (0, 1)]

    sides: dict[str, tuple[str, ...]] = {}
    # ----- pneumothorax: lung retracted from the lateral and apical wall
    ptx_air = np.zeros(shape, np.float32)
    pleural_line = np.zeros(shape, np.float32)
    if lab[PNEUMOTHORAX]:
        s = int(rng.integers(0, 2))
        sides["pneumothorax"] = ("R" if s == 0 else "L",)
        f = float(rng.uniform(0.50, 0.82))  # collapsed lung size
        hx, hy = a.hilum[s][0], a.hilum[s][1] + 0.05
        xc = hx + (x - hx) / f
        yc = hy + (y - hy) / f
        sdf_c = _lung_sdf(xc, yc, a, s) * f
        collapsed = _soft(sdf_c, 0.02) * lung[s]
        gap = np.clip(lung[s] - collapsed, 0.0, 1.0)
        markings[s] = markings[s] * (collapsed + 0.15 * gap) * 1.15  # no markings in the gap
        ptx_air = 0.05 * gap
        pleural_line = 0.06 * _soft(np.abs(sdf_c) - 0.004, 0.006) * lung[s]
    dens = dens - air - ptx_air + pleural_line
    dens += markings[0] + markings[1]

    # ----- mediastinum, spine, trachea, heart
    med_w = 0.08 + 0.04 * np.clip((a.hilum[0][1] - y) * 2.0, 0.0, 1.0)
    mediast = (
        _soft(np.abs(x - dx - 0.01) - med_w, 0.03) * (y > a.apex_y - 0.15) * (y < a.dome_y[1] + 0.2)
    )
    dens += _ribs(rng, a, shape, clavicle_shift=1.6 * dx) * body
    dens = np.maximum(dens, (0.36 + 0.06 * thickness) * mediast * body)
    aortic = np.sqrt(((x - dx - 0.10) / 0.07) ** 2 + ((y - (a.apex_y + 0.27)) / 0.06) ** 2)
    dens = np.maximum(dens, 0.38 * _soft((aortic - 1) * 0.06, 0.02))
    spine = _soft(np.abs(x - 0.4 * dx) - 0.055, 0.02) * body  # spinous processes lag
    vert = 0.5 + 0.5 * np.cos(y * np.pi * 11.0 + float(rng.uniform(0, 6.3)))
    dens += 0.035 * spine * (0.7 + 0.3 * vert)
    trachea = (
        _soft(np.abs(x - dx + 0.01 * y) - 0.03, 0.015)
        * (y < a.hilum[0][1] - 0.02)
        * (y > a.apex_y - 0.3)
    )
    dens -= 0.06 * trachea
    heart = _soft(_heart_sdf(x, y, a), 0.02)
    dens = np.maximum(dens, (0.33 + 0.05 * thickness) * heart * body)

    # ----- diaphragm, liver, stomach bubble
    below = []
    for s in (0, 1):
        sign = -1.0 if s == 0 else 1.0
        lat, med = a.lat_x[s], a.med_x[s]
        u = (sign * x - (med + lat) / 2.0) / ((lat - med) / 2.0)
        dome_curve = a.dome_y[s] - a.dome_h[s] * (1.0 - np.clip(u, -1.5, 1.2) ** 2)
        below.append(_soft(dome_curve - y, 0.02) * (sign * x > -0.05))
    abdomen = np.maximum(below[0], below[1]) * body
    dens = np.maximum(dens, 0.40 * abdomen * (0.6 + 0.4 * thickness))
    if rng.random() < 0.7:
        gx, gy = float(rng.uniform(0.25, 0.45)), a.dome_y[1] + float(rng.uniform(0.06, 0.12))
        bubble = np.sqrt(((x - gx) / 0.10) ** 2 + ((y - gy) / 0.05) ** 2)
        dens -= 0.18 * _soft((bubble - 1.0) * 0.05, 0.01) * below[1]

    # ----- findings that add density: opacity, effusion
    if lab[OPACITY]:
        op = np.zeros(shape, np.float32)
        chosen = []
        for _ in range(int(rng.integers(1, 4))):
            s = int(rng.integers(0, 2))
            chosen.append("R" if s == 0 else "L")
            sign = -1.0 if s == 0 else 1.0
            cx = sign * float(rng.uniform(a.med_x[s] + 0.12, a.lat_x[s] - 0.12))
            cy = float(rng.uniform(a.apex_y + 0.15, a.dome_y[s] - 0.18))
            r = float(rng.uniform(0.06, 0.18))
            op = np.maximum(op, _blob(rng, x, y, cx, cy, r) * float(rng.uniform(0.6, 1.0)))
        dens += 0.20 * op * lung_any * float(rng.uniform(0.8, 1.3))
        sides["lung opacity"] = tuple(sorted(set(chosen)))
    if lab[EFFUSION]:
        which = [int(rng.integers(0, 2))] if rng.random() < 0.7 else [0, 1]
        sides["pleural effusion"] = tuple("R" if s == 0 else "L" for s in which)
        for s in which:
            sign = -1.0 if s == 0 else 1.0
            lat, med = a.lat_x[s], a.med_x[s]
            height = float(rng.uniform(0.18, 0.45)) * (a.dome_y[s] - a.apex_y)
            v = np.clip((sign * x - med) / (lat - med), 0.0, 1.2)
            top = a.dome_y[s] - a.dome_h[s] * 0.3 - height + 0.8 * height * (v**2 - 0.3)
            fluid = _soft(top - y, 0.05) * _soft(_lung_sdf(x, y, a, s) - 0.03, 0.03)
            dens = np.maximum(dens, (0.36 + 0.06 * thickness) * fluid * body)

    # ----- acquisition and grey-scale processing
    dens = ndimage.gaussian_filter(dens, float(rng.uniform(0.4, 1.2)) * max(rows, cols) / 320.0)
    exposure = float(rng.uniform(2.2, 3.8))
    img = 1.0 - np.exp(-exposure * np.clip(dens, 0.0, None))
    img /= max(float(np.percentile(img, 99.5)), 1e-3)
    img = np.clip(img, 0.0, 1.0)
    if rng.random() < 0.6:  # edge enhancement (unsharp mask), as CR/DX processing does
        sig = float(rng.uniform(2.0, 8.0)) * max(rows, cols) / 320.0
        img = img + float(rng.uniform(0.2, 0.8)) * (img - ndimage.gaussian_filter(img, sig))
    gamma = float(np.exp(rng.normal(0.0, 0.25)))
    img = np.clip(img, 0.0, 1.0) ** gamma
    noise = float(rng.uniform(0.005, 0.03))
    img = img + noise * rng.standard_normal(shape).astype(np.float32) * np.sqrt(0.3 + img)
    if variants.get("film_texture"):
        img = film_texture(var, np.clip(img, 0.0, 1.0), grain=0.035, unevenness=0.08)
    if rng.random() < 0.4:  # collimation border
        side = int(rng.integers(0, 4))
        n = int(rng.integers(2, max(3, min(rows, cols) // 14)))
        val = float(rng.choice([0.0, 0.95]))
        if side == 0:
            img[:n] = val
        elif side == 1:
            img[-n:] = val
        elif side == 2:
            img[:, :n] = val
        else:
            img[:, -n:] = val
    if rng.random() < 0.6:  # a lead marker in an upper corner
        m = max(4, min(rows, cols) // 25)
        r0 = int(rng.integers(2, rows // 8))
        c0 = (
            int(rng.integers(2, cols // 8))
            if rng.random() < 0.5
            else cols - m - int(rng.integers(2, cols // 8))
        )
        img[r0 : r0 + m, c0 : c0 + m] = 1.0
    img = _burn_in(var, np.clip(img, 0.0, 1.0), variants)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    return CxrPhantom(img, np.asarray(lab, np.float32), a.ctr, sides, variants)


def _draw_variants(
    var: np.random.Generator, force: Mapping[str, bool] | None = None
) -> dict[str, Any]:
    """Which variants of :data:`VARIANT_PROBABILITY` a phantom gets, with parameters.

    Every value is drawn whether the variant is on or not, so that the
    stream does not depend on which are on; ``force`` turns variants on or
    off.
    """
    on = {k: bool(var.random() < p) for k, p in VARIANT_PROBABILITY.items()}
    for k, v in (force or {}).items():
        if k not in on:
            raise ValueError(f"unknown variant {k!r}; known: {sorted(on)}")
        on[k] = bool(v)
    tilt = round(float(var.uniform(-MAX_TILT_DEG, MAX_TILT_DEG)), 2)
    shift = round(float(var.uniform(-MAX_AXIAL_SHIFT, MAX_AXIAL_SHIFT)), 4)
    letter = str(var.choice(["R", "L"]))
    sides = int(var.integers(1, 5))
    # Every value is drawn whether or not its variant is on, so a seed's stream stays fixed.
    values: dict[str, Any] = {
        "tilt": tilt,
        "axial_rotation": shift,
        "film_texture": True,
        "side_marker": letter,
        "text_strip": True,
        "collimation": sides,
    }
    return {k: v for k, v in values.items() if on[k]}


def _collimate(var: np.random.Generator, img: np.ndarray, n_sides: int) -> np.ndarray:
    """Collimated borders on ``n_sides`` sides: slightly tilted, soft edges, dark or bright.

    The top and bottom borders stay narrow (the frontal-chest check expects
    the midline to be body from the neck to the abdomen).
    """
    rows, cols = img.shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    bright = bool(var.random() < 0.3)
    value = float(var.uniform(0.85, 0.95) if bright else var.uniform(0.0, 0.08))
    if bright:
        n_sides = min(n_sides, 2)
    out = img.copy()
    for side in var.permutation(4)[:n_sides]:
        ang = float(np.tan(np.radians(var.uniform(-2.5, 2.5))))
        if side in (0, 1):  # top, bottom
            w = float(var.uniform(0.008, 0.03)) * rows
            d = (yy if side == 0 else rows - 1 - yy) - (w + ang * (xx - cols / 2.0))
        else:  # left, right
            w = float(var.uniform(0.01, 0.06)) * cols
            d = (xx if side == 2 else cols - 1 - xx) - (w + ang * (yy - rows / 2.0))
        inside = np.clip(0.5 - d / max(1.5, 0.004 * max(rows, cols)), 0.0, 1.0)
        out = out * (1.0 - inside) + value * inside
    return out


def _burn_in(var: np.random.Generator, img: np.ndarray, variants: dict[str, Any]) -> np.ndarray:
    """Collimation, a side marker and a text strip, as ``variants`` asks."""
    rows, cols = img.shape
    short = min(rows, cols)
    if variants.get("collimation"):
        img = _collimate(var, img, int(variants["collimation"]))
    if variants.get("side_marker"):
        m = int(round(short * float(var.uniform(0.05, 0.09))))
        r0 = int(var.uniform(0.02, 0.30) * rows)
        left = bool(var.random() < 0.5)
        c0 = int(var.uniform(0.015, 0.10) * cols)
        c0 = c0 if left else cols - m - c0
        letter = text_mask(img.shape, str(variants["side_marker"]), c0 + 0.15 * m, r0, int(0.8 * m))
        if var.random() < 0.5:  # a bright block with a dark letter
            block = np.zeros_like(img)
            block[r0 : r0 + m, c0 : c0 + m] = 1.0
            img = np.where(block > 0, float(var.uniform(0.85, 1.0)), img)
            img = img * (1.0 - 0.9 * letter)
        else:  # a bright letter
            img = np.maximum(img, letter * float(var.uniform(0.85, 1.0)))
    if variants.get("text_strip"):
        h = max(6, int(round(short * float(var.uniform(0.025, 0.045)))))
        top = bool(var.random() < 0.5)
        r0 = int(var.uniform(0.003, 0.02) * rows)
        r0 = r0 if top else rows - h - r0 - 2
        x0 = float(var.uniform(0.02, 0.35) * cols)
        mask = text_mask(img.shape, random_label(var), x0, r0, h)
        if var.random() < 0.5:  # on a dark band
            band = np.zeros_like(img)
            band[
                max(0, r0 - 1) : r0 + h + 2,
                max(0, int(x0) - 2) : cols - int(var.uniform(0.02, 0.3) * cols),
            ] = 1
            img = np.where(band > 0, np.minimum(img, float(var.uniform(0.0, 0.1))), img)
        img = np.maximum(img, mask * float(var.uniform(0.8, 1.0)))
    return img


def random_lateral_cxr(rng: np.random.Generator, size: int = 320) -> np.ndarray:
    """Draw one **lateral** chest radiograph (not a training class; see the module docstring).

    The trunk seen from the side: the anterior chest wall and sternum, one
    lung field (both lungs superimposed) with the retrosternal and
    retrocardiac clear spaces, the heart in front and below resting on the
    anterior diaphragm, the hilum and the aortic arch in the middle, the
    trachea running down from the neck, the thoracic spine (vertebral bodies
    and disc spaces) at the back with the posterior ribs, the two
    hemidiaphragms (the posterior costophrenic sulci deepest) with the
    abdomen and often a gastric bubble below, and, raised, the arms over the
    upper anterior chest.  The patient faces image left or right at random;
    acquisition, grey-scale processing and the variants of
    :data:`VARIANT_PROBABILITY` (tilt, film texture, marker, text,
    collimation) as for the frontal phantoms.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32 in ``0..1``, bright = dense, the longer side
        ``size`` pixels.
    """
    var = variant_rng(rng)
    variants = _draw_variants(var)
    variants.pop("axial_rotation", None)  # no mediastinal shift on a lateral
    aspect = float(rng.uniform(0.85, 1.0))
    shape = (
        (size, int(round(size * aspect)))
        if rng.random() < 0.6
        else (
            int(round(size * aspect)),
            size,
        )
    )
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    x0 = (xx / (cols - 1) * 2.0 - 1.0) * cols / max(rows, cols)
    y0 = (yy / (rows - 1) * 2.0 - 1.0) * rows / max(rows, cols)
    zoom = float(rng.uniform(0.88, 1.08))
    rot = float(rng.normal(0.0, 0.03)) + float(np.radians(variants.get("tilt", 0.0)))
    tx, ty = rng.normal(0.0, 0.035, size=2)
    c, s_ = np.cos(rot), np.sin(rot)
    x = ((x0 - tx) * c + (y0 - ty) * s_) / zoom  # anterior is -x, posterior +x
    y = (-(x0 - tx) * s_ + (y0 - ty) * c) / zoom

    # trunk: anterior wall bowing forward, the back straighter
    front = -float(rng.uniform(0.70, 0.86)) - 0.08 * np.clip(1.0 - (y + 0.1) ** 2, 0.0, 1.0)
    back = float(rng.uniform(0.74, 0.90)) + 0.03 * y
    neck = (y < -0.72) & (x > -0.35) & (x < 0.55)
    body = np.maximum(
        _soft(np.maximum(front - x, x - back), 0.05), _soft(np.abs(x - 0.1) - 0.45, 0.05) * neck
    )
    body = np.where(
        y < -0.72, np.maximum(body * (y > -0.95), _soft(np.abs(x - 0.1) - 0.45, 0.05) * neck), body
    )
    thickness = np.sqrt(np.clip(1.0 - ((x - 0.0) / 1.0) ** 2, 0.0, 1.0))
    dens = 0.34 * body * (0.55 + 0.45 * thickness)

    # lung field: both lungs superimposed, from the apex to the domes
    apex = float(rng.uniform(-0.72, -0.60))
    dome_a = float(rng.uniform(0.10, 0.28))  # anterior diaphragm height
    dome_p = dome_a + float(rng.uniform(0.18, 0.32))  # posterior sulcus, deeper
    lx0, lx1 = front + 0.10, back - 0.12
    u = np.clip((x - lx0) / np.maximum(lx1 - lx0, 1e-3), 0.0, 1.0)
    dome = dome_a + (dome_p - dome_a) * u**1.6 - 0.10 * np.sin(np.pi * u)
    second = dome + float(rng.uniform(0.02, 0.08))  # the other hemidiaphragm
    lung_sdf = np.maximum.reduce([lx0 - x, x - lx1, y - dome, apex + 0.25 * (x - 0.05) ** 2 - y])
    lung = _soft(lung_sdf, 0.04)
    air = 0.17 * lung * float(rng.uniform(0.85, 1.15))
    texture = 0.012 * _smooth_noise(rng, shape, 1.2 * max(rows, cols) / 256.0)
    dens = dens - air + np.clip(texture, 0.0, None) * lung

    # vessels from the hilum
    hx, hy = float(rng.uniform(-0.05, 0.12)), float(rng.uniform(-0.18, -0.04))
    fake = _Anatomy(
        0.8,
        apex,
        (dome_a, dome_a),
        (0.1, 0.1),
        (0.7, 0.7),
        (0.1, 0.1),
        ((hx, hy), (hx, hy)),
        0.0,
        0.0,
        0.1,
        0.1,
        0.45,
    )
    dens += 0.05 * _vessels(rng, fake, shape) * lung
    hilum = np.sqrt(((x - hx) / 0.09) ** 2 + ((y - hy) / 0.12) ** 2)
    dens += 0.05 * _soft((hilum - 1.0) * 0.1, 0.03)

    # spine: vertebral bodies with disc spaces, posterior elements behind
    sx = back - float(rng.uniform(0.22, 0.30))
    vb = _soft(np.abs(x - sx) - 0.09, 0.02) * (y > -0.95) * body
    discs = 0.5 + 0.5 * np.cos(y * np.pi * 11.0 + float(rng.uniform(0, 6.3)))
    dens += 0.07 * vb * (0.6 + 0.4 * discs)
    dens += 0.03 * _soft(np.abs(x - sx - 0.15) - 0.04, 0.03) * body
    # posterior ribs: oblique bands over the back of the lung field
    for i in range(int(rng.integers(8, 11))):
        ry = apex + 0.05 + i * (dome_p - apex) / 10.0
        band = _soft(np.abs(y - (ry - 0.35 * (x - sx))) - 0.025, 0.02)
        dens += 0.025 * band * (x > sx - 0.65) * (x < back) * body
    # sternum, trachea, aortic arch and descending aorta
    dens += 0.06 * _soft(np.abs(x - (front + 0.05)) - 0.03, 0.02) * (y > apex) * (y < dome_a) * body
    tr_x = float(rng.uniform(-0.05, 0.08)) + 0.12 * (y + 1.0) * 0.5
    dens -= 0.07 * _soft(np.abs(x - tr_x) - 0.035, 0.015) * (y < hy - 0.05) * body
    arch = np.abs(np.sqrt(((x - 0.08) / 0.22) ** 2 + ((y - (apex + 0.25)) / 0.12) ** 2) - 1.0)
    dens += 0.05 * _soft(arch * 0.12 - 0.02, 0.02) * (y < apex + 0.30) * lung
    dens += 0.04 * _soft(np.abs(x - (sx - 0.15)) - 0.04, 0.02) * (y > apex + 0.25) * lung
    # heart: in front and below, on the anterior diaphragm
    hcx = front + float(rng.uniform(0.35, 0.50))
    hrx, hry = float(rng.uniform(0.22, 0.32)), float(rng.uniform(0.22, 0.30))
    hcy = dome_a - 0.6 * hry
    heart = _soft((np.sqrt(((x - hcx) / hrx) ** 2 + ((y - hcy) / hry) ** 2) - 1.0) * hrx, 0.02)
    dens = np.maximum(dens, (0.31 + 0.05 * thickness) * heart * body)
    # diaphragm and abdomen; gastric bubble
    below = np.maximum(_soft(dome - y, 0.02), 0.8 * _soft(second - y, 0.02))
    dens = np.maximum(dens, 0.40 * below * body * (0.6 + 0.4 * thickness))
    if rng.random() < 0.6:
        gx, gy = float(rng.uniform(-0.3, 0.2)), dome_a + float(rng.uniform(0.10, 0.2))
        bubble = np.sqrt(((x - gx) / 0.12) ** 2 + ((y - gy) / 0.05) ** 2)
        dens -= 0.16 * _soft((bubble - 1.0) * 0.05, 0.01) * body
    # arms raised over the upper anterior chest
    if rng.random() < 0.6:
        for k in range(2):
            ax0 = front + 0.25 + 0.08 * k
            arm_x = ax0 + 0.55 * (y - apex)
            arm = _soft(np.abs(x - arm_x) - 0.09, 0.04) * (y < apex + 0.35)
            dens += 0.10 * arm

    # acquisition and grey-scale processing (as for the frontal phantoms)
    dens = ndimage.gaussian_filter(dens, float(rng.uniform(0.4, 1.2)) * max(rows, cols) / 320.0)
    exposure = float(rng.uniform(2.2, 3.8))
    img = 1.0 - np.exp(-exposure * np.clip(dens, 0.0, None))
    img /= max(float(np.percentile(img, 99.5)), 1e-3)
    img = np.clip(img, 0.0, 1.0)
    if rng.random() < 0.6:
        sig = float(rng.uniform(2.0, 8.0)) * max(rows, cols) / 320.0
        img = img + float(rng.uniform(0.2, 0.8)) * (img - ndimage.gaussian_filter(img, sig))
    img = np.clip(img, 0.0, 1.0) ** float(np.exp(rng.normal(0.0, 0.25)))
    noise = float(rng.uniform(0.005, 0.03))
    img = img + noise * rng.standard_normal(shape).astype(np.float32) * np.sqrt(0.3 + img)
    if variants.get("film_texture"):
        img = film_texture(var, np.clip(img, 0.0, 1.0), grain=0.035, unevenness=0.08)
    if rng.random() < 0.5:  # facing image right
        img = img[:, ::-1]
    img = _burn_in(var, np.clip(img, 0.0, 1.0), variants)
    return np.ascontiguousarray(np.clip(img, 0.0, 1.0), dtype=np.float32)

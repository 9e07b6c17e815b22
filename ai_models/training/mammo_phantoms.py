"""Synthetic mammogram phantoms with mass annotations (boxes).

Each phantom is a projection-like image of one compressed breast, built from
soft-edged shapes and filtered noise, in *presentation* polarity (dense,
more attenuating tissue bright, values in ``0..1``, MONOCHROME2 sense):

* **breast outline** on a black (open-field) background, attached to the
  chest wall at one image edge: a rounded half-ellipse in a cranio-caudal
  (CC) view; in a medio-lateral oblique (MLO) view a shape that runs from
  the axilla (top) over the nipple to the inframammary fold;
* **thickness fall-off** towards the edge (the compressed breast gets thinner
  there) and a **skin line** (a thin brighter band) with a layer of
  subcutaneous fat beneath it;
* **fibroglandular tissue**: multi-scale filtered noise concentrated behind
  the nipple, thresholded to a random breast density (almost entirely fatty
  to extremely dense), with fine texture, curvilinear Cooper's ligaments and
  ducts converging on the nipple, and a few vessels;
* **pectoral muscle** (MLO only): a bright triangle with a slightly convex
  edge in the upper corner at the chest wall;
* **calcifications** (small bright specks, distractors), and now and then
  lead markers or labels ("L MLO") and a redaction block in the background,
  as on digitised films;
* **masses** (0-3): round, oval, irregular or spiculated, 5-40 mm, of varied
  contrast and margin (circumscribed to ill-defined), inside the breast and
  outside the pectoral muscle.

Acquisition and display vary: pixel size, grey-scale curve (gamma,
contrast, background level), blur and noise.

On top of that, seeded random **variants of real (digitised) mammograms**
(:data:`VARIANT_PROBABILITY`), drawn from a child generator
(:func:`ai_models.training.film.variant_rng`) so that a seed keeps its
breast and masses:

* **film texture** -- grain, the density non-uniformity of a digitised film
  and scanner lines (:func:`ai_models.training.film.film_texture`);
* **burned-in label** -- a bright view label such as ``"L MLO"`` (sometimes
  a bright block with dark text, sometimes with a date) in a corner of the
  background;
* **lead marker** -- a bright square or disc with a letter, in the
  background near the breast, now and then touching the skin line.

Labels and markers are never masses: they are not in ``boxes``, so the
detector learns to leave them alone.  Views are CC or MLO, left or
right; a right breast is shown with the chest wall on the image right, a
left one on the image left (the usual hanging), with some images stored the
other way round, and CC views flipped top/bottom at random.

Boxes are ``(x0, y0, x1, y1)`` image coordinates (PS3.3 C.18.6.1.1: column,
row; ``(0, 0)`` is the top left corner of the top left pixel): the extent of
each mass core (where its density reaches half of its peak), spicules not
included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ai_models.training.film import film_texture, text_mask, variant_rng

__all__ = [
    "MASS_SHAPES",
    "VARIANT_PROBABILITY",
    "VIEWS",
    "MammoPhantom",
    "random_mammo_phantom",
]

MASS_SHAPES: tuple[str, ...] = ("round", "oval", "irregular", "spiculated")
"""Mass shapes drawn (BI-RADS shape / margin families)."""

VIEWS: tuple[str, ...] = ("CC", "MLO")
"""Views drawn: cranio-caudal and medio-lateral oblique."""

REFERENCE_ROWS = 320
"""Rows at which the random size ranges below are stated (they scale with ``rows``)."""

VARIANT_PROBABILITY: dict[str, float] = {"film_texture": 0.6, "label": 0.5, "lead_marker": 0.4}
"""How often each variant of real mammograms is drawn (independently)."""


@dataclass
class MammoPhantom:
    """A synthetic mammogram and what is drawn in it.

    Attributes
    ----------
    image:
        ``(rows, cols)`` float32 in ``0..1``, bright = dense (presentation).
    boxes:
        ``(n, 4)`` float32 ``(x0, y0, x1, y1)`` of the masses, image
        coordinates (see the module docstring).
    shapes:
        Shape of each mass (one of :data:`MASS_SHAPES`).
    diameters_mm:
        Nominal diameter of each mass.
    view, laterality:
        ``"CC"``/``"MLO"`` and ``"L"``/``"R"``.
    chest_wall:
        Image side of the chest wall, ``"left"`` or ``"right"``.
    pixel_spacing_mm:
        Size of a pixel (square).
    breast:
        ``(rows, cols)`` bool, the breast (pectoral muscle included).
    density:
        Fraction of the breast drawn as fibroglandular tissue.
    variants:
        The variants of :data:`VARIANT_PROBABILITY` drawn (``{"label": "L
        MLO", "lead_marker": "L", "film_texture": True}``), with the boxes
        ``(x0, y0, x1, y1)`` of a label and a marker (``"label_box"``,
        ``"lead_marker_box"``; ``None`` when there was no room).
    """

    image: np.ndarray
    boxes: np.ndarray
    shapes: tuple[str, ...]
    diameters_mm: tuple[float, ...]
    view: str
    laterality: str
    chest_wall: str
    pixel_spacing_mm: float
    breast: np.ndarray
    density: float
    variants: dict[str, Any] = field(default_factory=dict)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, scaled to unit standard deviation."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _smooth_1d(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    v = ndimage.gaussian_filter1d(rng.standard_normal(n + 40).astype(np.float32), sigma)[20:-20]
    sd = float(v.std())
    return v / sd if sd > 0 else v


def _outline(
    rng: np.random.Generator, rows: int, cols: int, view: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """Depth of the breast from the chest wall (x = 0) per row, and the nipple (x, y)."""
    y = np.arange(rows, dtype=np.float32)
    if view == "CC":
        yc = rows * rng.uniform(0.42, 0.58)
        half = rows * rng.uniform(0.30, 0.47)
        depth = cols * rng.uniform(0.55, 0.9)
        p = rng.uniform(1.7, 2.6)
        t = np.clip(np.abs(y - yc) / half, 0.0, 1.0)
        xb = depth * (1.0 - t**p) ** (1.0 / p)
        nipple = (depth, yc)
    else:
        top_w = cols * rng.uniform(0.22, 0.5)
        yn = rows * rng.uniform(0.45, 0.68)
        yf = rows * rng.uniform(0.88, 1.08)
        depth = cols * rng.uniform(0.6, 0.92)
        q = rng.uniform(0.6, 1.2)
        r = rng.uniform(0.6, 1.1)
        up = top_w + (depth - top_w) * np.sin(np.pi / 2 * np.clip(y / yn, 0, 1)) ** q
        down = depth * np.clip(np.cos(np.pi / 2 * np.clip((y - yn) / (yf - yn), 0, 1)), 0, 1) ** r
        xb = np.where(y < yn, up, down)
        nipple = (depth, yn)
    xb = xb + _smooth_1d(rng, rows, rows * 0.04) * cols * rng.uniform(0.0, 0.012)
    return np.clip(xb, 0.0, cols - 1.0), (float(nipple[0]), float(nipple[1]))


def _lines(
    shape: tuple[int, int],
    segments: list[list[tuple[float, float]]],
    width: int = 1,
) -> np.ndarray:
    img = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(img)
    for pts in segments:
        if len(pts) >= 2:
            draw.line(pts, fill=1.0, width=width)
    return np.array(img, dtype=np.float32)


def _curvy(
    rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], n: int = 8
) -> list[tuple[float, float]]:
    """A wavy polyline from start to end."""
    t = np.linspace(0.0, 1.0, n)
    x = start[0] + (end[0] - start[0]) * t
    y = start[1] + (end[1] - start[1]) * t
    length = float(np.hypot(end[0] - start[0], end[1] - start[1]))
    nx, ny = -(end[1] - start[1]) / max(length, 1e-6), (end[0] - start[0]) / max(length, 1e-6)
    wob = np.cumsum(rng.normal(0.0, 0.04 * length / n, n))
    wob -= np.linspace(wob[0], wob[-1], n)
    return [(float(a + nx * w), float(b + ny * w)) for a, b, w in zip(x, y, wob, strict=True)]


def _mass(
    rng: np.random.Generator,
    shape_name: str,
    radius: float,
    margin: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """A mass density patch (peak 1) and its core mask, on a square patch.

    Returns (density, core, half): both ``(2 half + 1)`` square, centred.
    """
    spic = 1.6 if shape_name == "spiculated" else 0.0
    half = int(np.ceil(radius * (1.35 + spic) + 3 * margin + 2))
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    dist = np.hypot(xx, yy)
    theta = np.arctan2(yy, xx)
    if shape_name == "oval":
        ratio = rng.uniform(0.5, 0.85)
        ang = rng.uniform(0, np.pi)
        c, s = np.cos(theta - ang), np.sin(theta - ang)
        rad = radius / np.sqrt(c**2 + (s / ratio) ** 2) * np.sqrt(ratio)
    elif shape_name in ("irregular", "spiculated"):
        rad = np.full_like(dist, radius)
        for k in range(2, 7):
            amp = rng.uniform(0.0, 0.16 if shape_name == "irregular" else 0.08) / (k / 2.0)
            rad = rad + radius * amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    else:
        rad = np.full_like(dist, radius)
    rho = dist / np.maximum(rad, 1e-3)
    # projection of a rounded body: flat-ish top, soft margin
    body = np.clip(1.0 - rho**2, 0.0, 1.0) ** 0.35
    edge = _smoothstep((1.0 - rho) * max(radius, 1.0) / max(2.0 * margin, 0.5) + 0.5)
    density = (0.55 * body + 0.45) * edge
    core = density >= 0.5 * float(density.max())
    if shape_name == "spiculated":
        segs = []
        for _ in range(int(rng.integers(6, 18))):
            a = rng.uniform(0, 2 * np.pi)
            r0 = radius * 0.8
            r1 = radius * (1.0 + rng.uniform(0.5, 1.6))
            segs.append(
                _curvy(
                    rng,
                    (half + r0 * np.cos(a), half + r0 * np.sin(a)),
                    (half + r1 * np.cos(a), half + r1 * np.sin(a)),
                    5,
                )
            )
        sp = ndimage.gaussian_filter(_lines(dist.shape, segs, 1), 0.6)
        density = np.maximum(density, 0.45 * sp / max(float(sp.max()), 1e-6))
    return density.astype(np.float32), core, half


def _marker(rng: np.random.Generator, shape: tuple[int, int], text: str) -> np.ndarray:
    """A bright lead marker / label burned into the image (0..1 mask)."""
    img = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(img)
    x = float(rng.uniform(0.05, 0.5) * shape[1])
    y = float(rng.uniform(0.02, 0.2) * shape[0])
    draw.text((x, y), text, fill=1.0)
    return np.array(img, dtype=np.float32)


def random_mammo_phantom(
    rng: np.random.Generator,
    rows: int = REFERENCE_ROWS,
    cols: int | None = None,
    *,
    view: str | None = None,
    laterality: str | None = None,
    n_masses: int | None = None,
    variants: Mapping[str, bool] | None = None,
) -> MammoPhantom:
    """Draw one synthetic mammogram (see the module docstring).

    Parameters
    ----------
    rng:
        Source of all randomness (same state -> same phantom).
    rows, cols:
        Image size; ``cols`` defaults to 0.66-0.82 of ``rows`` (portrait).
    view, laterality:
        ``"CC"``/``"MLO"``, ``"L"``/``"R"``; random when ``None``.
    n_masses:
        Number of masses; random (0: 30 %, 1: 45 %, 2: 18 %, 3: 7 %) when
        ``None``.  Fewer are drawn when the breast has no room left.
    variants:
        Force variants of :data:`VARIANT_PROBABILITY` on (``True``) or off
        (``False``); the others are drawn at random.  The variant stream is
        drawn the same either way, so a phantom with and without a forced
        variant differs only by it.
    """
    view = view or str(rng.choice(VIEWS))
    laterality = laterality or str(rng.choice(("L", "R")))
    if view not in VIEWS or laterality not in ("L", "R"):
        raise ValueError(f"view must be one of {VIEWS} and laterality L or R")
    cols = cols or int(round(rows * rng.uniform(0.66, 0.82)))
    s = rows / REFERENCE_ROWS
    mm = float(rng.uniform(0.62, 0.85) / s)  # mm per pixel
    shape = (rows, cols)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    var = variant_rng(rng)  # the variants' own stream: rng's draws stay as they were
    on = {k: bool(var.random() < p) for k, p in VARIANT_PROBABILITY.items()}
    for k, v in (variants or {}).items():
        if k not in on:
            raise ValueError(f"unknown variant {k!r}; known: {sorted(on)}")
        on[k] = bool(v)

    xb, (nx, ny) = _outline(rng, rows, cols, view)
    breast = x <= xb[:, None]
    # distance to the skin (the chest wall edge and the image top/bottom are
    # not skin: pad the mask outwards there before the distance transform)
    pad = max(8, rows // 4)
    padded = np.pad(breast, ((pad, pad), (pad, 0)), mode="edge")
    dist = ndimage.distance_transform_edt(padded)[pad:-pad, pad:].astype(np.float32)
    dist[~breast] = 0.0

    edge_w = rng.uniform(12.0, 30.0) / mm
    base = rng.uniform(0.35, 0.7)
    thick = base + (1.0 - base) * np.clip(dist / edge_w, 0.0, 1.0) ** rng.uniform(0.35, 0.7)

    # fibroglandular tissue
    density = float(
        rng.choice([rng.uniform(0.03, 0.2), rng.uniform(0.2, 0.45), rng.uniform(0.45, 0.75)])
    )
    cx, cy = nx * rng.uniform(0.3, 0.6), ny + rng.normal(0.0, rows * 0.05)
    prior = np.exp(-(((x - cx) / (nx * 0.55 + 1)) ** 2 + ((y - cy) / (rows * 0.28)) ** 2)).astype(
        np.float32
    )
    fibres = _noise(rng, shape, 0.8 * s)
    fibres = ndimage.gaussian_filter(fibres, (1.0 * s, rng.uniform(3.0, 6.0) * s))
    fibres /= max(float(fibres.std()), 1e-6)
    field = (
        0.6 * _noise(rng, shape, 10 * s)
        + 0.25 * _noise(rng, shape, 4 * s)
        + 0.2 * fibres
        + 2.2 * prior
    )
    fat_layer = rng.uniform(3.0, 12.0) / mm
    inside = breast & (dist > fat_layer)
    if inside.sum() > 50:
        thr = float(np.quantile(field[inside], 1.0 - density))
    else:
        thr = float(field.max())
    gland = _smoothstep((field - thr) / rng.uniform(1.0, 2.5) + 0.5)
    gland *= _smoothstep((dist - fat_layer) / max(fat_layer, 1.0) + 0.5)

    # ligaments and ducts converging on the nipple
    segs = []
    for _ in range(int(rng.integers(5, 25))):
        py = float(rng.uniform(0, rows))
        px = float(rng.uniform(0, max(xb[int(min(py, rows - 1))] * 0.7, 1.0)))
        t = rng.uniform(0.15, 0.6)
        segs.append(_curvy(rng, (px, py), (px + (nx - px) * t, py + (ny - py) * t)))
    strands = ndimage.gaussian_filter(_lines(shape, segs, max(1, int(round(s)))), 0.7 * s)
    texture = 0.5 * _noise(rng, shape, 1.2 * s) + 0.5 * _noise(rng, shape, 2.5 * s)

    f0 = rng.uniform(0.2, 0.38)
    g0 = f0 + rng.uniform(0.2, 0.45)
    tissue = f0 + (g0 - f0) * gland
    tissue += rng.uniform(0.01, 0.04) * texture * (0.4 + gland)
    tissue += rng.uniform(0.02, 0.07) * fibres * (0.3 + gland)
    tissue += rng.uniform(0.02, 0.08) * strands

    # vessels
    vsegs = []
    for _ in range(int(rng.integers(0, 4))):
        py = float(rng.uniform(0.1, 0.9) * rows)
        end = (float(nx * rng.uniform(0.5, 0.95)), py + rng.normal(0, rows * 0.1))
        vsegs.append(_curvy(rng, (0.0, py), end, 12))
    if vsegs:
        lines = _lines(shape, vsegs, max(1, int(round(s))))
        tissue += rng.uniform(0.04, 0.1) * ndimage.gaussian_filter(lines, 0.5 * s)

    img = np.where(breast, tissue * thick, 0.0).astype(np.float32)

    # pectoral muscle (MLO)
    pect = np.zeros(shape, dtype=bool)
    if view == "MLO":
        pw = cols * rng.uniform(0.18, 0.42)
        ph = rows * rng.uniform(0.3, 0.7)
        c = rng.uniform(0.75, 1.35)
        pect = breast & (x < pw * np.clip(1.0 - y / ph, 0.0, 1.0) ** c)
        pm = ndimage.gaussian_filter(pect.astype(np.float32), 1.2 * s)
        level = g0 + rng.uniform(-0.05, 0.2)
        img = img * (1 - pm) + pm * (level + 0.03 * _noise(rng, shape, 3 * s))

    # skin line
    skin_w = rng.uniform(0.8, 2.0) / mm
    skin = breast & (dist < skin_w)
    img += np.where(skin, rng.uniform(0.02, 0.12), 0.0).astype(np.float32)

    # masses
    if n_masses is None:
        n_masses = int(rng.choice(4, p=[0.30, 0.45, 0.18, 0.07]))
    boxes: list[tuple[float, float, float, float]] = []
    shapes: list[str] = []
    diameters: list[float] = []
    taken = np.zeros(shape, dtype=bool)
    for _ in range(n_masses):
        d_mm = float(np.exp(rng.uniform(np.log(5.0), np.log(40.0))))
        radius = d_mm / mm / 2.0
        name = str(rng.choice(MASS_SHAPES))
        ok = breast & ~pect & (dist > radius * 0.8 + 2) & ~taken
        cand = np.argwhere(ok)
        if len(cand) == 0:
            continue
        r0, c0 = cand[int(rng.integers(len(cand)))]
        margin = radius * rng.uniform(0.02, 0.35) if name != "spiculated" else radius * 0.05
        dens, core, half = _mass(rng, name, radius, margin)
        t0 = float(thick[r0, c0])
        contrast = rng.uniform(0.04, 0.25)
        ys0, xs0 = r0 - half, c0 - half
        sl_r = slice(max(0, ys0), min(rows, ys0 + 2 * half + 1))
        sl_c = slice(max(0, xs0), min(cols, xs0 + 2 * half + 1))
        pr = slice(sl_r.start - ys0, sl_r.stop - ys0)
        pc = slice(sl_c.start - xs0, sl_c.stop - xs0)
        patch = dens[pr, pc] * breast[sl_r, sl_c]
        # a mass is a compact, homogeneous density at least as dense as the
        # fibroglandular tissue (which it partly hides) plus its contrast
        mix = 0.6 * patch
        target = (g0 + contrast) * t0
        img[sl_r, sl_c] = (1.0 - mix) * img[sl_r, sl_c] + mix * target + 0.4 * contrast * t0 * patch
        core_in = core[pr, pc] & breast[sl_r, sl_c]
        if not core_in.any():
            continue
        rr, cc = np.nonzero(core_in)
        boxes.append(
            (
                float(cc.min() + sl_c.start),
                float(rr.min() + sl_r.start),
                float(cc.max() + sl_c.start + 1),
                float(rr.max() + sl_r.start + 1),
            )
        )
        shapes.append(name)
        diameters.append(d_mm)
        grow = int(radius * 1.2) + 2
        taken[
            max(0, r0 - grow) : min(rows, r0 + grow + 1),
            max(0, c0 - grow) : min(cols, c0 + grow + 1),
        ] = True

    # calcifications (distractors)
    n_calc = int(rng.integers(0, 12))
    if n_calc:
        cand = np.argwhere(breast & (dist > 4))
        if len(cand):
            pts = cand[rng.integers(len(cand), size=n_calc)]
            calc = np.zeros(shape, np.float32)
            calc[pts[:, 0], pts[:, 1]] = rng.uniform(0.15, 0.5, n_calc)
            img += ndimage.gaussian_filter(calc, 0.5 * s) * 4.0

    # background, markers, redaction
    bg = rng.uniform(0.0, 0.06)
    img = np.where(breast, img, bg).astype(np.float32)
    if rng.random() < 0.4:
        text = f"{laterality} {view}" if rng.random() < 0.7 else str(int(rng.integers(1, 99)))
        m = _marker(rng, shape, text)
        # keep the marker in the background half
        m[:, : int(np.max(xb)) + 2] = 0.0
        img = np.maximum(img, m * rng.uniform(0.6, 1.0))
    if rng.random() < 0.15:
        h, w = int(rows * rng.uniform(0.05, 0.2)), int(cols * rng.uniform(0.03, 0.1))
        r, c = int(rng.uniform(0.2, 0.7) * rows), int(cols - w - rng.uniform(0, 0.05) * cols)
        if c > np.max(xb):
            img[r : r + h, c : c + w] = rng.choice([0.0, 0.9])

    # display curve, blur, noise
    img = ndimage.gaussian_filter(img, rng.uniform(0.3, 0.9) * s)
    img = np.clip(img, 0.0, None) / max(float(np.quantile(img[breast], 0.995)), 1e-3)
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.65, 1.5)
    img = img * rng.uniform(0.75, 1.0)
    img += rng.normal(0.0, rng.uniform(0.004, 0.025), shape).astype(np.float32)
    img = np.clip(img, 0.0, 1.0).astype(np.float32)
    drawn: dict[str, Any] = {}
    if on["film_texture"]:
        drawn["film_texture"] = True
        img = film_texture(var, img, grain=0.03, unevenness=0.1)

    # orientation: right breast -> chest wall on the right (sometimes stored otherwise)
    flip = (laterality == "R") != (rng.random() < 0.15)
    box_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if flip:
        img = img[:, ::-1]
        breast = breast[:, ::-1]
        box_arr = box_arr[:, [2, 1, 0, 3]].copy()
        box_arr[:, [0, 2]] = cols - box_arr[:, [0, 2]]
    if view == "CC" and rng.random() < 0.5:
        img = img[::-1]
        breast = breast[::-1]
        box_arr = box_arr[:, [0, 3, 2, 1]].copy()
        box_arr[:, [1, 3]] = rows - box_arr[:, [1, 3]]
    # labels and markers go on last, the way they read on the displayed image
    img = np.ascontiguousarray(img)
    if on["label"]:
        text, box = _burn_label(var, img, breast, f"{laterality} {view}", flip)
        drawn["label"], drawn["label_box"] = text, box
    if on["lead_marker"]:
        letter, box = _burn_marker(var, img, breast, laterality, flip)
        drawn["lead_marker"], drawn["lead_marker_box"] = letter, box
    return MammoPhantom(
        image=np.ascontiguousarray(img),
        boxes=box_arr,
        shapes=tuple(shapes),
        diameters_mm=tuple(diameters),
        view=view,
        laterality=laterality,
        chest_wall="right" if flip else "left",
        pixel_spacing_mm=mm,
        breast=np.ascontiguousarray(breast),
        density=density,
        variants=drawn,
    )


def _background_spot(
    var: np.random.Generator,
    breast: np.ndarray,
    h: int,
    w: int,
    corner: bool,
    wall_right: bool = False,
) -> tuple[int, int] | None:
    """Top left ``(row, col)`` of an ``h`` x ``w`` box in the background (no breast).

    ``corner``: one of the two corners away from the chest wall (image right
    unless ``wall_right``); otherwise anywhere.  ``None`` when no place is
    free.
    """
    rows, cols = breast.shape
    if h >= rows or w >= cols:
        return None
    for _ in range(20):
        if corner:
            r = int(var.uniform(0.01, 0.06) * rows)
            r = r if var.random() < 0.5 else rows - h - r
            c = int(var.uniform(0.01, 0.08) * cols)
            c = c if wall_right else cols - w - c
        else:
            r = int(var.integers(0, rows - h))
            c = int(var.integers(0, cols - w))
        if c >= 0 and not breast[r : r + h, c : c + w].any():
            return r, c
    return None


def _burn_label(
    var: np.random.Generator, img: np.ndarray, breast: np.ndarray, text: str, wall_right: bool
) -> tuple[str, tuple[int, int, int, int] | None]:
    """Burn a bright view label (``"L MLO"``) into a background corner of ``img`` (in place).

    Returns the text burned in and its box ``(x0, y0, x1, y1)`` (``""`` and
    ``None`` when there was no room).
    """
    rows, cols = img.shape
    if var.random() < 0.3:
        text = text.replace(" ", "")
    if var.random() < 0.3:
        text += f" {int(var.integers(1, 28)):02d}/{int(var.integers(1, 13)):02d}"
    size = max(7, int(round(rows * float(var.uniform(0.035, 0.07)))))
    w = int(len(text) * size * 0.62) + 4
    spot = _background_spot(var, breast, size + 4, w, corner=True, wall_right=wall_right)
    if spot is None:
        return "", None
    r, c = spot
    mask = text_mask(img.shape, text, c + 2, r + 1, size)
    value = float(var.uniform(0.8, 1.0))
    if var.random() < 0.35:  # a bright block with dark text
        img[r : r + size + 4, c : c + w] = value
        img *= 1.0 - 0.9 * mask
    else:
        np.maximum(img, mask * value, out=img)
    return text, (c, r, c + w, r + size + 4)


def _burn_marker(
    var: np.random.Generator,
    img: np.ndarray,
    breast: np.ndarray,
    laterality: str,
    wall_right: bool,
) -> tuple[str, tuple[int, int, int, int] | None]:
    """Burn a lead marker (bright square or disc with a dark letter) into ``img`` (in place).

    Placed in the background; one in four touches the skin line (its box
    may cover the outermost breast pixels).  Returns the letter and the box
    ``(x0, y0, x1, y1)`` (``""`` and ``None`` when there was no room).
    """
    rows, cols = img.shape
    m = max(6, int(round(rows * float(var.uniform(0.03, 0.06)))))
    letter = laterality if var.random() < 0.7 else str(var.choice(["A", "B", "1", "2", "*"]))
    touching = bool(var.random() < 0.25)
    spot = None
    if touching:
        skin = breast & ~ndimage.binary_erosion(breast, iterations=2)
        skin[:, :2] = skin[:, -2:] = False  # the chest wall is no skin line
        edge = np.argwhere(skin)
        edge = edge[(edge[:, 1] < cols - m - 1) & (edge[:, 1] > m)]
        if len(edge):
            r0, c0 = edge[int(var.integers(len(edge)))]
            c0 = c0 if not wall_right else c0 - m + 1
            spot = (int(np.clip(r0 - m // 2, 0, rows - m)), int(c0))
    if spot is None:
        spot = _background_spot(var, breast, m, m, corner=False)
    if spot is None:
        return "", None
    r, c = spot
    yy, xx = np.mgrid[0:m, 0:m].astype(np.float32)
    if var.random() < 0.5:
        shape_mask = np.ones((m, m), np.float32)
    else:
        shape_mask = (np.hypot(yy - (m - 1) / 2, xx - (m - 1) / 2) <= m / 2).astype(np.float32)
    value = float(var.uniform(0.85, 1.0))
    patch = img[r : r + m, c : c + m]
    patch[...] = np.maximum(patch, shape_mask * value)
    lm = text_mask((m, m), letter, 0.2 * m, 0.05 * m, int(0.8 * m))
    patch *= 1.0 - 0.85 * lm * shape_mask
    return letter, (c, r, c + m, r + m)

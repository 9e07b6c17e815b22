"""Synthetic chest CT phantoms in Hounsfield units, with label maps.

The phantoms teach a network Hounsfield physics plus coarse anatomy: a body
ellipse with skin/fat and muscle layers, air-filled lungs (about -850 HU) with
vessels, trachea and main bronchi, heart/mediastinum soft tissue, ribs, spine
and sternum (bone +250..+1300 HU), a liver and bowel gas below the diaphragm,
and spherical or lobulated solid nodules of 3-30 mm.  A minority of phantoms
are head-like (a skull shell around brain tissue with air sinuses) so that
bone is learned as "dense calcified tissue" rather than "ribs only", and some
are QA-phantom-like shells filled with air or water (enclosed air that is not
lung).

Arrays are in the *canonical* orientation used by the ``ct-lungs`` pipeline:
``[k, i, j]`` with ``k`` towards patient superior (+z), ``i`` towards patient
posterior (+y) and ``j`` towards patient left (+x), i.e. DICOM LPS axes in
``(z, y, x)`` order.  Patient left is +x, so the *left* lung lies at positive
``x`` (larger ``j``).

Labels (:data:`LABELS`): 0 background, 1 right lung, 2 left lung, 3 bone,
4 nodule.  Vessels inside the lungs belong to the lung; airways do not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

BACKGROUND, RIGHT_LUNG, LEFT_LUNG, BONE, NODULE = 0, 1, 2, 3, 4
"""Label values of the phantom label maps."""

LABELS: dict[int, str] = {
    BACKGROUND: "background",
    RIGHT_LUNG: "right lung",
    LEFT_LUNG: "left lung",
    BONE: "bone",
    NODULE: "nodule",
}
"""Label value -> name."""

AIR_HU = -1000.0

LUNG_HEIGHT_MM = (200.0, 270.0)
"""Range of the lungs' superior-inferior extent (dome to apex) in chest phantoms."""


@dataclass
class NoduleSpec:
    """One nodule placed in a phantom (centre in canonical mm, diameter in mm)."""

    center_zyx: tuple[float, float, float]
    diameter_mm: float
    lobulated: bool


@dataclass
class Phantom:
    """A synthetic CT and its labels.

    Attributes
    ----------
    image:
        ``(nz, ny, nx)`` float32 Hounsfield units, canonical orientation.
    labels:
        ``(nz, ny, nx)`` uint8 label map (see :data:`LABELS`), at the same grid.
    spacing:
        ``(3,)`` mm along ``(z, y, x)``.
    kind:
        ``"chest"`` or ``"head"``.
    nodules:
        The nodules placed (chest phantoms only).
    """

    image: np.ndarray
    labels: np.ndarray
    spacing: np.ndarray
    kind: str = "chest"
    nodules: list[NoduleSpec] = field(default_factory=list)


def _grid(shape: tuple[int, int, int], spacing: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centred mm coordinates ``(z, y, x)`` broadcastable to ``shape``."""
    axes = [
        (np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * float(s)
        for n, s in zip(shape, spacing, strict=False)
    ]
    z = axes[0][:, None, None]
    y = axes[1][None, :, None]
    x = axes[2][None, None, :]
    return z, y, x


def _bbox_slices(
    lo_mm: np.ndarray, hi_mm: np.ndarray, shape: tuple[int, int, int], spacing: np.ndarray
) -> tuple[slice, ...] | None:
    """Index slices covering the mm box ``[lo, hi]`` (centred coordinates)."""
    out = []
    for lo, hi, n, s in zip(lo_mm, hi_mm, shape, spacing, strict=False):
        a = int(np.floor(lo / s + (n - 1) / 2.0))
        b = int(np.ceil(hi / s + (n - 1) / 2.0)) + 1
        a, b = max(a, 0), min(b, n)
        if a >= b:
            return None
        out.append(slice(a, b))
    return tuple(out)


def _capsule(
    img: np.ndarray,
    lab: np.ndarray | None,
    grid: tuple[np.ndarray, ...],
    spacing: np.ndarray,
    p0: np.ndarray,
    p1: np.ndarray,
    r0: float,
    r1: float,
    hu: float,
    label: int | None,
    within: np.ndarray | None = None,
) -> None:
    """Paint a tapered capsule from ``p0`` to ``p1`` (mm, zyx) in place."""
    rmax = max(r0, r1)
    lo = np.minimum(p0, p1) - rmax
    hi = np.maximum(p0, p1) + rmax
    sl = _bbox_slices(lo, hi, img.shape, spacing)  # type: ignore[arg-type]
    if sl is None:
        return
    z, y, x = (g[s] for g, s in zip(grid, _expand(sl), strict=False))
    d = p1 - p0
    L2 = float(d @ d) + 1e-6
    t = ((z - p0[0]) * d[0] + (y - p0[1]) * d[1] + (x - p0[2]) * d[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    dist2 = (z - p0[0] - t * d[0]) ** 2 + (y - p0[1] - t * d[1]) ** 2 + (x - p0[2] - t * d[2]) ** 2
    r = r0 + (r1 - r0) * t
    m = dist2 <= r * r
    if within is not None:
        m &= within[sl]
    img[sl][m] = hu
    if lab is not None and label is not None:
        lab[sl][m] = label


def _expand(sl: tuple[slice, ...]) -> list[tuple[slice, ...]]:
    """Per-axis index tuples for the broadcast grid arrays."""
    return [
        (sl[0], slice(None), slice(None)),
        (slice(None), sl[1], slice(None)),
        (slice(None), slice(None), sl[2]),
    ]


def _ellipsoid(z, y, x, c, r) -> np.ndarray:  # noqa: ANN001
    """Boolean ellipsoid centred at ``c`` with semi-axes ``r`` (zyx mm)."""
    return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 <= 1.0


def _finish(
    img: np.ndarray, spacing: np.ndarray, rng: np.random.Generator, thickness_mm: float
) -> np.ndarray:
    """Partial-volume blur (slice profile + in-plane PSF) and correlated noise."""
    sig_z = max(thickness_mm / 2.355 / spacing[0], 0.3)
    sig_xy = rng.uniform(0.4, 0.9)
    img = ndimage.gaussian_filter(img, sigma=(sig_z, sig_xy, sig_xy), mode="nearest")
    noise_sd = rng.uniform(5.0, 35.0)
    noise = rng.standard_normal(img.shape).astype(np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.6, 0.6))
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    img += noise
    return img.astype(np.float32)


def make_chest_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: np.ndarray,
    n_nodules: int | None = None,
    thickness_mm: float | None = None,
    nodule_diameters_mm: list[float] | None = None,
) -> Phantom:
    """Build one chest phantom on a ``shape`` grid with ``spacing`` (zyx mm).

    Parameters
    ----------
    rng:
        Random generator (all randomness comes from it: seeded = reproducible).
    shape:
        ``(nz, ny, nx)`` grid size; the body is centred in it.
    spacing:
        ``(3,)`` mm along ``(z, y, x)``.
    n_nodules:
        Number of nodules (default: 0-4 at random).
    thickness_mm:
        Reconstructed slice thickness for the slice-profile blur
        (default: the z spacing times 1-1.5).
    nodule_diameters_mm:
        Fixed nodule diameters (overrides ``n_nodules``; default: random,
        log-uniform 3-30 mm).

    Returns
    -------
    Phantom
        Image in HU and labels, both ``shape``.
    """
    spacing = np.asarray(spacing, dtype=np.float32)
    z, y, x = _grid(shape, spacing)
    img = np.full(shape, AIR_HU, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)

    # Body: an elliptic cylinder whose size drifts slowly along z.
    a = rng.uniform(120.0, 175.0)  # half width (x)
    b = rng.uniform(85.0, 125.0)  # half depth (y)
    scale_z = 1.0 + 0.06 * np.sin(z / rng.uniform(120, 250) + rng.uniform(0, 6.28))
    cy = rng.uniform(-10, 10)
    rn = np.sqrt((x / (a * scale_z)) ** 2 + ((y - cy) / (b * scale_z)) ** 2)  # 1 at skin
    mean_r = 0.5 * (a + b)
    depth = (1.0 - rn) * mean_r  # approx. mm beneath the skin
    fat = rng.uniform(4.0, 25.0)
    muscle = rng.uniform(6.0, 16.0)
    body = depth >= 0
    img[body] = rng.uniform(-110, -80)  # subcutaneous fat
    img[depth >= fat] = rng.uniform(40, 60)  # muscle
    inner_depth = fat + muscle
    inner = depth >= inner_depth
    img[inner] = rng.uniform(20, 45)  # generic soft tissue / mediastinal fat mix
    # Patient table under the back (not bone, not body).
    if rng.random() < 0.6:
        ty = cy + b * 1.0 + rng.uniform(8, 25)
        tbl = (y >= ty) & (y <= ty + rng.uniform(6, 14)) & (np.abs(x) <= a * 1.1)
        img[np.broadcast_to(tbl, shape)] = rng.uniform(-300, 100)

    # Diaphragm dome height (z) varies with x: lower at the sides.
    # Arms down beside the trunk (half the phantoms), touching it or not: the
    # air between arm and chest wall is outside the patient, never lung.
    arm_bone = np.zeros(shape, dtype=bool)
    if rng.random() < 0.5:
        arm_r = rng.uniform(38.0, 55.0)
        gap = rng.uniform(-6.0, 30.0)
        for sign in (-1.0, 1.0):
            ax_ = sign * (a + gap + arm_r)
            ay_ = cy + rng.uniform(-0.3, 0.3) * b
            r_arm = np.sqrt((x - ax_) ** 2 + (y - ay_) ** 2)
            arm = np.broadcast_to(r_arm <= arm_r, shape) & (img <= AIR_HU + 1)
            img[arm] = rng.uniform(-110, -80)
            img[np.broadcast_to(r_arm <= arm_r - fat * 0.6, shape) & arm] = rng.uniform(40, 60)
            hum_r = rng.uniform(9.0, 13.0)
            hx, hy = ax_ + rng.uniform(-8, 8), ay_ + rng.uniform(-8, 8)
            r_hum = np.sqrt((x - hx) ** 2 + (y - hy) ** 2)
            hum = np.broadcast_to(r_hum <= hum_r, shape) & arm
            img[hum] = rng.uniform(700, 1200)
            img[np.broadcast_to(r_hum <= hum_r - rng.uniform(2.0, 3.5), shape)] = rng.uniform(
                60, 250
            )
            arm_bone |= hum
    # A blanket or gown over the front (a quarter of the phantoms): the air
    # beneath it can be enclosed in a slice, and is not lung either.
    if rng.random() < 0.25:
        gap = rng.uniform(4.0, 20.0)
        thick = rng.uniform(2.0, 5.0)
        sheet = (depth <= -gap) & (depth >= -gap - thick) & (y <= cy + b * rng.uniform(0.0, 0.4))
        sheet = np.broadcast_to(sheet, shape) & (img <= AIR_HU + 1)
        img[sheet] = rng.uniform(-300, -60)

    # Adult lungs: 20-27 cm from the diaphragm dome to the apex, wherever the
    # field of view falls (a short field of view cuts them: partial coverage).
    z_extent = (shape[0] - 1) * spacing[0]
    lung_height = rng.uniform(LUNG_HEIGHT_MM[0], LUNG_HEIGHT_MM[1])
    slack = z_extent - lung_height
    lung_mid = rng.uniform(-0.4, 0.4) * slack if slack > 0 else rng.uniform(-0.5, 0.5) * -slack
    z_dia = lung_mid - 0.5 * lung_height
    dome = z_dia + 25.0 * (1.0 - (x / (a * 0.6)) ** 2) * np.exp(-(((y - cy) / b) ** 2))
    above = z >= dome

    # Heart / mediastinum (shifted to patient left and anterior).
    heart_c = (z_dia + rng.uniform(30, 60), cy - rng.uniform(10, 35), rng.uniform(5, 25))
    heart_r = (rng.uniform(45, 65), rng.uniform(35, 50), rng.uniform(40, 60))
    heart = _ellipsoid(z, y, x, heart_c, heart_r)
    medi = (np.abs(x - rng.uniform(-5, 5)) <= rng.uniform(14, 24)) & (y - cy <= b * 0.55)

    # Lungs: ellipsoids inside the rib cage, above the dome, minus mediastinum.
    lung_top = z_dia + lung_height - 30.0  # the ellipsoid reaches 30 mm above it
    lung_zc = 0.5 * (lung_top + z_dia)
    lung_rz = 0.5 * (lung_top - z_dia) + 30.0
    cage = depth >= inner_depth + rng.uniform(8, 14)
    lungs = {}
    for side, sign in ((RIGHT_LUNG, -1.0), (LEFT_LUNG, +1.0)):
        s = rng.uniform(0.9, 1.15)
        rx = a * rng.uniform(0.36, 0.44) * s
        ry = b * rng.uniform(0.66, 0.8) * s
        cx = sign * (rng.uniform(18, 28) + rx)
        c = (lung_zc, cy + rng.uniform(-8, 8), cx)
        ell = _ellipsoid(z, y, x, c, (lung_rz * s, ry, rx))
        # taper at the apex
        apex = (z - lung_zc) / lung_rz
        ell &= ((x - cx) / rx) ** 2 + ((y - c[1]) / ry) ** 2 <= np.clip(1.35 - apex, 0.0, 1.0)
        m = ell & cage & above & ~heart & ~medi
        m &= (x * sign) > rng.uniform(8, 14)
        lungs[side] = m
    lung_any = lungs[RIGHT_LUNG] | lungs[LEFT_LUNG]
    img[heart & inner] = rng.uniform(30, 60)
    lung_hu = rng.uniform(-880, -790)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 2.0)
    texture *= 25.0 / max(float(texture.std()), 1e-6)
    for side, m in lungs.items():
        img[m] = lung_hu + texture[m]
        lab[m] = side

    # Vessels: tapered capsules from each hilum towards the periphery.
    grid = (z, y, x)
    for side, m in lungs.items():
        pts = np.argwhere(m[:: max(1, shape[0] // 30), ::6, ::6])
        if len(pts) == 0:
            continue
        hil = np.array([lung_zc - 10.0, cy, (-1 if side == RIGHT_LUNG else 1) * 30.0], np.float32)
        for _ in range(int(rng.integers(10, 22))):
            q = pts[rng.integers(len(pts))] * np.array([max(1, shape[0] // 30), 6, 6])
            tgt = (q - (np.array(shape) - 1) / 2.0) * spacing
            mid = hil + (tgt - hil) * rng.uniform(0.3, 0.6) + rng.normal(0, 8, 3)
            r0 = rng.uniform(2.5, 4.5)
            vhu = rng.uniform(20, 200)
            _capsule(img, None, grid, spacing, hil, mid, r0, r0 * 0.7, vhu, None, within=m)
            _capsule(
                img,
                None,
                grid,
                spacing,
                mid,
                tgt.astype(np.float32),
                r0 * 0.7,
                0.8,
                vhu,
                None,
                within=m,
            )

    # Airways: trachea down to the carina, main bronchi into each lung (labelled background).
    carina = np.array([lung_zc + rng.uniform(0, 25), cy - rng.uniform(0, 15), 0.0], np.float32)
    top = np.array([z_extent / 2 + 10, carina[1] - 10, 0.0], np.float32)
    tr = rng.uniform(7, 10)
    air_lab = np.zeros(shape, dtype=np.uint8)
    air_img = img.copy()
    _capsule(air_img, air_lab, grid, spacing, top, carina, tr, tr, AIR_HU + 50, 9)
    for sign in (-1.0, 1.0):
        end = carina + np.array([-25.0, 5.0, sign * rng.uniform(35, 50)], np.float32)
        _capsule(air_img, air_lab, grid, spacing, carina, end, tr * 0.75, tr * 0.5, AIR_HU + 50, 9)
    airway = (air_lab == 9) & inner
    # a soft-tissue wall around the airway
    wall = ndimage.binary_dilation(airway, iterations=1) & ~airway & inner
    img[wall & ~lung_any] = 50.0
    img[airway] = AIR_HU + 50
    lab[airway] = BACKGROUND

    # Liver below the dome on the right, stomach/bowel gas (not lung!) below it.
    liver = inner & ~above & (x < rng.uniform(20, 60))
    img[liver] = rng.uniform(50, 70)
    for _ in range(int(rng.integers(0, 5))):
        c = (
            z_dia - rng.uniform(20, 120),
            cy + rng.uniform(-b * 0.5, b * 0.3),
            rng.uniform(-a * 0.5, a * 0.6),
        )
        r = rng.uniform(8, 30, 3)
        gas = _ellipsoid(z, y, x, c, r) & inner & ~above
        img[gas] = AIR_HU + rng.uniform(0, 100)
        lab[gas] = BACKGROUND

    # Spine: vertebral bodies (cancellous + cortex), discs, canal, posterior arch.
    bone = arm_bone.copy()
    vb_y = cy + b - inner_depth - rng.uniform(35, 50)
    vb_r = rng.uniform(14, 21)
    cortical_hu = rng.uniform(700, 1300)
    canc_hu = rng.uniform(180, 380)
    r_xy = np.sqrt(x**2 + (y - vb_y) ** 2)
    disc_period = rng.uniform(24, 30)
    disc_phase = rng.uniform(0, disc_period)
    disc = np.mod(z + disc_phase, disc_period) < rng.uniform(4, 7)
    vb = (r_xy <= vb_r) & ~disc
    img[np.broadcast_to(disc & (r_xy <= vb_r), shape)] = 80.0
    img[np.broadcast_to(vb, shape)] = canc_hu
    cortex = vb & (r_xy >= vb_r - rng.uniform(1.5, 3.0))
    img[np.broadcast_to(cortex, shape)] = cortical_hu
    bone |= np.broadcast_to(vb, shape)
    canal_y = vb_y + vb_r + 9.0
    r_canal = np.sqrt(x**2 + (y - canal_y) ** 2)
    arch = (r_canal >= 8.0) & (r_canal <= 8.0 + rng.uniform(4, 7)) & ~disc
    spinous = (np.abs(x) <= 4) & (y > canal_y + 8) & (y < canal_y + 30) & ~disc
    img[np.broadcast_to(r_canal < 8.0, shape)] = 15.0
    img[np.broadcast_to(arch | spinous, shape)] = cortical_hu * 0.8
    bone |= np.broadcast_to(arch | spinous, shape)

    # Ribs: slanted tubes running around just outside the lungs.
    rib_rn = 1.0 - (inner_depth + rng.uniform(3, 8)) / mean_r
    theta = np.arctan2((y - cy) / b, x / a)  # 0 at patient left, +pi/2 posterior
    rib_r = rng.uniform(3.0, 5.5)
    rib_gap = rng.uniform(18, 26)
    slope = rng.uniform(8, 20)
    anterior_gap = rng.uniform(0.35, 0.6)
    zr = z + slope * np.sin(theta)  # ribs rise posteriorly
    dz = np.mod(zr + rng.uniform(0, rib_gap), rib_gap) - rib_gap / 2
    dr = (rn - rib_rn) * mean_r
    rib = ((dz**2 + dr**2) <= rib_r**2) & (np.abs(theta + np.pi / 2) > anterior_gap)
    rib &= (z <= lung_top + 20) & (z >= z_dia - 60)
    img[rib] = cortical_hu * rng.uniform(0.6, 1.0)
    marrow = ((dz**2 + dr**2) <= (rib_r - 1.5) ** 2) & rib
    img[marrow] = canc_hu
    bone |= rib
    # Sternum: anterior midline slab.
    st_y = cy - b + inner_depth * 0.8
    sternum = (np.abs(x) <= rng.uniform(10, 16)) & (np.abs(y - st_y) <= rng.uniform(4, 7))
    sternum = np.broadcast_to(sternum, shape) & (z <= lung_top) & (z >= z_dia)
    img[sternum] = rng.uniform(250, 500)
    bone |= sternum
    lab[bone] = BONE

    # Nodules: solid, spherical or lobulated, 3-30 mm, centred in a lung.
    nodules: list[NoduleSpec] = []
    if nodule_diameters_mm is not None:
        n_nodules = len(nodule_diameters_mm)
    elif n_nodules is None:
        n_nodules = int(rng.choice([0, 1, 1, 2, 2, 3, 4]))
    lung_idx = np.argwhere(lung_any)
    for i_nod in range(n_nodules if len(lung_idx) else 0):
        d = float(np.exp(rng.uniform(np.log(3.0), np.log(30.0))))
        if nodule_diameters_mm is not None:
            d = float(nodule_diameters_mm[i_nod])
        c_idx = lung_idx[rng.integers(len(lung_idx))]
        c = (c_idx - (np.array(shape) - 1) / 2.0) * spacing
        rad = d / 2.0
        sl = _bbox_slices(c - rad * 1.4, c + rad * 1.4, shape, spacing)
        if sl is None:
            continue
        zz, yy, xx = (g[s] for g, s in zip(grid, _expand(sl), strict=False))
        dz_, dy_, dx_ = zz - c[0], yy - c[1], xx - c[2]
        rr = np.sqrt(dz_**2 + dy_**2 + dx_**2) + 1e-6
        lobulated = bool(rng.random() < 0.5) and d >= 6.0
        if lobulated:
            # radius modulated by a few low-order angular waves
            th = np.arccos(np.clip(dz_ / rr, -1, 1))
            ph = np.arctan2(dy_, dx_)
            mod = 1.0
            for _k in range(3):
                l_ = int(rng.integers(2, 5))
                mod = mod + rng.uniform(0.05, 0.15) * np.cos(
                    l_ * ph + rng.uniform(0, 6.3)
                ) * np.sin(l_ * th + rng.uniform(0, 6.3))
            m = rr <= rad * mod
        else:
            m = rr <= rad
        m &= lung_any[sl] | (lab[sl] == NODULE)
        if not m.any():
            continue
        img[sl][m] = rng.uniform(-40, 80)
        lab[sl][m] = NODULE
        nodules.append(NoduleSpec(tuple(float(v) for v in c), d, lobulated))  # type: ignore[arg-type]

    if thickness_mm is None:
        thickness_mm = float(spacing[0] * rng.uniform(1.0, 1.5))
    img = _finish(img, spacing, rng, thickness_mm)
    return Phantom(image=img, labels=lab, spacing=spacing, kind="chest", nodules=nodules)


def make_head_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray
) -> Phantom:
    """Build a head-like phantom: skull shell, brain, air sinuses; no lungs.

    Parameters and return value as :func:`make_chest_phantom`.
    """
    spacing = np.asarray(spacing, dtype=np.float32)
    z, y, x = _grid(shape, spacing)
    img = np.full(shape, AIR_HU, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    r = np.array([rng.uniform(80, 110), rng.uniform(85, 105), rng.uniform(65, 80)], np.float32)
    c = np.array([rng.uniform(-20, 20), rng.uniform(-10, 10), 0.0], np.float32)
    q = np.sqrt(((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2)
    depth = (1.0 - q) * float(r.mean())
    head = depth >= 0
    img[head] = rng.uniform(20, 50)  # scalp
    skin = rng.uniform(3, 7)
    skull_t = rng.uniform(4, 9)
    skull = (depth >= skin) & (depth < skin + skull_t)
    brain = depth >= skin + skull_t
    img[skull] = rng.uniform(900, 1600)
    diploe = (depth >= skin + skull_t * 0.35) & (depth < skin + skull_t * 0.65)
    img[diploe] = rng.uniform(300, 600)
    img[brain] = rng.uniform(25, 45)
    lab[skull] = BONE
    # Skull base / face bones: a few dense blobs below the centre.
    for _ in range(int(rng.integers(2, 6))):
        bc = c + np.array(
            [
                -r[0] * rng.uniform(0.3, 0.8),
                rng.uniform(-r[1] * 0.7, r[1] * 0.4),
                rng.uniform(-r[2] * 0.6, r[2] * 0.6),
            ],
            np.float32,
        )
        br = rng.uniform(5, 15, 3)
        m = _ellipsoid(z, y, x, bc, br) & head
        img[m] = rng.uniform(400, 1400)
        lab[m] = BONE
    # Air sinuses / mastoid cells: air inside the body that is NOT lung.
    for _ in range(int(rng.integers(1, 5))):
        sc = c + np.array(
            [
                -r[0] * rng.uniform(0.2, 0.6),
                -r[1] * rng.uniform(0.3, 0.8),
                rng.uniform(-r[2] * 0.5, r[2] * 0.5),
            ],
            np.float32,
        )
        sr = rng.uniform(5, 15, 3)
        m = _ellipsoid(z, y, x, sc, sr) & (depth > skin)
        img[m] = AIR_HU + rng.uniform(0, 150)
        lab[m] = BACKGROUND
    img = _finish(img, spacing, rng, float(spacing[0] * rng.uniform(1.0, 1.5)))
    return Phantom(image=img, labels=lab, spacing=spacing, kind="head")


def make_shell_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: np.ndarray
) -> Phantom:
    """Build a QA-phantom-like object: a plastic shell filled with air or water.

    CT QA phantoms (and anthropomorphic head phantoms) reach a node too.  Their
    enclosed air is *not* lung (label background); shell material and inserts
    that are bone-equivalent (> 300 HU) are labelled bone, as HU physics says.
    Parameters and return value as :func:`make_chest_phantom`.
    """
    spacing = np.asarray(spacing, dtype=np.float32)
    z, y, x = _grid(shape, spacing)
    img = np.full(shape, AIR_HU, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    r = np.array([rng.uniform(70, 200), rng.uniform(60, 110), rng.uniform(60, 110)], np.float32)
    if rng.random() < 0.5:  # ellipsoid (head-like) else elliptic cylinder
        q = np.sqrt((z / r[0]) ** 2 + (y / r[1]) ** 2 + (x / r[2]) ** 2)
    else:
        q = np.broadcast_to(np.sqrt((y / r[1]) ** 2 + (x / r[2]) ** 2), shape)
    depth = (1.0 - q) * float(r[1:].mean())
    t = rng.uniform(2, 10)
    shell_hu = float(rng.choice([rng.uniform(80, 250), rng.uniform(400, 1300)]))
    shell = (depth >= 0) & (depth < t)
    inside = depth >= t
    img[shell] = shell_hu
    if shell_hu > 300:
        lab[shell] = BONE
    fill = float(rng.choice([AIR_HU, rng.uniform(-20, 40)]))
    img[inside] = fill
    for _ in range(int(rng.integers(1, 6))):
        c = np.array(
            [
                rng.uniform(-r[0] * 0.5, r[0] * 0.5),
                rng.uniform(-r[1] * 0.5, r[1] * 0.5),
                rng.uniform(-r[2] * 0.5, r[2] * 0.5),
            ],
            np.float32,
        )
        rr = rng.uniform(5, 20, 3)
        if rng.random() < 0.5:
            rr[0] = 1e4  # a rod along z
        m = _ellipsoid(z, y, x, c, rr) & inside
        hu = float(rng.uniform(-100, 1200))
        img[m] = hu
        lab[m] = BONE if hu > 300 else BACKGROUND
    # a curved head holder / table outside the object (not bone)
    if rng.random() < 0.7:
        rh = r[1:].mean() + rng.uniform(10, 40)
        ring = np.abs(np.sqrt(y**2 + x**2) - rh) < rng.uniform(2, 6)
        ring = np.broadcast_to(ring & (y > 0), shape)
        img[ring] = rng.uniform(-200, 200)
    img = _finish(img, spacing, rng, float(spacing[0] * rng.uniform(1.0, 1.5)))
    return Phantom(image=img, labels=lab, spacing=spacing, kind="shell")


def random_phantom(
    rng: np.random.Generator,
    spacing: np.ndarray | None = None,
    fov_mm: tuple[float, float, float] | None = None,
    head_fraction: float = 0.15,
    n_nodules: int | None = None,
    shell_fraction: float = 0.0,
    nodule_diameters_mm: list[float] | None = None,
) -> Phantom:
    """Draw a phantom with random geometry (spacing, field of view, kind).

    Parameters
    ----------
    rng:
        Random generator.
    spacing:
        ``(3,)`` zyx mm; default: slice 1.25-3 mm, pixel 1.2-2.2 mm.
    fov_mm:
        ``(z, y, x)`` extent in mm; default: z 240-420, in-plane 340-460.
    head_fraction:
        Probability of a head-like phantom instead of a chest.
    shell_fraction:
        Probability of a QA-phantom-like shell (:func:`make_shell_phantom`).
    nodule_diameters_mm:
        Passed to :func:`make_chest_phantom`.
    n_nodules:
        Passed to :func:`make_chest_phantom`.
    """
    if spacing is None:
        px = rng.uniform(1.2, 2.2)
        spacing = np.array([rng.uniform(1.25, 3.0), px, px], np.float32)
    spacing = np.asarray(spacing, np.float32)
    if fov_mm is None:
        f = rng.uniform(340, 460)
        fov_mm = (rng.uniform(240, 420), f, f)
    shape = tuple(max(8, int(round(e / s))) for e, s in zip(fov_mm, spacing, strict=False))
    u = rng.random()
    if u < head_fraction:
        return make_head_phantom(rng, shape, spacing)  # type: ignore[arg-type]
    if u < head_fraction + shell_fraction:
        return make_shell_phantom(rng, shape, spacing)  # type: ignore[arg-type]
    return make_chest_phantom(
        rng,
        shape,  # type: ignore[arg-type]
        spacing,
        n_nodules=n_nodules,
        nodule_diameters_mm=nodule_diameters_mm,  # type: ignore[arg-type]
    )


def phantom_volume(
    phantom: Phantom, series_instance_uid: str = "1.2.826.0.1.3680043.10.1.1"
) -> Any:
    """Wrap a phantom as an axial CT :class:`~ai_models.types.Volume`.

    The canonical ``(z, y, x)`` array is exactly an axial stack sorted
    inferior to superior: ``k`` along +z, ``i`` along +y (posterior), ``j``
    along +x (patient left), so ``direction`` has columns ``(0,0,1)``,
    ``(0,1,0)``, ``(1,0,0)``.  No source datasets are attached.
    """
    from ai_models.types import FrameRef, Volume

    n = phantom.image.shape[0]
    direction = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    sp = np.asarray(phantom.spacing, dtype=float)
    origin = -direction @ (sp * (np.array(phantom.image.shape) - 1) / 2.0)
    return Volume(
        array=phantom.image,
        origin=origin,
        spacing=sp,
        direction=direction,
        frames=[FrameRef(f"2.25.{i + 1}", "1.2.840.10008.5.1.4.1.1.2") for i in range(n)],
        source_datasets=[],
        modality="CT",
        study_instance_uid="1.2.826.0.1.3680043.10.1.2",
        series_instance_uid=series_instance_uid,
        frame_of_reference_uid="1.2.826.0.1.3680043.10.1.3",
    )

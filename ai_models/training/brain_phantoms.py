"""Synthetic brain MR phantoms with a lesion and surrounding edema, and labels.

A phantom is an *anatomy* defined analytically in head coordinates (mm) and
an *acquisition* that samples it on a DICOM-like grid.  Because the anatomy
is a function of continuous position, the same head can be "scanned" in any
plane (axial, sagittal, coronal, oblique), at any pixel size and slice
thickness, and the reference labels are exact at every voxel centre of any
grid (the training script asks for them on the network's working grid).

Anatomy (:func:`random_anatomy`)
    A head ellipsoid with a smooth random shape and a neck below it; scalp
    (subcutaneous fat), skull (cortical bone with fatty diploe), extra-axial
    CSF, a brain envelope above a tilted skull base with folded cortex
    (sulci are zero-crossings of a smooth random field), an interhemispheric
    fissure, lateral ventricles, deep grey nuclei, white matter; eyes with
    orbital fat and soft tissue below the skull base.  0-3 lesions
    (10-50 mm, lobulated) with an optional necrotic/cystic core
    and a rim, each with optional vasogenic edema: an irregular halo of
    3-25 mm that spreads through white matter only.
Contrast (:data:`CONTRASTS`, :data:`CONTRAST_WEIGHTS`)
    Tissue intensities for T1-, T2- and FLAIR-like images (T1C- and PD-like
    tables exist but are not drawn by default), jittered per phantom, with a
    random gamma, multiplicative tissue texture, a smooth bias field (up to
    about +-40 %), Rician noise and an arbitrary scanner gain (values are
    rounded like stored integers).
Acquisition (:func:`random_acquisition`)
    Axial, sagittal, coronal or oblique (10-35 degrees off a main plane)
    slices with random head pose; pixel size, slice spacing, field of view
    and coverage (the whole head or part of it) drawn from ranges; the slice
    profile is simulated by averaging sub-samples across the slice thickness.

Coordinates: head coordinates and patient coordinates are both LPS-aligned
millimetres (x towards patient left, y posterior, z superior); the head pose
maps one onto the other.  Images are indexed ``[k, i, j]`` like
:class:`ai_models.types.Volume` (``k`` along the slice normal, ``i`` rows
along the column direction cosines, ``j`` columns along the row direction
cosines).

Labels (:data:`LABELS`): 0 background, 1 brain (everything inside the brain
envelope: grey and white matter, deep nuclei, ventricles and sulcal CSF, but
not lesion or edema), 2 lesion (solid, necrotic and rim parts), 3 edema.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

logger = logging.getLogger(__name__)

BACKGROUND, BRAIN, LESION, EDEMA = 0, 1, 2, 3
"""Label values of the phantom label maps."""

LABELS: dict[int, str] = {
    BACKGROUND: "background",
    BRAIN: "brain",
    LESION: "lesion",
    EDEMA: "edema",
}
"""Label value -> name."""

# Tissue classes (internal; intensities per contrast in CONTRASTS).
AIR, FAT, MUSCLE, BONE, MARROW, CSF, GM, WM, DEEP_GM, EYE, SOLID, NECROSIS, RIM, OEDEMA = range(14)
N_TISSUES = 14

TISSUE_NAMES = (
    "air", "fat", "muscle", "bone", "marrow", "csf", "gm", "wm", "deep_gm", "eye",
    "lesion_solid", "lesion_necrosis", "lesion_rim", "edema",
)  # fmt: skip

CONTRASTS: dict[str, tuple[float, ...]] = {
    #        air   fat   musc  bone  marr  csf   gm    wm    dgm   eye   solid necr  rim   edema
    "T1":   (0.0, 0.95, 0.35, 0.04, 0.80, 0.12, 0.45, 0.70, 0.55, 0.12, 0.38, 0.16, 0.42, 0.52),
    "T1C":  (0.0, 0.95, 0.35, 0.04, 0.80, 0.12, 0.45, 0.70, 0.55, 0.12, 0.80, 0.16, 0.98, 0.52),
    "T2":   (0.0, 0.60, 0.20, 0.03, 0.50, 1.00, 0.55, 0.38, 0.45, 1.00, 0.68, 0.95, 0.60, 0.82),
    "FLAIR": (0.0, 0.60, 0.25, 0.03, 0.50, 0.08, 0.55, 0.42, 0.48, 0.10, 0.72, 0.30, 0.68, 0.92),
    "PD":   (0.0, 0.80, 0.40, 0.05, 0.70, 0.80, 0.72, 0.58, 0.66, 0.80, 0.76, 0.85, 0.74, 0.84),
}  # fmt: skip
"""Relative tissue intensity per contrast (order of the tissue classes)."""

CONTRAST_WEIGHTS = {"T1": 0.3, "T2": 0.3, "FLAIR": 0.4}
"""How often each contrast is drawn by :func:`random_contrast`.

T1C (contrast-enhanced T1) and PD are in :data:`CONTRASTS` for experiments
but not drawn: on T1-, T2- and FLAIR-like images the lesion is darker than
its edema, on T1C brighter; a small network trained for ten CPU minutes
learns the consistent set far better (lesions barely show on PD)."""

PLANES = ("axial", "sagittal", "coronal", "oblique")

#: (row direction, column direction) of the main planes (LPS); normal = row x col.
_PLANE_DIRS = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
}


# --------------------------------------------------------------------------- building blocks


@dataclass
class SmoothField:
    """A smooth random scalar field: low-resolution noise, trilinear in between.

    ``values`` is unit-variance noise on a grid of ``step`` mm starting at
    ``origin`` (head mm); outside the grid the edge values continue.
    """

    values: np.ndarray
    origin: np.ndarray
    step: float

    @classmethod
    def random(
        cls, rng: np.random.Generator, half_extent_mm: float, step: float, smooth: float = 1.0
    ) -> SmoothField:
        n = int(math.ceil(2 * half_extent_mm / step)) + 1
        v = rng.standard_normal((n, n, n)).astype(np.float32)
        if smooth > 0:
            v = ndimage.gaussian_filter(v, smooth, mode="wrap")
        v /= max(float(v.std()), 1e-6)
        return cls(v, np.full(3, -half_extent_mm, np.float32), float(step))

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Field at ``(N, 3)`` points (head mm), float32 ``(N,)``."""
        c = ((p - self.origin) / self.step).T
        return ndimage.map_coordinates(self.values, c, order=1, mode="nearest").astype(
            np.float32, copy=False
        )


@dataclass
class SphereFunction:
    """A smooth random function on the unit sphere, ``1 + sum a cos(k u.v + phi)``."""

    v: np.ndarray
    k: np.ndarray
    phase: np.ndarray
    amp: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, amplitude: float, n: int = 6) -> SphereFunction:
        v = rng.standard_normal((n, 3))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        a = rng.uniform(0.3, 1.0, n)
        a *= amplitude / max(float(a.sum()), 1e-6) * 1.5
        return cls(
            v.astype(np.float32),
            rng.uniform(1.0, 4.0, n).astype(np.float32),
            rng.uniform(0, 2 * np.pi, n).astype(np.float32),
            a.astype(np.float32),
        )

    def __call__(self, u: np.ndarray) -> np.ndarray:
        """Value at unit vectors ``(N, 3)``; at least 0.4."""
        arg = (u @ self.v.T) * self.k + self.phase
        return np.maximum(1.0 + np.cos(arg) @ self.amp, 0.4).astype(np.float32, copy=False)


def _radial(p: np.ndarray, center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance from ``center`` and unit direction of ``(N, 3)`` points."""
    d = p - center
    r = np.sqrt((d * d).sum(1))
    u = d / np.maximum(r, 1e-3)[:, None]
    return r, u


def _rotation(rng: np.random.Generator, max_deg: float, min_deg: float = 0.0) -> np.ndarray:
    """A random rotation matrix by an angle in ``[min_deg, max_deg]`` about a random axis."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(rng.uniform(min_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


# --------------------------------------------------------------------------- anatomy


@dataclass
class LesionSpec:
    """One lesion (head mm): centre, mean radius, shape, core, rim, edema."""

    center: np.ndarray
    radius_mm: float
    shape: SphereFunction
    necrosis_fraction: float  # 0: solid; else radius fraction of the necrotic core
    rim_mm: float
    edema_mm: float  # 0: no edema
    edema_shape: SphereFunction

    @property
    def diameter_mm(self) -> float:
        """Mean diameter."""
        return 2.0 * self.radius_mm


@dataclass
class Ellipsoid:
    """An axis-aligned ellipsoid (head mm)."""

    center: np.ndarray
    semi: np.ndarray

    def inside(self, p: np.ndarray) -> np.ndarray:
        q = (p - self.center) / self.semi
        return np.asarray((q * q).sum(1) <= 1.0)


@dataclass
class BrainAnatomy:
    """An analytic head (see the module docstring); build with :func:`random_anatomy`."""

    semi: np.ndarray  # head ellipsoid semi-axes (x, y, z)
    head_shape: SphereFunction
    scalp_mm: float
    skull_mm: float
    diploe_fraction: float
    csf_mm: float
    cortex_mm: float
    sulcal_depth_mm: float
    base_z0: float
    base_slope: float
    base_mm: float
    neck_semi: np.ndarray
    neck_y: float
    ventricles: list[Ellipsoid]
    deep_gm: list[Ellipsoid]
    eyes: list[Ellipsoid]
    lesions: list[LesionSpec]
    sulci: SmoothField
    texture: SmoothField
    lesion_texture: SmoothField
    fat_field: SmoothField
    midline_x: float = 0.0
    extras: dict[str, Any] = field(default_factory=dict)

    # -- evaluation -------------------------------------------------------------------

    def _depths(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth below the skin (mm), depth inside the brain envelope, skull-base height."""
        r, u = _radial(p, np.zeros(3, np.float32))
        radius = self.head_shape(u) / np.sqrt(((u / self.semi) ** 2).sum(1))
        depth = radius - r
        # neck: an elliptic cylinder below the head centre
        q = np.sqrt(
            (p[:, 0] / self.neck_semi[0]) ** 2 + ((p[:, 1] - self.neck_y) / self.neck_semi[1]) ** 2
        )
        neck = np.where(p[:, 2] < -20.0, (1.0 - q) * float(self.neck_semi.min()), -1e3)
        depth = np.maximum(depth, neck.astype(np.float32))
        base_h = p[:, 2] - (self.base_z0 + self.base_slope * p[:, 1])
        d_brain = np.minimum(
            depth - (self.scalp_mm + self.skull_mm + self.csf_mm), base_h - self.csf_mm
        )
        return depth, d_brain, base_h

    def evaluate(
        self, p: np.ndarray, want_tissue: bool = True
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Tissue class and label at ``(N, 3)`` head-mm points.

        Returns
        -------
        (tissue, labels)
            ``(N,)`` uint8 each; ``tissue`` is None when not wanted.
        """
        p = np.asarray(p, np.float32)
        n = len(p)
        depth, d_brain, base_h = self._depths(p)
        inside = depth > 0
        intracranial = inside & (depth > self.scalp_mm + self.skull_mm) & (base_h > 0)
        envelope = intracranial & (d_brain >= 0)
        labels = np.zeros(n, np.uint8)
        labels[envelope] = BRAIN

        tissue = np.zeros(n, np.uint8) if want_tissue else None
        # brain internals (only where the envelope is)
        idx = np.flatnonzero(envelope)
        pe = p[idx]
        db = d_brain[idx]
        wm_like = np.ones(len(idx), bool)  # where edema may spread
        t_env = np.full(len(idx), WM, np.uint8)
        s = self.sulci(pe)
        in_sulcus = (np.abs(s) < 0.07) & (db < self.sulcal_depth_mm)
        near_sulcus = (np.abs(s) < 0.25) & (db < self.sulcal_depth_mm + 2.5)
        cortex = (db < self.cortex_mm) | near_sulcus
        fiss = np.abs(pe[:, 0] - self.midline_x)
        cortex |= (fiss < 4.0) & (pe[:, 2] > -5.0)
        t_env[cortex] = GM
        for e in self.deep_gm:
            t_env[e.inside(pe)] = DEEP_GM
        csf = in_sulcus | ((fiss < 1.2) & (pe[:, 2] > -5.0))
        for e in self.ventricles:
            csf |= e.inside(pe)
        t_env[csf] = CSF
        wm_like &= t_env == WM
        lab_env = np.full(len(idx), BRAIN, np.uint8)
        for les in self.lesions:
            r, u = _radial(pe, les.center)
            rl = les.radius_mm * les.shape(u)
            in_les = r < rl
            if les.edema_mm > 0:
                ed = (r < rl + les.edema_mm * les.edema_shape(u)) & ~in_les & wm_like
                ed &= lab_env != LESION
                t_env[ed] = OEDEMA
                lab_env[ed] = EDEMA
            t_les = np.full(int(in_les.sum()), SOLID, np.uint8)
            rr, rlr = r[in_les], rl[in_les]
            if les.rim_mm > 0:
                t_les[rr > rlr - les.rim_mm] = RIM
            if les.necrosis_fraction > 0:
                t_les[rr < les.necrosis_fraction * rlr] = NECROSIS
            t_env[in_les] = t_les
            lab_env[in_les] = LESION
        labels[idx] = lab_env
        if tissue is None:
            return None, labels
        tissue[idx] = t_env

        # outside the brain envelope
        rest = inside & ~envelope
        scalp = rest & (depth <= self.scalp_mm)
        tissue[scalp] = FAT
        skull = rest & ~scalp & (depth <= self.scalp_mm + self.skull_mm)
        dip_lo = self.scalp_mm + self.skull_mm * (0.5 - self.diploe_fraction / 2)
        dip_hi = self.scalp_mm + self.skull_mm * (0.5 + self.diploe_fraction / 2)
        tissue[skull] = BONE
        tissue[skull & (depth > dip_lo) & (depth < dip_hi)] = MARROW
        icsf = intracranial & ~envelope
        tissue[icsf] = CSF
        below = rest & ~scalp & ~skull & (base_h <= 0)
        base_bone = below & (base_h > -self.base_mm)
        tissue[below] = MUSCLE
        pb = p[below]
        tissue[np.flatnonzero(below)[self.fat_field(pb) > 0.7]] = FAT
        tissue[base_bone] = BONE
        tissue[base_bone & (base_h > -0.75 * self.base_mm) & (base_h < -0.25 * self.base_mm)] = (
            MARROW
        )
        for e in self.eyes:
            orb = Ellipsoid(e.center, e.semi + 6.0).inside(p) & inside & ~envelope
            tissue[orb] = FAT
            tissue[e.inside(p) & inside & ~envelope] = EYE
        return tissue, labels

    def labels_at(self, p: np.ndarray) -> np.ndarray:
        """Label values at ``(N, 3)`` head-mm points (uint8)."""
        return self.evaluate(p, want_tissue=False)[1]


def random_anatomy(rng: np.random.Generator, n_lesions: int | None = None) -> BrainAnatomy:
    """A random head; ``n_lesions`` lesions (default: 0-3, mostly 1)."""
    semi = np.array([rng.uniform(68, 78), rng.uniform(86, 100), rng.uniform(80, 94)], np.float32)
    scalp = rng.uniform(3.5, 7.0)
    skull = rng.uniform(5.0, 9.0)
    csf = rng.uniform(1.0, 4.0)
    atrophy = rng.uniform(0.75, 1.6)
    ventricles = []
    vz, vy = rng.uniform(10, 18), rng.uniform(-4, 6)
    for side in (-1, 1):
        ventricles.append(
            Ellipsoid(
                np.array([side * rng.uniform(5, 8) * atrophy**0.5, vy, vz], np.float32),
                np.array([rng.uniform(4, 7), rng.uniform(18, 27), rng.uniform(6, 10)], np.float32)
                * np.float32(atrophy ** (1 / 3)),
            )
        )
    deep = [
        Ellipsoid(
            np.array(
                [side * rng.uniform(17, 22), rng.uniform(-4, 4), rng.uniform(0, 6)], np.float32
            ),
            np.array([rng.uniform(6, 9), rng.uniform(11, 16), rng.uniform(7, 10)], np.float32),
        )
        for side in (-1, 1)
    ]
    base_z0 = rng.uniform(-42, -32)
    base_slope = rng.uniform(-0.35, -0.12)
    eye_y = -semi[1] + rng.uniform(22, 28)
    eye_z = base_z0 + base_slope * eye_y - rng.uniform(10, 16)
    eye_r = rng.uniform(11, 12.5)
    eyes = [
        Ellipsoid(
            np.array([side * rng.uniform(29, 34), eye_y, eye_z], np.float32),
            np.full(3, eye_r, np.float32),
        )
        for side in (-1, 1)
    ]
    anat = BrainAnatomy(
        semi=semi,
        head_shape=SphereFunction.random(rng, 0.04),
        scalp_mm=scalp,
        skull_mm=skull,
        diploe_fraction=rng.uniform(0.2, 0.6),
        csf_mm=csf,
        cortex_mm=rng.uniform(2.0, 3.5),
        sulcal_depth_mm=rng.uniform(10, 18),
        base_z0=base_z0,
        base_slope=base_slope,
        base_mm=rng.uniform(5, 10),
        neck_semi=np.array(
            [semi[0] * rng.uniform(0.6, 0.75), semi[1] * rng.uniform(0.6, 0.75)], np.float32
        ),
        neck_y=rng.uniform(5, 20),
        ventricles=ventricles,
        deep_gm=deep,
        eyes=eyes,
        lesions=[],
        sulci=SmoothField.random(rng, 130.0, 4.0, smooth=1.5),
        texture=SmoothField.random(rng, 130.0, 3.0, smooth=1.0),
        lesion_texture=SmoothField.random(rng, 130.0, 2.5, smooth=0.8),
        fat_field=SmoothField.random(rng, 130.0, 6.0, smooth=1.0),
        midline_x=rng.uniform(-2, 2),
    )
    if n_lesions is None:
        n_lesions = int(rng.choice([0, 1, 2, 3], p=[0.12, 0.6, 0.22, 0.06]))
    for _ in range(n_lesions):
        les = _random_lesion(rng, anat)
        if les is not None:
            anat.lesions.append(les)
    return anat


def _random_lesion(rng: np.random.Generator, anat: BrainAnatomy) -> LesionSpec | None:
    """A lesion centred in the brain, not overlapping earlier ones (None if none fits)."""
    diam = float(np.exp(rng.uniform(np.log(10.0), np.log(50.0))))
    r = diam / 2
    for _ in range(40):
        c = (rng.uniform(-1, 1, 3) * anat.semi * np.array([0.75, 0.75, 0.7])).astype(np.float32)
        c[2] += 10.0
        _, d_brain, _ = anat._depths(c[None])
        _, lab = anat.evaluate(c[None], want_tissue=False)
        if lab[0] != BRAIN or d_brain[0] < min(0.6 * r, 25.0):
            continue
        if any(np.linalg.norm(c - o.center) < r + o.radius_mm + 8 for o in anat.lesions):
            continue
        necrosis = rng.uniform(0.3, 0.7) if (diam > 16 and rng.random() < 0.5) else 0.0
        edema = rng.uniform(3.0, 25.0) if rng.random() < 0.85 else 0.0
        return LesionSpec(
            center=c,
            radius_mm=r,
            shape=SphereFunction.random(rng, rng.uniform(0.05, 0.25)),
            necrosis_fraction=necrosis,
            rim_mm=rng.uniform(1.5, 4.0) if diam > 12 else 0.0,
            edema_mm=edema,
            edema_shape=SphereFunction.random(rng, rng.uniform(0.2, 0.5)),
        )
    return None


# --------------------------------------------------------------------------- acquisition


@dataclass
class Acquisition:
    """Where an image samples the head, and how it looks.

    ``direction`` columns are the LPS unit vectors of the ``k, i, j`` axes
    (normal, column direction, row direction) as in
    :class:`ai_models.types.Volume`; ``origin`` is voxel ``(0, 0, 0)``;
    ``pose`` / ``offset`` map head mm to LPS: ``lps = pose @ head + offset``.
    """

    shape: tuple[int, int, int]
    spacing: np.ndarray
    direction: np.ndarray
    origin: np.ndarray
    pose: np.ndarray
    offset: np.ndarray
    plane: str
    thickness_mm: float

    def lps(self, kij: np.ndarray) -> np.ndarray:
        """LPS mm of ``(N, 3)`` (fractional) voxel indices."""
        return (
            np.asarray(kij, np.float64) @ (self.direction * self.spacing[None, :]).T + self.origin
        )

    def to_head(self, lps: np.ndarray) -> np.ndarray:
        """Head mm of ``(N, 3)`` LPS points."""
        return ((np.asarray(lps, np.float64) - self.offset) @ self.pose).astype(np.float32)


def random_acquisition(
    rng: np.random.Generator,
    plane: str | None = None,
    pixel_mm: tuple[float, float] = (0.8, 1.2),
    slice_mm: tuple[float, float] = (1.0, 6.0),
    fov_mm: tuple[float, float] = (200.0, 250.0),
    coverage: tuple[float, float] = (0.6, 1.0),
    max_pose_deg: float = 12.0,
) -> Acquisition:
    """A random slice geometry and head pose (see the module docstring)."""
    plane = plane or str(rng.choice(PLANES))
    base = plane if plane != "oblique" else str(rng.choice(["axial", "sagittal", "coronal"]))
    row, col = (np.array(v, float) for v in _PLANE_DIRS[base])
    if plane == "oblique":
        rot = _rotation(rng, 35.0, 10.0)
        row, col = rot @ row, rot @ col
    if rng.random() < 0.1:  # in-plane 180 degree rotation (unusual but legal)
        row, col = -row, -col
    normal = np.cross(row, col)
    direction = np.stack([normal, col, row], axis=1)
    px = float(rng.uniform(*pixel_mm))
    sl = float(rng.uniform(*slice_mm))
    fov = float(rng.uniform(*fov_mm))
    rows = (
        int(round(fov * rng.uniform(0.85, 1.0) / px))
        if plane in ("sagittal", "coronal")
        else int(round(fov / px))
    )
    cols = int(round(fov / px))
    pose = _rotation(rng, max_pose_deg)
    offset = rng.uniform(-12, 12, 3)
    # extent of the head (about 200 mm SI incl. neck, 195 AP, 150 LR) along the normal
    half = np.array([80.0, 100.0, 110.0])
    ext = 2.0 * float(np.sqrt(((pose.T @ normal) ** 2 * half**2).sum()))
    cov = float(rng.uniform(*coverage))
    n_sl = max(int(round(ext * cov / sl)), 4)
    # centred near the middle of the brain; partial coverage lands anywhere along the normal
    center = offset + pose @ np.array([0.0, 0.0, 10.0]) + rng.uniform(-8, 8, 3)
    center = center + normal * float(rng.uniform(-0.5, 0.5)) * ext * (1 - cov)
    spacing = np.array([sl, px, px])
    shape = (n_sl, rows, cols)
    origin = center - direction @ (spacing * (np.array(shape) - 1) / 2.0)
    return Acquisition(
        shape=shape,
        spacing=spacing,
        direction=direction,
        origin=origin,
        pose=pose,
        offset=offset,
        plane=plane,
        thickness_mm=sl * float(rng.uniform(0.85, 1.0)),
    )


# --------------------------------------------------------------------------- contrast + render


@dataclass
class Contrast:
    """Tissue intensities and image degradations of one phantom."""

    name: str
    values: np.ndarray  # (N_TISSUES,) relative intensities
    gamma: float
    texture: float
    lesion_texture: float
    bias: float
    bias_coeffs: np.ndarray
    noise: float
    gain: float


def random_contrast(rng: np.random.Generator, name: str | None = None) -> Contrast:
    """Random intensities around one of :data:`CONTRASTS`."""
    if name is None:
        names = list(CONTRAST_WEIGHTS)
        p = np.array([CONTRAST_WEIGHTS[n] for n in names])
        name = str(rng.choice(names, p=p / p.sum()))
    vals = np.array(CONTRASTS[name], np.float32)
    vals = np.clip(vals + rng.normal(0, 0.035, N_TISSUES).astype(np.float32), 0.0, 1.2)
    vals[AIR] = 0.0
    vals[BONE] = min(vals[BONE], 0.08)
    return Contrast(
        name=name,
        values=vals,
        gamma=float(rng.uniform(0.8, 1.25)),
        texture=float(rng.uniform(0.01, 0.06)),
        lesion_texture=float(rng.uniform(0.03, 0.15)),
        bias=float(rng.uniform(0.0, 0.35)),
        bias_coeffs=rng.standard_normal((4, 4, 4)).astype(np.float32),
        noise=float(rng.uniform(0.01, 0.05)),
        gain=float(10 ** rng.uniform(1.5, 3.4)),
    )


@dataclass
class BrainPhantom:
    """A rendered phantom: image and labels on the acquisition grid.

    Attributes
    ----------
    image:
        ``(k, i, j)`` float32 (arbitrary MR units, rounded to integers).
    labels:
        ``(k, i, j)`` uint8 (:data:`LABELS`) at the voxel centres.
    acquisition, anatomy, contrast:
        How it was made.
    """

    image: np.ndarray
    labels: np.ndarray
    acquisition: Acquisition
    anatomy: BrainAnatomy
    contrast: Contrast

    @property
    def spacing(self) -> np.ndarray:
        return self.acquisition.spacing

    @property
    def direction(self) -> np.ndarray:
        return self.acquisition.direction


def render(
    anat: BrainAnatomy,
    acq: Acquisition,
    contrast: Contrast,
    rng: np.random.Generator,
    max_sub: int = 5,
    chunk_points: int = 1_500_000,
) -> BrainPhantom:
    """Sample the anatomy on the acquisition grid (slice profile, bias, noise)."""
    n_k, n_i, n_j = acq.shape
    t = acq.thickness_mm
    n_sub = 1 if t < 1.6 else (3 if t < 4.5 else 5)
    n_sub = min(n_sub, max_sub) | 1
    offs = (np.arange(n_sub) - (n_sub - 1) / 2) * (t / n_sub) / acq.spacing[0]
    ii, jj = np.meshgrid(np.arange(n_i), np.arange(n_j), indexing="ij")
    plane_ij = np.stack([ii.ravel(), jj.ravel()], 1).astype(np.float64)
    lut = contrast.values.copy()
    image = np.zeros(acq.shape, np.float32)
    labels = np.zeros(acq.shape, np.uint8)
    per_slice = n_i * n_j * n_sub
    step = max(1, chunk_points // per_slice)
    centre_sub = (n_sub - 1) // 2
    for k0 in range(0, n_k, step):
        ks = np.arange(k0, min(k0 + step, n_k))
        kk = (ks[:, None] + offs[None, :]).ravel()  # (len(ks) * n_sub,)
        kij = np.concatenate(
            [np.repeat(kk, len(plane_ij))[:, None], np.tile(plane_ij, (len(kk), 1))], axis=1
        )
        ph = acq.to_head(acq.lps(kij))
        tissue, lab = anat.evaluate(ph)
        assert tissue is not None
        val = lut[tissue]
        val *= 1.0 + contrast.texture * anat.texture(ph)
        les = (tissue >= SOLID) & (tissue <= RIM)
        if les.any():
            val[les] *= 1.0 + contrast.lesion_texture * anat.lesion_texture(ph[les])
        val = val.reshape(len(ks), n_sub, n_i, n_j).mean(1)
        image[ks] = val
        labels[ks] = lab.reshape(len(ks), n_sub, n_i, n_j)[:, centre_sub]
    image = np.clip(image, 0, None) ** contrast.gamma
    # smooth bias field over the field of view (acquisition coordinates)
    if contrast.bias > 0:
        grid = [np.linspace(0, 3, n) for n in acq.shape]
        kk3, ii3, jj3 = np.meshgrid(*grid, indexing="ij", sparse=True)
        coords = np.broadcast_arrays(kk3, ii3, jj3)
        bias = ndimage.map_coordinates(contrast.bias_coeffs, coords, order=3, mode="nearest")
        image *= np.exp(contrast.bias * bias / max(float(np.abs(contrast.bias_coeffs).max()), 1e-6))
    # in-plane point spread (mild) and Rician noise
    image = ndimage.gaussian_filter(image, (0, 0.5, 0.5))
    ref = float(contrast.values[WM]) or 0.5
    sig = contrast.noise * ref
    n1 = rng.standard_normal(image.shape, dtype=np.float32) * sig
    n2 = rng.standard_normal(image.shape, dtype=np.float32) * sig
    image = np.sqrt((image + n1) ** 2 + n2**2)
    image = np.round(image * contrast.gain).astype(np.float32)
    return BrainPhantom(image, labels, acq, anat, contrast)


def random_brain_phantom(
    rng: np.random.Generator,
    n_lesions: int | None = None,
    plane: str | None = None,
    contrast: str | None = None,
    **acq_kwargs: Any,
) -> BrainPhantom:
    """A random anatomy, contrast and acquisition, rendered."""
    max_sub = int(acq_kwargs.pop("max_sub", 5))
    anat = random_anatomy(rng, n_lesions=n_lesions)
    acq = random_acquisition(rng, plane=plane, **acq_kwargs)
    con = random_contrast(rng, contrast)
    return render(anat, acq, con, rng, max_sub=max_sub)


def phantom_volume(
    phantom: BrainPhantom, series_instance_uid: str = "1.2.826.0.1.3680043.10.5.1"
) -> Any:
    """Wrap a phantom as an MR :class:`~ai_models.types.Volume` (no source datasets)."""
    from ai_models.types import FrameRef, Volume

    acq = phantom.acquisition
    n = acq.shape[0]
    return Volume(
        array=phantom.image,
        origin=np.asarray(acq.origin, float),
        spacing=np.asarray(acq.spacing, float),
        direction=np.asarray(acq.direction, float),
        frames=[FrameRef(f"2.25.{i + 1}", "1.2.840.10008.5.1.4.1.1.4") for i in range(n)],
        source_datasets=[],
        modality="MR",
        study_instance_uid="1.2.826.0.1.3680043.10.5.2",
        series_instance_uid=series_instance_uid,
        frame_of_reference_uid="1.2.826.0.1.3680043.10.5.3",
    )


def labels_on_grid(
    anat: BrainAnatomy, acq: Acquisition, kij: np.ndarray, chunk: int = 2_000_000
) -> np.ndarray:
    """Exact labels at ``(N, 3)`` fractional voxel indices of ``acq`` (e.g. a working grid)."""
    out = np.empty(len(kij), np.uint8)
    for a in range(0, len(kij), chunk):
        out[a : a + chunk] = anat.labels_at(acq.to_head(acq.lps(kij[a : a + chunk])))
    return out

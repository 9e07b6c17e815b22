"""``ct-lungs``: lungs (per side), bone and lung nodules on CT.

A demonstration pipeline trained only on synthetic phantoms
(:mod:`ai_models.training.phantoms`); not for clinical use.

How it works
------------
1. **Canonical orientation** -- the volume is permuted/flipped (a view, no
   copy for axial series) so its axes run towards superior, posterior and
   patient left; the network knows left from right.
2. **Working grid** -- the HU volume is pooled to a 4 mm isotropic grid with
   two channels per voxel, the mean and the max HU of the source voxels it
   covers (:func:`~ai_models.pipelines._grid.hu_features`).  A 300-slice
   512x512 chest CT becomes about 94x90x90 voxels.
3. **Network** -- a lean 5-level MONAI 3D UNet (0.5 M parameters) predicts
   background / right lung / left lung / bone / nodule on that grid, whole
   input at once (sliding windows of 128^3 beyond that).
4. **Back to the source grid** -- coarse labels are cleaned (largest lung
   components, nodules must touch a lung) and mapped back by nearest
   neighbour; boundaries are then refined at full resolution with HU:
   lung = (coarse side dilated by one cell AND HU < -400) OR coarse interior
   (keeps vessels), bone = coarse bone dilated by one cell AND HU > 200.
5. **Nodules at full resolution** -- each coarse nodule component is a
   region of interest; inside it the nodule is the soft-tissue (HU > -400)
   part connected to the detection after a morphological opening whose
   radius is 0.4 times the nodule's estimated diameter (at most 5 mm),
   which detaches vessels thinner than the nodule; candidates much longer
   than their volume-equivalent diameter (tubular: vessels) or with less than
   half of their surroundings lung air (hilum, heart border) are dropped.  Each nodule is
   its own segment with volume and longest diameter.

Masks are returned on the volume's own ``(k, i, j)`` grid.
"""

from __future__ import annotations

import logging
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ai_models import runtime
from ai_models.anatomy import CtLungFields, ct_lung_fields
from ai_models.errors import PipelineNotApplicable
from ai_models.pipelines import CT_LUNGS
from ai_models.pipelines._grid import (
    Orientation,
    hu_features,
    nearest_index,
    orientation_from_direction,
    working_shape,
)
from ai_models.pipelines.base import (
    CODES,
    Pipeline,
    PipelineRun,
    longest_diameter_mm,
    tracking_uid,
    volume_measurement,
    weights_kind_of,
)
from ai_models.plausibility import check_volume, mark_out_of_range
from ai_models.types import (
    Finding,
    Measurement,
    PipelineResult,
    QualitativeEvaluation,
    Segment,
    Volume,
)

logger = logging.getLogger(__name__)

__all__ = ["CtLungsPipeline", "DEFAULT_WEIGHTS", "VERSION"]

VERSION = "0.1.0"
"""Algorithm version reported in TID 4019 (the weights have their own sha256)."""

DEFAULT_WEIGHTS = pathlib.Path(__file__).resolve().parents[1] / "weights" / "ct_lungs.pt"
"""Shipped weights (state dict; architecture in the ``.json`` beside it)."""

MIN_SLICES = 8
"""Fewer slices than this: not applicable (the network needs 3D context)."""

MIN_EXTENT_MM = 40.0
"""Smallest accepted extent along the slice normal, in mm."""

MIN_MATRIX = 64
"""Smallest accepted rows/columns."""

ROI_SIZE = (128, 128, 128)
"""Sliding-window patch on the working grid (512 mm); smaller inputs run whole."""

LUNG_AIR_HU = -400.0
"""Lung parenchyma boundary threshold (HU) for full-resolution refinement."""

BONE_HU = 200.0
"""Bone boundary threshold (HU) for full-resolution refinement."""

NODULE_HU = -400.0
"""Nodule (solid) boundary threshold (HU) inside the lung."""

MIN_NODULE_DIAMETER_MM = 3.0
"""Nodules whose volume-equivalent diameter is smaller are dropped."""

MAX_NODULES = 10
"""At most this many nodules are reported (largest first)."""

OPENING_FRACTION = 0.4
"""Radius of the vessel-detaching opening as a fraction of the nodule's diameter."""

MAX_OPENING_MM = 5.0
"""Largest opening radius (mm)."""

MAX_ELONGATION = 1.5
"""Candidates whose longest diameter exceeds this times their volume-equivalent
diameter are tubular (vessels) and dropped; spheres give ~1.0, lobulated ~1.2."""

MIN_AIR_RING = 0.5
"""Least fraction of lung air (HU < -400) in a two-voxel ring around a nodule
candidate; intrapulmonary nodules are mostly surrounded by air, hilar vessels
and the heart border are not (juxtapleural nodules sit near 0.5)."""

MAX_NODULE_DIAMETER_MM = 45.0
"""Coarse detections larger than this (volume-equivalent) are not nodules."""

BACKGROUND, RIGHT, LEFT, BONE, NODULE = 0, 1, 2, 3, 4

_BALL = ndimage.generate_binary_structure(3, 3)


def _fine_lut() -> np.ndarray:
    """Label for each (coarse code, HU class) pair, indexed ``code * 3 + hu_class``.

    Code bits: 1 right lung dilated, 2 left lung dilated, 4 right interior,
    8 left interior, 16 bone dilated.  HU class: 0 air, 1 soft tissue, 2 bone.
    """
    lut = np.zeros(32 * 3, np.uint8)
    for code in range(32):
        for hc in range(3):
            if code & 16 and hc == 2:
                v = BONE
            elif code & 8:
                v = LEFT
            elif code & 4:
                v = RIGHT
            elif code & 2 and hc == 0:
                v = LEFT
            elif code & 1 and hc == 0:
                v = RIGHT
            else:
                v = BACKGROUND
            lut[code * 3 + hc] = v
    return lut


_FINE_LUT = _fine_lut()


@dataclass
class _Nodule:
    """A nodule on the canonical fine grid: crop mask + offset, side."""

    mask: np.ndarray
    offset: tuple[int, int, int]
    side: int
    long_axis_mm: float = 0.0


class CtLungsPipeline(Pipeline):
    """Lungs, bone and nodules on CT (see the module docstring).

    Parameters
    ----------
    weights:
        State-dict file with its JSON sidecar; default :data:`DEFAULT_WEIGHTS`.
        A site's own network of the same inputs and outputs plugs in here.
    device:
        ``None``/``"auto"``, ``"cpu"``, ``"cuda"``...
    sw_batch_size:
        Sliding-window batch size (only for inputs beyond :data:`ROI_SIZE`).
    nodules:
        Detect nodules (default ``True``).
    weights_kind:
        How ``weights`` is loaded: ``state_dict`` (default), ``torchscript``
        or ``bundle`` (:func:`ai_models.runtime.load_model`; the sidecar or the
        bundle's ``configs/metadata.json`` gives ``working_spacing_mm``).
    """

    name = CT_LUNGS
    description = "CT: right/left lung, bone and lung nodules (demo model, synthetic training)"
    modalities = ("CT",)
    version = VERSION

    def __init__(
        self,
        weights: str | pathlib.Path | None = None,
        device: str | None = None,
        sw_batch_size: int = runtime.DEFAULT_SW_BATCH_SIZE,
        nodules: bool = True,
        weights_kind: str = "state_dict",
    ) -> None:
        self.weights = pathlib.Path(weights) if weights is not None else DEFAULT_WEIGHTS
        self.weights_kind = weights_kind_of(weights_kind)
        self.device = device
        self.sw_batch_size = int(sw_batch_size)
        self.nodules = bool(nodules)

    def check(self, volume: Volume) -> None:
        """CT with enough slices, extent and matrix size, showing lung fields.

        The lung fields are checked on the pixels
        (:func:`ai_models.anatomy.ct_lung_fields`), whatever the header says:
        a head, an air-filled phantom or an abdomen below the lung bases is
        not applicable.
        """
        self._lung_fields(volume)

    def _lung_fields(self, volume: Volume) -> CtLungFields:
        """The header and geometry checks, then the lung fields measured on the pixels."""
        super().check(volume)
        n, rows, cols = volume.shape
        if n < MIN_SLICES:
            raise PipelineNotApplicable(
                f"{self.name}: {n} slice(s); at least {MIN_SLICES} are needed for 3D analysis"
            )
        extent = float(n * volume.spacing[0])
        if extent < MIN_EXTENT_MM:
            raise PipelineNotApplicable(
                f"{self.name}: the series covers {extent:.0f} mm along the slice normal; "
                f"at least {MIN_EXTENT_MM:.0f} mm are needed"
            )
        if min(rows, cols) < MIN_MATRIX:
            raise PipelineNotApplicable(
                f"{self.name}: matrix {rows}x{cols} is smaller than {MIN_MATRIX}x{MIN_MATRIX}"
            )
        fields = ct_lung_fields(volume)
        reasons = fields.reasons()
        if reasons:
            raise PipelineNotApplicable(f"{self.name}: not a chest CT: {'; '.join(reasons)}")
        return fields

    def load(self) -> runtime.LoadedModel:
        """The warm model (loaded once per process)."""
        return runtime.load_model(self.weights, self.weights_kind, device=self.device)

    # -- the stages ---------------------------------------------------------

    def applicability(self, volume: Volume) -> CtLungFields:
        """:meth:`check`, returning the lung fields the postprocessing uses."""
        return self._lung_fields(volume)

    def preprocess(self, volume: Volume, model: Any = None) -> tuple[torch.Tensor, Orientation]:
        """HU features on the working grid (canonical orientation) and the orientation."""
        model = model if model is not None else self.load()
        ws = float(model.metadata.get("working_spacing_mm", 4.0))
        orient = orientation_from_direction(volume.direction)
        hu = orient.to_canonical(volume.array)
        wshape = working_shape(hu.shape, orient.spacing(volume.spacing), ws)
        return hu_features(hu, wshape), orient

    def predict(
        self, model: runtime.LoadedModel, inputs: tuple[torch.Tensor, Orientation]
    ) -> np.ndarray:
        """Network labels ``(z', y', x')`` uint8 (0..4) on the working grid."""
        logits = runtime.run_network(
            model, inputs[0], roi_size=ROI_SIZE, sw_batch_size=self.sw_batch_size, divisible_by=16
        )
        return logits[0].argmax(0).numpy().astype(np.uint8)

    def predict_working(
        self, volume: Volume, timer: runtime.StageTimer | None = None
    ) -> tuple[np.ndarray, Orientation, runtime.LoadedModel]:
        """Network labels on the working grid (canonical orientation).

        Returns
        -------
        (labels, orientation, model)
            ``labels`` ``(z', y', x')`` uint8 (0..4).
        """
        timer = timer or runtime.StageTimer()
        with timer("load"):
            model = self.load()
        with timer("preprocess"):
            feats, orient = self.preprocess(volume, model)
        with timer("infer"):
            labels = self.predict(model, (feats, orient))
        return labels, orient, model

    def postprocess(self, run: PipelineRun) -> PipelineResult:
        """Segment lungs, bone and nodules and measure them.

        When the lungs are cut by the first or last slice (partial coverage,
        e.g. the lung bases of an abdominal CT), the lung findings carry no
        volume: they say "Finding: Anatomy coverage incomplete" instead, and the
        result's notes say which end is cut.
        """
        volume, model, fields = run.volume, run.model, run.context
        orient = run.inputs[1]
        segments, findings, notes = self._postprocess(volume, run.outputs, orient, fields)
        notes.extend(self._qualify_lung_volumes(findings, fields))
        logger.info("%s: %d segment(s), %d finding(s)", self.name, len(segments), len(findings))
        return self.result(
            volume,
            model.sha256,
            parameters=(
                f"working_spacing_mm={model.metadata.get('working_spacing_mm', 4.0)}",
                f"lung_air_hu={LUNG_AIR_HU:g}",
                f"bone_hu={BONE_HU:g}",
            ),
            segments=segments,
            findings=findings,
            procedure_reported=CODES.CT_UNSPECIFIED,
            notes=notes,
        )

    @staticmethod
    def _qualify_lung_volumes(findings: list[Finding], fields: CtLungFields) -> list[str]:
        """Keep the lung volumes only where they can be right; return the notes.

        Cut lungs (partial coverage) say "Anatomy coverage incomplete"; fully
        covered lungs whose total is outside the adult range of
        :data:`ai_models.plausibility.RANGES` say "Value out of range".
        """
        lungs = [f for f in findings if f.finding_type in (CODES.RIGHT_LUNG, CODES.LEFT_LUNG)]
        if not lungs:
            return []
        if fields.partial:
            for f in lungs:
                f.measurements = []
                f.qualitative_evaluations.append(
                    QualitativeEvaluation(CODES.FINDING, CODES.ANATOMY_COVERAGE_INCOMPLETE)
                )
            return [f"lung coverage {fields.coverage()}: lung volumes are not reported"]
        total_ml = sum(m.value for f in lungs for m in f.measurements if m.name == CODES.VOLUME)
        why = check_volume("lungs", total_ml / 1000.0)
        if why is None:
            return []
        for f in lungs:
            mark_out_of_range(f)
        return [why]

    # -- postprocessing -----------------------------------------------------

    @staticmethod
    def _clean_coarse(
        work: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, int]]]:
        """Largest lung components per side; nodules that touch a lung.

        Returns
        -------
        (right, left, bone, nodules)
            Boolean working-grid masks and ``(component mask, side)`` pairs.
        """
        sides = {}
        for side in (RIGHT, LEFT):
            m = work == side
            lab, n = ndimage.label(m)
            if n > 1:
                sizes = ndimage.sum_labels(m, lab, index=np.arange(1, n + 1))
                keep = np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1
                m = np.isin(lab, keep)
            sides[side] = m
        nods: list[tuple[np.ndarray, int]] = []
        nlab, n = ndimage.label(work == NODULE, structure=_BALL)
        for sl_i, sl in enumerate(ndimage.find_objects(nlab), start=1):
            if sl is None:
                continue
            big = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
            comp = nlab[big] == sl_i
            ring = ndimage.binary_dilation(comp, _BALL, iterations=2) & ~comp
            r = int(sides[RIGHT][big][ring].sum())
            lft = int(sides[LEFT][big][ring].sum())
            if r + lft == 0:
                continue  # not in contact with a lung: not a lung nodule
            full = np.zeros(work.shape, bool)
            full[big] = comp
            nods.append((full, RIGHT if r >= lft else LEFT))
        return sides[RIGHT], sides[LEFT], work == BONE, nods

    def _postprocess(
        self,
        volume: Volume,
        work: np.ndarray,
        orient: Orientation,
        fields: CtLungFields | None = None,
    ) -> tuple[list[Segment], list[Finding], list[str]]:
        """Full-resolution segments and findings from the working-grid labels.

        With ``fields`` (the applicability check's measurements), lungs and
        bone are kept only inside the body contour: air connected to the
        outside (beside the arms, under the table) is never lung, and the
        table is never bone.
        """
        hu = orient.to_canonical(volume.array)
        fine_shape = tuple(int(n) for n in hu.shape)
        spacing_c = orient.spacing(volume.spacing)
        right, left, bone, nods = self._clean_coarse(work)
        nod_any = np.zeros(work.shape, bool)
        for m, _ in nods:
            nod_any |= m
        d = lambda m: ndimage.binary_dilation(m, _BALL)  # noqa: E731
        e = lambda m: ndimage.binary_erosion(m, _BALL)  # noqa: E731
        code = (
            d(right).astype(np.uint8)
            | (d(left).astype(np.uint8) << 1)
            | (e(right | (nod_any & d(right))).astype(np.uint8) << 2)
            | (e(left | (nod_any & d(left))).astype(np.uint8) << 3)
            | (d(bone).astype(np.uint8) << 4)
        )
        idx = [nearest_index(n, m) for n, m in zip(fine_shape, work.shape, strict=False)]
        # Nearest-neighbour upsampling as run-length repeats (much faster than fancy indexing).
        fine = code
        for ax, (ix, m) in enumerate(zip(idx, work.shape, strict=False)):
            fine = np.repeat(fine, np.bincount(ix, minlength=m), axis=ax)
        # HU class per voxel: 0 air (< LUNG_AIR_HU), 1 soft tissue, 2 bone (> BONE_HU)
        hu_class = (hu >= LUNG_AIR_HU).view(np.uint8) + (hu > BONE_HU).view(np.uint8)
        fine *= 3
        fine += hu_class
        del hu_class
        fine_lab = _FINE_LUT[fine]
        del fine
        f_right = fine_lab == RIGHT
        f_left = fine_lab == LEFT
        f_bone = fine_lab == BONE
        del fine_lab
        notes = []
        if fields is not None:
            inside = fields.interior_on(fine_shape)
            outside_ml = float(
                np.count_nonzero((f_right | f_left) & ~inside) * np.prod(spacing_c) / 1000.0
            )
            f_right &= inside
            f_left &= inside
            f_bone &= inside
            if outside_ml >= 1.0:
                notes.append(
                    f"{outside_ml:.0f} mL of air outside the body contour was not taken for lung"
                )

        nodules: list[_Nodule] = []
        wvox = float(np.prod(spacing_c)) * float(
            np.prod(np.array(fine_shape) / np.array(work.shape))
        )
        max_vox = np.pi / 6.0 * MAX_NODULE_DIAMETER_MM**3 / wvox
        nods = [(m, s) for m, s in nods if m.sum() <= max_vox]
        nods.sort(key=lambda t: -int(t[0].sum()))
        if self.nodules:
            for comp, side in nods[: 2 * MAX_NODULES]:
                nod = self._refine_nodule(hu, comp, side, idx, spacing_c)
                if nod is not None:
                    nodules.append(nod)
        nodules.sort(key=lambda n: -int(n.mask.sum()))
        if len(nodules) > MAX_NODULES:
            notes.append(
                f"{len(nodules)} nodule candidates; the {MAX_NODULES} largest are reported"
            )
            nodules = nodules[:MAX_NODULES]
        # deterministic numbering: by position (superior to inferior, then right to left)
        nodules.sort(
            key=lambda n: (-n.offset[0] - n.mask.shape[0] / 2, n.offset[2] + n.mask.shape[2] / 2)
        )
        for n in nodules:
            sl = tuple(slice(o, o + s) for o, s in zip(n.offset, n.mask.shape, strict=False))
            f_right[sl] &= ~n.mask
            f_left[sl] &= ~n.mask
            f_bone[sl] &= ~n.mask

        to_kij = lambda m: np.ascontiguousarray(orient.from_canonical(m))  # noqa: E731
        series_uid = volume.series_instance_uid
        segments: list[Segment] = []
        findings: list[Finding] = []

        def add(
            label: str,
            mask: np.ndarray,
            category,
            type_,
            region=None,  # noqa: ANN001
            measurements: list[Measurement] | None = None,
            site=None,
        ) -> None:  # noqa: ANN001
            uid = tracking_uid(series_uid, self.name, label)
            segments.append(
                Segment(
                    number=len(segments) + 1,
                    label=label,
                    category=category,
                    type=type_,
                    mask=mask,
                    tracking_id=label,
                    tracking_uid=uid,
                    anatomic_region=region,
                )
            )
            if measurements is not None:
                findings.append(
                    Finding(
                        tracking_id=label,
                        tracking_uid=uid,
                        finding_type=type_,
                        finding_site=site,
                        segment_number=len(segments),
                        measurements=measurements,
                    )
                )

        for name, m, code_ in (
            ("Right lung", f_right, CODES.RIGHT_LUNG),
            ("Left lung", f_left, CODES.LEFT_LUNG),
        ):
            if m.any():
                mk = to_kij(m)
                add(
                    name,
                    mk,
                    CODES.ANATOMICAL_STRUCTURE,
                    code_,
                    measurements=[volume_measurement(mk, volume)],
                )
        if f_bone.any():
            add("Bone", to_kij(f_bone), CODES.ANATOMICAL_STRUCTURE, CODES.BONE)
        for i, n in enumerate(nodules, start=1):
            full = np.zeros(fine_shape, bool)
            sl = tuple(slice(o, o + s) for o, s in zip(n.offset, n.mask.shape, strict=False))
            full[sl] = n.mask
            mk = to_kij(full)
            site = CODES.RIGHT_LUNG if n.side == RIGHT else CODES.LEFT_LUNG
            diam = n.long_axis_mm
            add(
                f"Nodule {i}",
                mk,
                CODES.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                CODES.NODULE,
                region=site,
                site=site,
                measurements=[
                    volume_measurement(n.mask, volume),
                    Measurement(name=CODES.LONG_AXIS, value=diam, unit=CODES.MM),
                ],
            )
        return segments, findings, notes

    @staticmethod
    def _refine_nodule(
        hu: np.ndarray, comp: np.ndarray, side: int, idx: list[np.ndarray], spacing: np.ndarray
    ) -> _Nodule | None:
        """Full-resolution nodule mask inside one coarse detection (canonical grid)."""
        roi = ndimage.binary_dilation(comp, _BALL)
        zs, ys, xs = (np.flatnonzero(roi.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
        fine_sl = []
        for ax, w in zip(idx, (zs, ys, xs), strict=False):
            inside = np.flatnonzero((ax >= w.min()) & (ax <= w.max()))
            fine_sl.append(slice(int(inside.min()), int(inside.max()) + 1))
        fsl = tuple(fine_sl)
        sub = [a[s] for a, s in zip(idx, fsl, strict=False)]
        roi_f = roi[sub[0]][:, sub[1]][:, :, sub[2]]
        core_f = comp[sub[0]][:, sub[1]][:, :, sub[2]]
        cand = roi_f & (hu[fsl] > NODULE_HU) & (hu[fsl] < BONE_HU)
        if not (cand & core_f).any():
            return None
        vox = float(np.prod(spacing))
        d_est = (6.0 * float((cand & core_f).sum()) * vox / np.pi) ** (1 / 3)
        r_mm = min(OPENING_FRACTION * d_est, MAX_OPENING_MM)
        radii = np.maximum(np.floor(r_mm / spacing).astype(int), 0)
        if radii.max() >= 1:
            grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
            se = (
                sum(((g * s) / max(r_mm, 1e-6)) ** 2 for g, s in zip(grids, spacing, strict=False))
                <= 1.0
            )
            opened = ndimage.binary_opening(cand, se)
        else:
            opened = cand
        # one detection = one nodule: the component that overlaps the detection most
        lab, n = ndimage.label(opened, structure=_BALL)
        if n == 0 or not (lab[core_f] > 0).any():
            lab, n = ndimage.label(cand & core_f, structure=_BALL)
            if n == 0:
                return None
        overlap = np.bincount(lab[core_f], minlength=n + 1)
        overlap[0] = 0
        mask = lab == int(np.argmax(overlap))
        d_eq = (6.0 * float(mask.sum()) * vox / np.pi) ** (1 / 3)
        if d_eq < MIN_NODULE_DIAMETER_MM:
            return None
        long_axis = longest_diameter_mm(mask, spacing)
        if long_axis > MAX_ELONGATION * max(d_eq, MIN_NODULE_DIAMETER_MM):
            logger.debug(
                "dropped an elongated candidate (%.1f mm long, %.1f mm eq.)", long_axis, d_eq
            )
            return None  # tubular: a vessel, not a nodule
        # the ring is taken on a crop padded beyond the region of interest, so that
        # tissue the ROI cut off counts too
        psl = tuple(
            slice(max(c.start - 3, 0), min(c.stop + 3, n))
            for c, n in zip(fsl, hu.shape, strict=False)
        )
        padded = np.zeros(tuple(c.stop - c.start for c in psl), bool)
        padded[
            tuple(
                slice(c.start - q.start, c.stop - q.start) for c, q in zip(fsl, psl, strict=False)
            )
        ] = mask
        ring = ndimage.binary_dilation(padded, _BALL, iterations=2) & ~padded
        air = float((hu[psl][ring] < LUNG_AIR_HU).mean()) if ring.any() else 0.0
        if air < MIN_AIR_RING:
            logger.debug("dropped a candidate with %.0f%% air around it", 100 * air)
            return None  # mostly surrounded by soft tissue: hilum, heart border, chest wall
        return _Nodule(
            mask=mask,
            offset=(fsl[0].start, fsl[1].start, fsl[2].start),
            side=side,  # type: ignore[arg-type]
            long_axis_mm=long_axis,
        )


def run_ct_lungs(volume: Volume, **options: Any) -> PipelineResult:
    """Convenience: ``CtLungsPipeline(**options).run(volume)``."""
    return CtLungsPipeline(**options).run(volume)

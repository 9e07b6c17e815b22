"""Evaluate ``ct-lungs``: Dice on held-out phantoms and on real CT.

(a) Held-out synthetic set: phantoms drawn from a seed stream the training
never used, at clinical-like resolution (pixel 0.9-1.3 mm, slices
1.25-2.5 mm); Dice per label (right lung, left lung, bone, nodule = all
nodule voxels) on the source grid, for the full pipeline and for the raw
network output mapped back by nearest neighbour ("net only"), plus nodule
detection counts by size.

(b) Real CT from the shared test data, against a reference mask from HU
thresholds plus morphology (:func:`hu_reference`): bone = HU > 200 inside
the body, small specks removed; lung = air (HU < -400) inside the body that
is not connected to the outside air, components of at least 1 mL, holes
filled slice by slice.  Lungs are compared as one mask (the reference has no
sides).  Series the volume loader refuses or the pipeline finds not
applicable are reported with the reason.

Run::

    python -m ai_models.training.evaluate [--n-synthetic 6] [--data DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import time
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ai_models.errors import AIModelsError, PipelineNotApplicable
from ai_models.pipelines._grid import upsample_nearest
from ai_models.pipelines.ct_lungs import CtLungsPipeline
from ai_models.training.phantoms import (
    BONE,
    LEFT_LUNG,
    NODULE,
    RIGHT_LUNG,
    phantom_volume,
    random_phantom,
)
from ai_models.types import PipelineResult, Volume

logger = logging.getLogger(__name__)

HELDOUT_SEED = 555_000_111
"""Seed of the held-out synthetic test set (training uses other streams).

The nodule candidate filters of the pipeline were tuned on a separate
validation stream (:data:`VALIDATION_SEED`), never on this one."""

VALIDATION_SEED = 987_654_321
"""Seed of the validation phantoms used to pick postprocessing thresholds."""

REAL_CT_SERIES = (
    "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm",
    "dcm_qa_ct/GE_HiSpeedDual_head_tilted",
    "dcmqi/ct-3slice",
    "pydicom/dicomdirtests_CT2",
)
"""Real CT series evaluated, relative to the shared DICOM data root."""

REF_BONE_HU = 200.0
REF_AIR_HU = -400.0
REF_BODY_HU = -500.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int((a & b).sum()) / s


def result_masks(result: PipelineResult) -> dict[str, np.ndarray]:
    """Union masks per kind (``right``, ``left``, ``bone``, ``nodule``) of a result."""
    shape = result.volume.shape
    out = {k: np.zeros(shape, bool) for k in ("right", "left", "bone", "nodule")}
    for s in result.segments:
        key = {"Right lung": "right", "Left lung": "left", "Bone": "bone"}.get(s.label, "nodule")
        out[key] |= s.mask
    return out


# -- (b) real CT -----------------------------------------------------------------


def hu_reference(volume: Volume) -> dict[str, np.ndarray]:
    """Threshold + morphology reference masks ``body``, ``bone``, ``lung``.

    Parameters
    ----------
    volume:
        CT in HU; masks are on its ``(k, i, j)`` grid.
    """
    hu = volume.array
    vox_ml = volume.voxel_volume_mm3 / 1000.0
    dense = hu > REF_BODY_HU
    lab, n = ndimage.label(dense)
    body = np.zeros_like(dense)
    if n:
        sizes = ndimage.sum_labels(dense, lab, index=np.arange(1, n + 1))
        body = lab == (int(np.argmax(sizes)) + 1)
    body = np.stack([ndimage.binary_fill_holes(s) for s in body])
    bone = (hu > REF_BONE_HU) & body
    bone = ndimage.binary_opening(bone, iterations=1) | (bone & (hu > 600))
    lab, n = ndimage.label(bone)
    if n:
        sizes = ndimage.sum_labels(bone, lab, index=np.arange(1, n + 1)) * vox_ml
        bone = np.isin(lab, np.flatnonzero(sizes >= 0.05) + 1)
    air = hu < REF_AIR_HU
    lab, n = ndimage.label(air)
    border = np.unique(
        np.concatenate(
            [lab[:, 0].ravel(), lab[:, -1].ravel(), lab[:, :, 0].ravel(), lab[:, :, -1].ravel()]
        )
    )
    inner = air & body & ~np.isin(lab, border[border > 0])
    lab, n = ndimage.label(inner)
    if n:
        sizes = ndimage.sum_labels(inner, lab, index=np.arange(1, n + 1)) * vox_ml
        inner = np.isin(lab, np.flatnonzero(sizes >= 1.0) + 1)
    lung = np.stack([ndimage.binary_fill_holes(s) for s in inner]) & body
    return {"body": body, "bone": bone, "lung": lung}


@dataclass
class RealResult:
    """Outcome for one real series."""

    series: str
    status: str
    bone_dice: float = float("nan")
    lung_dice: float = float("nan")
    ref_lung_ml: float = 0.0
    pred_lung_ml: float = 0.0
    seconds: float = 0.0


def evaluate_real(
    data_root: pathlib.Path, pipeline: CtLungsPipeline, series: tuple[str, ...] = REAL_CT_SERIES
) -> list[RealResult]:
    """Run the pipeline on real CT series and compare with :func:`hu_reference`."""
    from ai_models.volume import load_series

    out = []
    for rel in series:
        folder = data_root / rel
        if not folder.is_dir():
            out.append(RealResult(rel, "missing"))
            continue
        try:
            vol = load_series(folder)
        except AIModelsError as exc:
            out.append(
                RealResult(rel, f"refused by load_series: {type(exc).__name__}: {exc}"[:160])
            )
            continue
        try:
            t0 = time.perf_counter()
            res = pipeline.run(vol)
            sec = time.perf_counter() - t0
        except PipelineNotApplicable as exc:
            out.append(RealResult(rel, f"not applicable: {exc}"))
            continue
        ref = hu_reference(vol)
        m = result_masks(res)
        lung = m["right"] | m["left"] | m["nodule"]
        ml = vol.voxel_volume_mm3 / 1000.0
        out.append(
            RealResult(
                rel,
                "ok",
                dice(m["bone"], ref["bone"]),
                dice(lung, ref["lung"]),
                float(ref["lung"].sum()) * ml,
                float(lung.sum()) * ml,
                sec,
            )
        )
    return out


# -- (a) held-out synthetic --------------------------------------------------------


def evaluate_synthetic(n: int, pipeline: CtLungsPipeline, seed: int = HELDOUT_SEED) -> dict:
    """Dice per label on ``n`` held-out chest phantoms (full pipeline and net only).

    Returns
    -------
    dict
        ``{"pipeline": {label: dice}, "net_only": {...}, "nodules": {...},
        "seconds": [...]}`` with Dice pooled over all phantoms (voxel counts
        summed), nodule detection counts (hit = Dice > 0.1 with its own
        reference nodule) by size class.
    """
    rng = np.random.default_rng(seed)
    keys = {"right lung": RIGHT_LUNG, "left lung": LEFT_LUNG, "bone": BONE, "nodule": NODULE}
    acc = {k: np.zeros(2) for k in ("pipeline", "net_only")}
    sums: dict[str, dict[str, np.ndarray]] = {k: {lab: np.zeros(2) for lab in keys} for k in acc}
    det = {"<6mm": [0, 0], "6-10mm": [0, 0], ">=10mm": [0, 0]}
    false_pos = 0
    seconds = []
    lung_volumes = {"reported": 0, "coverage incomplete": 0, "out of range": 0}
    for i in range(n):
        px = rng.uniform(0.9, 1.3)
        sp = np.array([rng.uniform(1.25, 2.5), px, px], np.float32)
        fov = (rng.uniform(260, 380), rng.uniform(360, 440), rng.uniform(360, 440))
        ph = random_phantom(
            rng, spacing=sp, fov_mm=fov, head_fraction=0.0, n_nodules=int(rng.integers(2, 5))
        )
        vol = phantom_volume(ph, series_instance_uid=f"1.2.826.0.1.3680043.10.2.{i + 1}")
        t0 = time.perf_counter()
        res = pipeline.run(vol)
        seconds.append(time.perf_counter() - t0)
        m = result_masks(res)
        pred = {
            "right lung": m["right"],
            "left lung": m["left"],
            "bone": m["bone"],
            "nodule": m["nodule"],
        }
        work, _, _ = pipeline.predict_working(vol)
        net = upsample_nearest(work, vol.shape)  # axial phantom: canonical == (k, i, j)
        for lab, v in keys.items():
            ref = ph.labels == v
            for kind, p in (("pipeline", pred[lab]), ("net_only", net == v)):
                sums[kind][lab] += [2 * int((p & ref).sum()), int(p.sum()) + int(ref.sum())]
        # per-nodule detection
        ref_lab, nref = ndimage.label(ph.labels == NODULE)
        for nd in ph.nodules:
            cls = "<6mm" if nd.diameter_mm < 6 else ("6-10mm" if nd.diameter_mm < 10 else ">=10mm")
            c_idx = np.round(
                np.array(nd.center_zyx) / ph.spacing + (np.array(ph.image.shape) - 1) / 2
            ).astype(int)
            c_idx = np.clip(c_idx, 0, np.array(ph.image.shape) - 1)
            lab_id = ref_lab[tuple(c_idx)]
            if lab_id == 0:
                continue  # nodule clipped away (e.g. outside the lung)
            ref = ref_lab == lab_id
            det[cls][1] += 1
            if any(dice(s.mask, ref) > 0.1 for s in res.segments if s.label.startswith("Nodule")):
                det[cls][0] += 1
        all_ref = ph.labels == NODULE
        false_pos += sum(
            1 for s in res.segments if s.label.startswith("Nodule") and not (s.mask & all_ref).any()
        )
        notes = " ".join(res.notes)
        outcome = (
            "coverage incomplete"
            if "lung coverage partial" in notes
            else "out of range"
            if "outside the plausible" in notes
            else "reported"
        )
        lung_volumes[outcome] += 1
        logger.info(
            "phantom %d: %s, %.1f s, lung volumes %s", i + 1, vol.shape, seconds[-1], outcome
        )
    return {
        kind: {lab: round(float(v[0] / v[1]) if v[1] else float("nan"), 4) for lab, v in d.items()}
        for kind, d in sums.items()
    } | {
        "nodules_detected": {k: f"{a}/{b}" for k, (a, b) in det.items()},
        "nodule_false_positives": false_pos,
        "lung_volumes": lung_volumes,
        "seconds": [round(s, 2) for s in seconds],
    }


def full_size_volume(seed: int = 11) -> Volume:
    """A 300-slice 512x512 synthetic chest CT (0.75 mm pixels, 1.25 mm slices).

    Made from a phantom at twice the spacing, repeated 2x along every axis
    (generation at full size would take minutes).
    """
    rng = np.random.default_rng(seed)
    ph = random_phantom(
        rng,
        spacing=np.array([2.5, 1.5, 1.5], np.float32),
        fov_mm=(375.0, 384.0, 384.0),
        head_fraction=0.0,
        n_nodules=3,
    )
    img = ph.image
    for ax in range(3):
        img = np.repeat(img, 2, axis=ax)
    ph.image, ph.spacing = img, ph.spacing / 2
    ph.labels = np.zeros((1, 1, 1), np.uint8)  # not used
    return phantom_volume(ph, series_instance_uid="1.2.826.0.1.3680043.10.3.1")


def time_full_size(pipeline: CtLungsPipeline, repeats: int = 2) -> list[dict[str, float]]:
    """Per-stage seconds of ``repeats`` runs on :func:`full_size_volume` (first one cold)."""
    vol = full_size_volume()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = pipeline.run(vol)
        out.append(dict(res.timings, total=time.perf_counter() - t0))
    return out


def main(argv: list[str] | None = None) -> None:
    """Print both evaluations."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-synthetic", type=int, default=6)
    ap.add_argument(
        "--data",
        type=pathlib.Path,
        default=pathlib.Path(
            os.environ.get(
                "DICOM_TEST_DATA",
                pathlib.Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom",
            )
        ),
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=pathlib.Path, default=None)
    ap.add_argument(
        "--timing",
        action="store_true",
        help="also time the pipeline on a 300-slice 512x512 synthetic CT",
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    pipe = CtLungsPipeline(weights=args.weights, device="cpu")
    if args.n_synthetic > 0:
        syn = evaluate_synthetic(args.n_synthetic, pipe)
        print(f"\nHeld-out synthetic phantoms (n={args.n_synthetic}), Dice on the source grid:")
        print(f"{'label':<12} {'pipeline':>9} {'net only':>9}")
        for lab in ("right lung", "left lung", "bone", "nodule"):
            print(f"{lab:<12} {syn['pipeline'][lab]:>9.3f} {syn['net_only'][lab]:>9.3f}")
        print(
            "nodules detected:",
            syn["nodules_detected"],
            " false-positive nodules:",
            syn["nodule_false_positives"],
            " seconds/phantom:",
            syn["seconds"],
        )
        print("lung volumes:", syn["lung_volumes"])
    if args.timing:
        print("\nTiming on a 300x512x512 synthetic CT (s):")
        for i, t in enumerate(time_full_size(pipe)):
            print(
                ("cold " if i == 0 else "warm ") + "  ".join(f"{k} {v:.2f}" for k, v in t.items())
            )
    print("\nReal CT vs HU-threshold reference:")
    print(f"{'series':<46} {'bone':>6} {'lung':>6} {'ref lung mL':>11} {'pred mL':>8}  status")
    for r in evaluate_real(args.data.resolve(), pipe):
        print(
            f"{r.series:<46} {r.bone_dice:>6.3f} {r.lung_dice:>6.3f} {r.ref_lung_ml:>11.1f} "
            f"{r.pred_lung_ml:>8.1f}  {r.status}"
        )


if __name__ == "__main__":
    main()

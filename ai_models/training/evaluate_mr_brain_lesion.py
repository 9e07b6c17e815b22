"""Evaluate ``mr-brain-lesion``: Dice on held-out phantoms, real MR series, timing.

(a) Held-out synthetic set: brain phantoms from a seed stream the training
never used, "scanned" at clinical-like resolution (pixel 0.8-1.2 mm, slices
1-6 mm) in every plane (axial, sagittal, coronal, oblique) and contrast
(T1, T2, FLAIR-like), cycled so each is represented; Dice per
label on the source grid (brain = the whole brain segment against the
reference brain + lesion + edema; lesion = all lesion voxels; edema),
pooled over the set (voxel counts summed) and per phantom, plus lesion
detection (a hit overlaps its reference lesion with Dice > 0.1) and
false-positive lesions.

(b) Real MR from the shared test data: which series run and which are refused
(with the reason); for the series that run, the brain and lesion volumes.
The shared data hold no brain MR with a lesion (the one volume that runs is a
scan of a QA phantom), so accuracy on real images is not measured.

Run::

    python -m ai_models.training.evaluate_mr_brain_lesion [--n-synthetic 12] [--timing]
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ai_models.errors import AIModelsError, PipelineNotApplicable
from ai_models.pipelines.mr_brain_lesion import MrBrainLesionPipeline
from ai_models.training.brain_phantoms import (
    BRAIN,
    EDEMA,
    LESION,
    BrainPhantom,
    phantom_volume,
    random_acquisition,
    random_anatomy,
    random_contrast,
    render,
)
from ai_models.types import PipelineResult

logger = logging.getLogger(__name__)

HELDOUT_SEED = 777_000_222
"""Seed of the held-out synthetic test set (training uses other streams)."""

HELDOUT_PLANES = ("axial", "sagittal", "coronal", "oblique")
HELDOUT_CONTRASTS = ("T1", "T2", "FLAIR")

REAL_MR_SERIES = (
    "dcm_qa_enh/Philips_Achieva_enhanced",
    "dcmqi/qin-prostate-01-0001_adc",
    "dcm_qa_table/GE_SIGNA_Premier_3plane_localizer",
    "dcm_qa_enh/Siemens_XA10_enhanced",
    "dcm_qa_ts/siemens_trio_ax_asc_35sl/1.dcm",
    "pydicom/transfer_syntaxes/MR_small.dcm",
    "pydicom_data/enhanced/emri_small.dcm",
)
"""Real MR series evaluated, relative to the shared DICOM data root."""


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return float("nan") if s == 0 else 2.0 * int((a & b).sum()) / s


def result_masks(result: PipelineResult) -> dict[str, np.ndarray]:
    """Union masks ``brain``, ``lesion``, ``edema`` of a result (source grid)."""
    shape = result.volume.shape
    out = {k: np.zeros(shape, bool) for k in ("brain", "lesion", "edema")}
    for s in result.segments:
        key = "brain" if s.label == "Brain" else ("edema" if s.label == "Edema" else "lesion")
        out[key] |= s.mask
    return out


def reference_masks(phantom: BrainPhantom) -> dict[str, np.ndarray]:
    """Reference ``brain`` (whole brain incl. lesion and edema), ``lesion``, ``edema``."""
    lab = phantom.labels
    return {
        "brain": np.isin(lab, (BRAIN, LESION, EDEMA)),
        "lesion": lab == LESION,
        "edema": lab == EDEMA,
    }


def heldout_phantom(
    rng: np.random.Generator,
    plane: str,
    contrast: str,
    n_lesions: int,
    pixel_mm: tuple[float, float] = (0.8, 1.2),
    slice_mm: tuple[float, float] = (1.0, 6.0),
) -> BrainPhantom:
    """One clinical-like held-out phantom."""
    anat = random_anatomy(rng, n_lesions=n_lesions)
    acq = random_acquisition(rng, plane=plane, pixel_mm=pixel_mm, slice_mm=slice_mm)
    return render(anat, acq, random_contrast(rng, contrast), rng)


def evaluate_synthetic(
    n: int, pipeline: MrBrainLesionPipeline, seed: int = HELDOUT_SEED
) -> dict[str, Any]:
    """Dice per label on ``n`` held-out phantoms (see the module docstring)."""
    rng = np.random.default_rng(seed)
    keys = ("brain", "lesion", "edema")
    sums = {k: np.zeros(2) for k in keys}
    cases = []
    hits = total = false_pos = 0
    for i in range(n):
        plane = HELDOUT_PLANES[i % len(HELDOUT_PLANES)]
        contrast = HELDOUT_CONTRASTS[i % len(HELDOUT_CONTRASTS)]  # 12: every pair once
        ph = heldout_phantom(rng, plane, contrast, n_lesions=int(rng.integers(1, 3)))
        vol = phantom_volume(ph, series_instance_uid=f"1.2.826.0.1.3680043.10.6.{i + 1}")
        t0 = time.perf_counter()
        res = pipeline.run(vol)
        sec = time.perf_counter() - t0
        m = result_masks(res)
        ref = reference_masks(ph)
        case: dict[str, Any] = {
            "plane": plane,
            "contrast": contrast,
            "shape": list(vol.shape),
            "spacing": [round(float(s), 2) for s in vol.spacing],
            "seconds": round(sec, 2),
        }
        for k in keys:
            sums[k] += [2 * int((m[k] & ref[k]).sum()), int(m[k].sum()) + int(ref[k].sum())]
            case[k] = round(dice(m[k], ref[k]), 3)
        ref_lab, nref = ndimage.label(ref["lesion"], structure=np.ones((3, 3, 3)))
        lesions = [s.mask for s in res.segments if s.label.startswith("Lesion")]
        for j in range(1, nref + 1):
            r = ref_lab == j
            if r.sum() * vol.voxel_volume_mm3 < 100.0:  # clipped by the field of view
                continue
            total += 1
            hits += any(dice(les, r) > 0.1 for les in lesions)
        false_pos += sum(1 for les in lesions if not (les & ref["lesion"]).any())
        cases.append(case)
        logger.info("phantom %d: %s", i + 1, case)
    pooled = {k: round(float(v[0] / v[1]) if v[1] else float("nan"), 4) for k, v in sums.items()}
    return {
        "dice": pooled,
        "lesions_detected": f"{hits}/{total}",
        "false_positive_lesions": false_pos,
        "cases": cases,
    }


@dataclass
class RealResult:
    """Outcome for one real series."""

    series: str
    status: str
    brain_ml: float = float("nan")
    lesion_ml: float = float("nan")
    edema_ml: float = float("nan")
    seconds: float = 0.0


def evaluate_real(
    data_root: pathlib.Path,
    pipeline: MrBrainLesionPipeline,
    series: tuple[str, ...] = REAL_MR_SERIES,
) -> list[RealResult]:
    """Run the pipeline (read_series, check, run) on real MR series."""
    from ai_models.dicom_files import discover_series

    out = []
    for rel in series:
        path = data_root / rel
        if not path.exists():
            out.append(RealResult(rel, "missing"))
            continue
        found = discover_series([path])
        if len(found) != 1:
            out.append(RealResult(rel, f"{len(found)} series found"))
            continue
        files = next(iter(found.values()))
        try:
            vol = pipeline.read_series(files)
        except AIModelsError as exc:
            out.append(RealResult(rel, f"refused by read_series: {type(exc).__name__}: {exc}"))
            continue
        try:
            t0 = time.perf_counter()
            res = pipeline.run(vol)
            sec = time.perf_counter() - t0
        except PipelineNotApplicable as exc:
            out.append(RealResult(rel, f"not applicable: {exc}"))
            continue
        m = result_masks(res)
        ml = vol.voxel_volume_mm3 / 1000.0
        out.append(
            RealResult(
                rel,
                "ok",
                float(m["brain"].sum()) * ml,
                float(m["lesion"].sum()) * ml,
                float(m["edema"].sum()) * ml,
                sec,
            )
        )
    return out


def time_full_size(pipeline: MrBrainLesionPipeline, repeats: int = 2) -> list[dict[str, float]]:
    """Per-stage seconds on a 176x256x256 1 mm sagittal synthetic series (first run cold)."""
    rng = np.random.default_rng(31337)
    anat = random_anatomy(rng, n_lesions=1)
    acq = random_acquisition(
        rng, plane="sagittal", pixel_mm=(1.0, 1.0), slice_mm=(1.0, 1.0), fov_mm=(256, 256)
    )
    ph = render(anat, acq, random_contrast(rng, "T1"), rng, max_sub=1)
    vol = phantom_volume(ph, series_instance_uid="1.2.826.0.1.3680043.10.7.1")
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = pipeline.run(vol)
        out.append(dict(res.timings, total=time.perf_counter() - t0, slices=float(vol.shape[0])))
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the evaluations."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--n-synthetic", type=int, default=12)
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
    ap.add_argument("--timing", action="store_true", help="also time a 1 mm full-head series")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    pipe = MrBrainLesionPipeline(weights=args.weights, device="cpu")
    if args.n_synthetic > 0:
        syn = evaluate_synthetic(args.n_synthetic, pipe)
        print(f"\nHeld-out synthetic phantoms (n={args.n_synthetic}), Dice on the source grid:")
        for k, v in syn["dice"].items():
            print(f"  {k:<7} {v:.3f}")
        print(
            "  lesions detected:",
            syn["lesions_detected"],
            " false-positive lesions:",
            syn["false_positive_lesions"],
        )
        for c in syn["cases"]:
            print("   ", c)
    if args.timing:
        print("\nTiming on a 1 mm full-head synthetic series (s):")
        for i, t in enumerate(time_full_size(pipe)):
            print(
                ("cold " if i == 0 else "warm ") + "  ".join(f"{k} {v:.2f}" for k, v in t.items())
            )
    print("\nReal MR series:")
    for r in evaluate_real(args.data.resolve(), pipe):
        print(
            f"  {r.series:<46} brain {r.brain_ml:7.1f} mL  lesion {r.lesion_ml:6.1f} mL  "
            f"edema {r.edema_ml:6.1f} mL  {r.status}"
        )


if __name__ == "__main__":
    main()

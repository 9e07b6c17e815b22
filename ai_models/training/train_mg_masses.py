"""Train the ``mg-masses`` demonstration detector on synthetic mammograms.

Reproduces ``ai_models/weights/mg_masses.pt`` (a float16 state dict),
``ai_models/weights/mg_masses.json`` (architecture, operating threshold,
seed, held-out metrics, sha256) and, through
:func:`ai_models.training.calibrate_ood.calibrate`, the OOD statistics
``mg_masses.ood.npz`` of the new weights::

    python -m ai_models.training.train_mg_masses --seed 20240611

or, as the shipped weights were made, a fine-tune of earlier weights on the
current phantoms (``--init-from``; the sidecar's ``training`` block records
the command and the sha256 of the initial weights)::

    python -m ai_models.training.train_mg_masses --seed 20251206 --threads 1 \
        --init-from ai_models/weights/mg_masses.pt --steps 2400 --lr 1e-3

(the initial weights are read before the new ones replace them; their
sha256 names the version in the repository history).

Everything random comes from generators seeded by ``--seed`` and torch runs
with deterministic algorithms, so the same command on the same software
stack and thread count gives the same weights.

Data
----
Phantoms from :func:`ai_models.training.mammo_phantoms.random_mammo_phantom`
(0-3 masses each, 30 % without any), drawn at the working size and turned
into network inputs by the pipeline's own
:func:`~ai_models.pipelines.mg_masses.model_input`.  Three disjoint seed
streams: training (``seed``), validation (``seed + 1``: picks the operating
threshold, the lowest score at which the detector makes at most
:data:`TARGET_FP_PER_IMAGE` false positives per image) and the held-out test
set (:data:`HELDOUT_SEED`, measured on the weights as stored, after the
float16 round trip).  Training augments orientation (flips), scale (a random
crop of 80-100 % that the network's transform enlarges back to the working
size) and intensity (gamma, contrast, noise).

Metrics (:func:`evaluate`)
--------------------------
A detection is a true positive when its box overlaps a not yet matched mass
box with IoU >= 0.5 (:data:`IOU_HIT`); detections are matched in descending
score order.  AP@0.5 is the area under the all-point interpolated
precision-recall curve (PASCAL VOC 2010+); FROC points give the sensitivity
at 0.25, 0.5 and 1 false positive per image.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ai_models.pipelines.mg_masses import (
    ARCHITECTURE,
    WORK_SIZE,
    build_detector,
    model_input,
)
from ai_models.training.export import (
    load_initial_weights,
    save_state_dict,
    seed_torch,
    write_sidecar,
)
from ai_models.training.loop import adamw_one_cycle, optimise
from ai_models.training.mammo_phantoms import random_mammo_phantom

logger = logging.getLogger(__name__)

__all__ = [
    "HELDOUT_SEED",
    "IOU_HIT",
    "Sample",
    "average_precision",
    "box_iou",
    "evaluate",
    "make_set",
    "match_detections",
    "predict",
    "train",
]

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped weights live."""

HELDOUT_SEED = 424_242_011
"""Seed of the held-out test phantoms (never used for training or the threshold)."""

IOU_HIT = 0.5
"""IoU at which a detection hits a mass."""

TARGET_FP_PER_IMAGE = 0.25
"""False positives per image allowed at the operating threshold (on validation)."""

FROC_POINTS = (0.25, 0.5, 1.0)
"""False positives per image at which sensitivity is reported."""


@dataclass
class Sample:
    """One network input and its mass boxes (working-image coordinates)."""

    x: np.ndarray
    boxes: np.ndarray
    view: str
    laterality: str


def make_set(rng: np.random.Generator, n: int, size: int = WORK_SIZE) -> list[Sample]:
    """``n`` phantoms as network inputs (float16) with their boxes."""
    out = []
    for _ in range(n):
        ph = random_mammo_phantom(rng, rows=size)
        x, (fy, fx) = model_input(ph.image, size)
        boxes = ph.boxes * np.array([fx, fy, fx, fy], dtype=np.float32)
        out.append(Sample(x.astype(np.float16), boxes.astype(np.float32), ph.view, ph.laterality))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of ``(x0, y0, x1, y1)`` boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def predict(
    net: torch.nn.Module, xs: Sequence[np.ndarray], batch: int = 8
) -> list[dict[str, np.ndarray]]:
    """Boxes and scores per working image (eval mode, no gradients)."""
    net.eval()
    out: list[dict[str, np.ndarray]] = []
    with torch.inference_mode():
        for i in range(0, len(xs), batch):
            ts = [
                torch.from_numpy(np.asarray(x, dtype=np.float32))[None] for x in xs[i : i + batch]
            ]
            for det in net(ts):
                out.append(
                    {
                        "boxes": det["boxes"].numpy().reshape(-1, 4),
                        "scores": det["scores"].numpy().reshape(-1),
                    }
                )
    return out


def match_detections(
    dets: Sequence[dict[str, np.ndarray]], truths: Sequence[np.ndarray], iou: float = IOU_HIT
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and hit flags of all detections, and the number of masses.

    Per image, detections are taken in descending score order; each hits the
    unmatched mass it overlaps most if that IoU is at least ``iou``.
    """
    scores: list[float] = []
    hits: list[bool] = []
    n_true = 0
    for det, gt in zip(dets, truths, strict=True):
        gt = np.asarray(gt).reshape(-1, 4)
        n_true += len(gt)
        order = np.argsort(-det["scores"], kind="stable")
        used = np.zeros(len(gt), dtype=bool)
        ious = box_iou(det["boxes"][order], gt)
        for r, idx in enumerate(order):
            hit = False
            if len(gt):
                cand = np.where(used, -1.0, ious[r])
                j = int(np.argmax(cand))
                if cand[j] >= iou:
                    used[j] = True
                    hit = True
            scores.append(float(det["scores"][idx]))
            hits.append(hit)
    return np.asarray(scores), np.asarray(hits, dtype=bool), n_true


def average_precision(scores: np.ndarray, hits: np.ndarray, n_true: int) -> float:
    """All-point interpolated AP (area under the precision-recall curve)."""
    if n_true == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = np.concatenate([[0.0], tp / n_true, [tp[-1] / n_true if len(tp) else 0.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1), [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum((recall[1:] - recall[:-1]) * precision[1:]))


def sensitivity_at(
    scores: np.ndarray, hits: np.ndarray, n_true: int, n_images: int, fp_per_image: float
) -> tuple[float, float]:
    """Sensitivity at the lowest threshold with at most ``fp_per_image`` FPs/image.

    Returns (sensitivity, threshold).
    """
    order = np.argsort(-scores, kind="stable")
    s, h = scores[order], hits[order]
    fp = np.cumsum(~h)
    tp = np.cumsum(h)
    allowed = fp_per_image * n_images
    ok = np.flatnonzero(fp <= allowed)
    if len(ok) == 0 or n_true == 0:
        return 0.0, 1.0
    last = int(ok[-1])
    # do not split detections of equal score
    thr = float(s[last])
    return float(tp[last] / n_true), thr


def evaluate(
    net: torch.nn.Module, samples: Sequence[Sample], threshold: float | None = None
) -> dict[str, Any]:
    """AP@0.5, FROC sensitivities and (at ``threshold``) sensitivity and FP/image."""
    dets = predict(net, [s.x for s in samples])
    scores, hits, n_true = match_detections(dets, [s.boxes for s in samples])
    n = len(samples)
    out: dict[str, Any] = {
        "n_images": n,
        "n_masses": n_true,
        "ap50": round(average_precision(scores, hits, n_true), 4),
        "froc": {
            str(f): round(sensitivity_at(scores, hits, n_true, n, f)[0], 4) for f in FROC_POINTS
        },
    }
    if threshold is not None:
        keep = scores >= threshold
        out["at_threshold"] = {
            "threshold": round(float(threshold), 4),
            "sensitivity": round(float(hits[keep].sum() / max(n_true, 1)), 4),
            "fp_per_image": round(float((~hits[keep]).sum() / max(n, 1)), 4),
        }
    return out


def _augment(s: Sample, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Flips, a random crop (zoom), gamma/contrast/noise; boxes follow."""
    x: np.ndarray = s.x.astype(np.float32)
    boxes = s.boxes.copy()
    h, w = x.shape
    if rng.random() < 0.5:
        x = x[:, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.2:
        x = x[::-1]
        boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
    if rng.random() < 0.5:
        f = rng.uniform(0.8, 1.0)
        ch, cw = int(h * f), int(w * f)
        r0, c0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        x = x[r0 : r0 + ch, c0 : c0 + cw]
        area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        boxes = boxes - np.array([c0, r0, c0, r0], dtype=np.float32)
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, cw)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, ch)
        kept = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), axis=1)
        boxes = boxes[kept >= 0.6 * np.maximum(area, 1e-6)]
    x = np.clip(x, 0.0, 1.0) ** float(np.exp(rng.normal(0.0, 0.2)))
    x = (x - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.05, 0.05)
    x = x + rng.normal(0.0, rng.uniform(0.0, 0.02), x.shape)
    t = torch.from_numpy(np.ascontiguousarray(np.clip(x, 0.0, 1.0), dtype=np.float32))[None]
    target = {
        "boxes": torch.from_numpy(boxes.reshape(-1, 4).astype(np.float32)),
        "labels": torch.zeros(len(boxes), dtype=torch.int64),
    }
    return t, target


def train(
    seed: int,
    out_dir: pathlib.Path,
    n_train: int = 1500,
    n_val: int = 150,
    n_test: int = 200,
    steps: int = 3000,
    batch_size: int = 8,
    lr: float = 2e-3,
    threads: int = 1,
    init_from: pathlib.Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, pick the threshold, measure held-out metrics, write ``mg_masses.pt`` + ``.json``.

    Returns
    -------
    dict
        The metadata written to ``mg_masses.json``.
    """
    seed_torch(seed, threads, deterministic=True)
    rng = np.random.default_rng(seed + 2)
    t0 = time.perf_counter()
    train_set = make_set(np.random.default_rng(seed), n_train)
    val_set = make_set(np.random.default_rng(seed + 1), n_val)
    logger.info(
        "generated %d + %d phantoms (%d + %d masses) in %.1f s",
        n_train,
        n_val,
        sum(len(s.boxes) for s in train_set),
        sum(len(s.boxes) for s in val_set),
        time.perf_counter() - t0,
    )

    net = build_detector()
    init_sha = load_initial_weights(net, init_from)
    opt, sched = adamw_one_cycle(net, lr, steps, weight_decay=1e-4, pct_start=0.1)
    running: dict[str, float] = {}  # summed loss terms since the last log line

    def step_loss(step: int) -> torch.Tensor:
        """Random training phantoms, augmented; the detector's loss terms summed."""
        idx = rng.choice(n_train, size=batch_size, replace=False)
        batch = [_augment(train_set[int(i)], rng) for i in idx]
        losses = net([b[0] for b in batch], [b[1] for b in batch])
        loss = sum(losses.values())
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        return loss

    def log_terms(step: int, loss: torch.Tensor) -> None:
        """Every 50 steps, log the mean of each loss term."""
        if step % 50 == 0:
            logger.info(
                "step %d/%d %s (%.0f s)",
                step,
                steps,
                {k: round(v / 50, 4) for k, v in running.items()},
                time.perf_counter() - t_train,
            )
            running.clear()

    t_train = time.perf_counter()
    train_s = optimise(
        net, opt, sched, steps, step_loss, after_step=log_terms, clip_grad_norm=10.0, log_every=0
    )

    # Store in float16 and measure what is stored.
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / "mg_masses.pt"
    save_state_dict(net, pt, half=True)
    stored = build_detector()
    stored.load_state_dict({k: v.float() for k, v in torch.load(pt, weights_only=True).items()})
    stored.eval()
    vdets = predict(stored, [s.x for s in val_set])
    vs, vh, vn = match_detections(vdets, [s.boxes for s in val_set])
    _, threshold = sensitivity_at(vs, vh, vn, len(val_set), TARGET_FP_PER_IMAGE)
    threshold = round(max(threshold, 0.05), 4)
    val = evaluate(stored, val_set, threshold)
    test_set = make_set(np.random.default_rng(HELDOUT_SEED), n_test)
    test = evaluate(stored, test_set, threshold)
    logger.info("validation %s", val)
    logger.info("held-out %s", test)

    meta: dict[str, Any] = {
        "name": "mg-masses",
        "architecture": ARCHITECTURE,
        "input": "1 channel: presentation image (VOI applied, MONOCHROME1 inverted), "
        "area-averaged to work_size pixels on the longer side, divided by its 99.5th "
        "percentile and clipped to 0..1; (x - 0.5) / 0.25 inside the network",
        "dtype": "float16",
        "threshold": threshold,
        "threshold_from": (
            f"lowest score with <= {TARGET_FP_PER_IMAGE} false positives per image on "
            f"{n_val} validation phantoms (seed + 1)"
        ),
        "classes": [{"label": 0, "name": "mass", "code": ["4147007", "SCT", "Mass"]}],
        "training": {
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "steps": steps,
            "batch_size": batch_size,
            "lr": lr,
            "threads": threads,
            "initialised_from": init_from.name if init_from is not None else None,
            "initialised_from_sha256": init_sha,
            "command": command,
            "train_seconds": round(train_s, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "data": "synthetic mammograms (ai_models.training.mammo_phantoms): CC and MLO, "
            "left and right, 0-3 round/oval/irregular/spiculated masses of 5-40 mm; with "
            "seeded variants of real mammograms: film grain, density non-uniformity and "
            "scanner lines, burned-in view labels and lead markers (never masses)",
        },
        "metrics": {
            "hit": f"IoU >= {IOU_HIT} with a mass box",
            "validation": val,
            "heldout": test,
            "heldout_seed": HELDOUT_SEED,
        },
    }
    meta = write_sidecar(out_dir / "mg_masses.json", meta, pt)
    # The OOD statistics belong to these weights: recompute them now.
    from ai_models.pipelines import MG_MASSES
    from ai_models.training.calibrate_ood import calibrate

    calibrate(MG_MASSES, out_dir, threads=threads)
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--out-dir", type=pathlib.Path, default=WEIGHTS_DIR)
    ap.add_argument("--n-train", type=int, default=1500)
    ap.add_argument("--n-val", type=int, default=150)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--init-from",
        type=pathlib.Path,
        default=None,
        help="fine-tune: start from these weights (a state dict .pt) instead of random ones",
    )
    args = ap.parse_args(argv)
    words = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m ai_models.training.train_mg_masses", *words])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(
        args.seed,
        args.out_dir,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        init_from=args.init_from,
        command=command,
    )


if __name__ == "__main__":
    main()

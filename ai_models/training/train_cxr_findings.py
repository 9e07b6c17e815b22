"""Train the ``cxr-findings`` demonstration classifier on synthetic radiographs.

Reproduces ``ai_models/weights/cxr_findings.pt`` (a float16 state dict),
``ai_models/weights/cxr_findings.json`` (architecture, input size, labels
with codes and thresholds, seed, held-out metrics, sha256) and, through
:func:`ai_models.training.calibrate_ood.calibrate`, the OOD statistics
``cxr_findings.ood.npz`` of the new weights::

    python -m ai_models.training.train_cxr_findings --seed 20240607 --threads 1

or, as the shipped weights were made, a fine-tune of earlier weights on the
current phantoms (``--init-from``; the sidecar's ``training`` block records
the command and the sha256 of the initial weights)::

    python -m ai_models.training.train_cxr_findings --seed 20251205 --threads 1 \
        --init-from ai_models/weights/cxr_findings.pt --epochs 4 --lr 5e-4

(the initial weights are read before the new ones replace them; their
sha256 names the version in the repository history).

Everything random comes from generators seeded by ``--seed`` and torch runs
with deterministic algorithms, so the same command on the same software
stack and thread count gives the same weights (the shipped ones were trained
on one thread; the sidecar records the thread count).  The network is
:func:`~ai_models.pipelines.cxr_findings.build_network` (torchvision
``ResNet``, one block per stage, one grey input channel).

Data
----
Phantoms from :func:`ai_models.training.cxr_phantoms.random_cxr_phantom`
(each finding present with probability 0.4, independently), drawn at 240
pixels and turned into network inputs by the pipeline's own
:func:`~ai_models.pipelines.cxr_findings.model_input`.  Three disjoint seed
streams: training (``seed``), validation (``seed + 1``, picks each
finding's threshold by Youden's J) and the held-out test set
(:data:`HELDOUT_SEED`, AUC per finding measured on the weights as stored,
after the float16 round trip).  Training augments intensities (gamma,
contrast, offset, noise) and geometry (scale, shift, small rotation).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ai_models.pipelines.cxr_findings import (
    ARCHITECTURE,
    DEFAULT_LABELS,
    INPUT_SIZE,
    build_network,
    model_input,
)
from ai_models.training.cxr_phantoms import FINDINGS, random_cxr_phantom
from ai_models.training.export import (
    load_initial_weights,
    save_state_dict,
    seed_torch,
    write_sidecar,
)
from ai_models.training.loop import adamw_one_cycle, optimise

logger = logging.getLogger(__name__)

__all__ = [
    "HELDOUT_SEED",
    "PHANTOM_SIZE",
    "evaluate",
    "make_set",
    "roc_auc",
    "train",
    "youden_threshold",
]

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped weights live."""

PHANTOM_SIZE = 240
"""Longer side (pixels) of the phantoms before :func:`model_input`."""

HELDOUT_SEED = 424_242_007
"""Seed of the held-out test phantoms (never used for training or thresholds)."""

CAM_LAYER = "layer4"
"""Feature layer of the Grad-CAM explanations."""


def make_set(
    rng: np.random.Generator, n: int, size: int = INPUT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` phantoms as network inputs ``(n, size, size)`` float16 and labels ``(n, 4)``."""
    xs = np.zeros((n, size, size), np.float16)
    ys = np.zeros((n, len(FINDINGS)), np.float32)
    for i in range(n):
        ph = random_cxr_phantom(rng, PHANTOM_SIZE)
        xs[i] = model_input(ph.image, size)[0]
        ys[i] = ph.labels
    return xs, ys


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties); NaN
    when one class is missing."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising sensitivity + specificity - 1 (midpoint between scores)."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels).astype(bool)
    cand = np.unique(scores)
    best, best_t = -1.0, 0.5
    for t in cand:
        pred = scores >= t
        sens = (pred & labels).sum() / max(labels.sum(), 1)
        spec = (~pred & ~labels).sum() / max((~labels).sum(), 1)
        j = sens + spec - 1.0
        if j > best:
            below = scores[scores < t]
            best, best_t = j, float((t + below.max()) / 2.0) if len(below) else float(t)
    return best_t


def predict(net: torch.nn.Module, xs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Sigmoid probabilities ``(n, 4)`` for network inputs ``(n, H, W)``."""
    net.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(xs), batch):
            x = torch.from_numpy(xs[i : i + batch].astype(np.float32))[:, None]
            out.append(torch.sigmoid(net(x)).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(FINDINGS)), np.float32)


def evaluate(
    net: torch.nn.Module, xs: np.ndarray, ys: np.ndarray, thresholds: list[float] | None = None
) -> dict[str, dict[str, float]]:
    """AUC (and sensitivity / specificity at ``thresholds``) per finding."""
    probs = predict(net, xs)
    out: dict[str, dict[str, float]] = {}
    for j, name in enumerate(FINDINGS):
        row = {"auc": round(roc_auc(probs[:, j], ys[:, j]), 4), "n_positive": int(ys[:, j].sum())}
        if thresholds is not None:
            pred = probs[:, j] >= thresholds[j]
            pos = ys[:, j] > 0.5
            row["sensitivity"] = round(float((pred & pos).sum() / max(pos.sum(), 1)), 4)
            row["specificity"] = round(float((~pred & ~pos).sum() / max((~pos).sum(), 1)), 4)
        out[name] = row
    return out


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random intensity and geometry changes of a batch ``(B, 1, H, W)`` (standardised)."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(b, 1, 1, 1, generator=gen) * (hi - lo) + lo

    img = (x * 0.25 + 0.5).clamp(0.0, 1.0)
    img = img ** torch.exp(torch.randn(b, 1, 1, 1, generator=gen) * 0.25)
    img = (img - 0.5) * u(0.8, 1.2) + 0.5 + u(-0.08, 0.08)
    img = img + torch.randn(img.shape, generator=gen) * u(0.0, 0.03)
    scale = u(0.9, 1.1).view(b)
    rot = (torch.rand(b, generator=gen) - 0.5) * 0.14
    tx, ty = ((torch.rand(2, b, generator=gen) - 0.5) * 0.12).unbind(0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.cos(rot) / scale
    theta[:, 0, 1] = -torch.sin(rot) / scale
    theta[:, 1, 0] = torch.sin(rot) / scale
    theta[:, 1, 1] = torch.cos(rot) / scale
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, list(img.shape), align_corners=False)
    img = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (img - 0.5) / 0.25


def train(
    seed: int,
    out_dir: pathlib.Path,
    n_train: int = 2000,
    n_val: int = 300,
    n_test: int = 500,
    epochs: int = 7,
    batch_size: int = 32,
    lr: float = 2e-3,
    threads: int = 2,
    init_from: pathlib.Path | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Train, pick thresholds, measure held-out AUC, write ``cxr_findings.pt`` + ``.json``.

    Returns
    -------
    dict
        The metadata written to ``cxr_findings.json``.
    """
    seed_torch(seed, threads, deterministic=True)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xs, ys = make_set(np.random.default_rng(seed), n_train)
    xv, yv = make_set(np.random.default_rng(seed + 1), n_val)
    logger.info(
        "generated %d + %d phantoms in %.1f s; prevalence %s",
        n_train,
        n_val,
        time.perf_counter() - t0,
        np.round(ys.mean(0), 2).tolist(),
    )

    net = build_network()
    init_sha = load_initial_weights(net, init_from)
    steps_per_epoch = n_train // batch_size
    opt, sched = adamw_one_cycle(
        net, lr, epochs * steps_per_epoch, weight_decay=1e-4, pct_start=0.15
    )
    order = np.arange(n_train)  # this epoch's order of the training phantoms
    total = 0.0  # this epoch's summed loss

    def step_loss(step: int) -> torch.Tensor:
        """The next batch of this epoch's order (a new order as an epoch starts), augmented."""
        nonlocal order, total
        i = (step - 1) % steps_per_epoch
        if i == 0:
            order = torch.randperm(n_train, generator=gen).numpy()
            total = 0.0
        idx = np.sort(order[i * batch_size : (i + 1) * batch_size])
        x = _augment(torch.from_numpy(xs[idx].astype(np.float32))[:, None], gen)
        y = torch.from_numpy(ys[idx])
        return F.binary_cross_entropy_with_logits(net(x), y)

    def end_of_epoch(step: int, loss: torch.Tensor) -> None:
        """Sum the loss; as an epoch ends, log it with the validation AUC."""
        nonlocal total
        total += float(loss.detach())
        if step % steps_per_epoch == 0:
            val = evaluate(net, xv, yv)
            logger.info(
                "epoch %d/%d loss %.4f val AUC %s (%.0f s)",
                step // steps_per_epoch,
                epochs,
                total / steps_per_epoch,
                {k: v["auc"] for k, v in val.items()},
                time.perf_counter() - t_train,
            )
            net.train()

    t_train = time.perf_counter()
    train_s = optimise(
        net,
        opt,
        sched,
        epochs * steps_per_epoch,
        step_loss,
        after_step=end_of_epoch,
        log_every=0,
    )

    # Store in float16 and measure what is stored.
    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / "cxr_findings.pt"
    save_state_dict(net, pt, half=True)
    stored = build_network()
    stored.load_state_dict({k: v.float() for k, v in torch.load(pt, weights_only=True).items()})
    pv = predict(stored, xv)
    thresholds = [round(youden_threshold(pv[:, j], yv[:, j]), 4) for j in range(len(FINDINGS))]
    xt, yt = make_set(np.random.default_rng(HELDOUT_SEED), n_test)
    test = evaluate(stored, xt, yt, thresholds)
    logger.info("held-out AUC %s", {k: v["auc"] for k, v in test.items()})

    labels = []
    for lab, t in zip(DEFAULT_LABELS, thresholds, strict=True):
        labels.append(
            {
                "name": lab.name,
                "code": [
                    lab.finding_type.value,
                    lab.finding_type.scheme_designator,
                    lab.finding_type.meaning,
                ],
                "site": (
                    [
                        lab.finding_site.value,
                        lab.finding_site.scheme_designator,
                        lab.finding_site.meaning,
                    ]
                    if lab.finding_site is not None
                    else None
                ),
                "threshold": t,
            }
        )
    meta: dict[str, Any] = {
        "name": "cxr-findings",
        "architecture": ARCHITECTURE,
        "input_size": INPUT_SIZE,
        "input": "1 channel: presentation image (VOI applied, MONOCHROME1 inverted), "
        "area-averaged to fit input_size, 1-99 percentile stretch, letterboxed, (x - 0.5) / 0.25",
        "cam_layer": CAM_LAYER,
        "dtype": "float16",
        "labels": labels,
        "training": {
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "threads": threads,
            "phantom_size": PHANTOM_SIZE,
            "initialised_from": init_from.name if init_from is not None else None,
            "initialised_from_sha256": init_sha,
            "command": command,
            "train_seconds": round(train_s, 1),
            "total_seconds": round(time.perf_counter() - t0, 1),
            "data": "synthetic frontal chest radiographs (ai_models.training.cxr_phantoms), "
            "each finding with prevalence 0.4; with seeded variants of real radiographs: "
            "patient tilt, axial rotation, film/detector texture, burned-in side markers "
            "and text strips, collimation",
        },
        "metrics": {
            "heldout": test,
            "n_heldout": n_test,
            "heldout_seed": HELDOUT_SEED,
            "thresholds_from": f"Youden's J on {n_val} validation phantoms (seed + 1)",
        },
    }
    meta = write_sidecar(out_dir / "cxr_findings.json", meta, pt)
    # The OOD statistics belong to these weights: recompute them now.
    from ai_models.pipelines import CXR_FINDINGS
    from ai_models.training.calibrate_ood import calibrate

    calibrate(CXR_FINDINGS, out_dir, threads=threads)
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seed", type=int, default=20240607)
    ap.add_argument("--out-dir", type=pathlib.Path, default=WEIGHTS_DIR)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--init-from",
        type=pathlib.Path,
        default=None,
        help="fine-tune: start from these weights (a state dict .pt) instead of random ones",
    )
    args = ap.parse_args(argv)
    words = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python -m ai_models.training.train_cxr_findings", *words])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(
        args.seed,
        args.out_dir,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        init_from=args.init_from,
        command=command,
    )


if __name__ == "__main__":
    main()

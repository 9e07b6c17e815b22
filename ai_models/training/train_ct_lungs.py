"""Train the ``ct-lungs`` demonstration network on synthetic CT phantoms.

Reproduces ``ai_models/weights/ct_lungs.pt`` (a state dict) and
``ai_models/weights/ct_lungs.json`` (architecture, working spacing, label
table, seed, steps, held-out metrics, sha256)::

    python -m ai_models.training.train_ct_lungs --steps 2200 --seed 20240601

Everything random is drawn from generators seeded by ``--seed`` and torch is
run with deterministic algorithms, so the same command on the same software
stack gives the same weights (bit-identical on one machine and thread count).

Design
------
The network sees a 4 mm isotropic *working grid* with two channels per
voxel, the mean and the maximum HU of the source voxels it covers (see
:func:`ai_models.pipelines._grid.hu_features`); the max channel keeps thin
ribs and nodules of a few millimetres visible after down-sampling.  Phantoms
are generated at 1.2-3 mm and pooled onto the working grid exactly as the
pipeline pools real CT.  Labels: 0 background, 1 right lung, 2 left lung,
3 bone, 4 nodule (a nodule wins a coarse voxel when it fills a ninth of it).
About 15 % of the phantoms are head-like and 7 % QA-phantom-like shells.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import pathlib
import time

import numpy as np
import torch

from ai_models.pipelines._grid import hu_features, pool_labels, working_shape
from ai_models.training.phantoms import LABELS, NODULE, random_phantom

logger = logging.getLogger(__name__)

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped weights live."""

WORKING_SPACING_MM = 4.0
"""Isotropic spacing of the working grid the network runs on."""

PATCH_ZYX = (64, 96, 96)
"""Training patch size on the working grid (256 x 384 x 384 mm)."""

N_CLASSES = len(LABELS)

ARCHITECTURE = {
    "name": "monai.networks.nets.UNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 2,
        "out_channels": N_CLASSES,
        "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2],
        "num_res_units": 0,
        "norm": "instance",
    },
}
"""The network: a lean 5-level MONAI 3D UNet (input must be divisible by 16)."""

NODULE_PRIORITY = 8.0
"""Weight of the nodule fraction when pooling labels to the working grid: a nodule
wins a 4 mm cell it fills to about 1/9, so nodules of 4-6 mm still leave a mark."""


def build_network() -> torch.nn.Module:
    """The untrained network described by :data:`ARCHITECTURE`."""
    from monai.networks.nets import UNet

    return UNet(**ARCHITECTURE["kwargs"])  # type: ignore[arg-type]


def make_sample(
    rng: np.random.Generator,
    n_nodules: int | None = None,
    head_fraction: float = 0.15,
    shell_fraction: float = 0.07,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom pooled to the working grid.

    Returns
    -------
    (features, labels)
        ``(2, z, y, x)`` float32 and ``(z, y, x)`` uint8 on the working grid.
    """
    ph = random_phantom(
        rng, head_fraction=head_fraction, n_nodules=n_nodules, shell_fraction=shell_fraction
    )
    shape = working_shape(ph.image.shape, ph.spacing, WORKING_SPACING_MM)
    feats = hu_features(ph.image, shape).numpy()
    labs = pool_labels(ph.labels, shape, N_CLASSES, priority={NODULE: NODULE_PRIORITY})
    return feats, labs


def crop_or_pad(
    feats: np.ndarray, labs: np.ndarray, size: tuple[int, int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (or air-pad) to ``size`` ``(z, y, x)``."""
    f_out = np.zeros((feats.shape[0],) + size, np.float32)
    l_out = np.zeros(size, np.uint8)
    src, dst = [], []
    for n, m in zip(labs.shape, size, strict=False):
        if n >= m:
            a = int(rng.integers(0, n - m + 1))
            src.append(slice(a, a + m))
            dst.append(slice(0, m))
        else:
            a = int(rng.integers(0, m - n + 1))
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    f_out[(slice(None),) + tuple(dst)] = feats[(slice(None),) + tuple(src)]
    l_out[tuple(dst)] = labs[tuple(src)]
    return f_out, l_out


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> dict[int, float]:
    """Dice per label value; NaN where both are empty."""
    out = {}
    for v in labels:
        p, r = pred == v, ref == v
        s = int(p.sum()) + int(r.sum())
        out[v] = float("nan") if s == 0 else 2.0 * int((p & r).sum()) / s
    return out


def sha256_file(path: pathlib.Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def train(
    steps: int,
    seed: int,
    out_dir: pathlib.Path,
    pool_size: int = 40,
    refresh_every: int = 16,
    batch_size: int = 2,
    lr: float = 3e-3,
    threads: int = 2,
    n_val: int = 8,
) -> dict:
    """Train, validate on held-out phantoms, write ``ct_lungs.pt`` + ``.json``.

    Returns
    -------
    dict
        The metadata written to ``ct_lungs.json``.
    """
    from monai.losses import DiceCELoss

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    pool = [make_sample(rng, n_nodules=int(rng.integers(2, 7))) for _ in range(pool_size)]
    logger.info("generated %d phantoms in %.1f s", pool_size, time.perf_counter() - t0)

    net = build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    ce_w = torch.tensor([1.0, 1.0, 1.0, 1.5, 3.0])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=ce_w)
    net.train()
    t_train = time.perf_counter()
    for step in range(1, steps + 1):
        xs, ys = [], []
        for _ in range(batch_size):
            f, lab = pool[int(rng.integers(len(pool)))]
            f, lab = crop_or_pad(f, lab, PATCH_ZYX, rng)
            f = f * float(rng.normal(1.0, 0.03)) + float(rng.normal(0.0, 0.02))
            xs.append(f)
            ys.append(lab[None].astype(np.int64))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % refresh_every == 0:
            pool[int(rng.integers(len(pool)))] = make_sample(rng, n_nodules=int(rng.integers(2, 7)))
        if step % 25 == 0 or step == 1:
            el = time.perf_counter() - t_train
            logger.info(
                "step %d/%d loss %.4f (%.2f s/step, %.0f s)",
                step,
                steps,
                float(loss.detach()),
                el / step,
                el,
            )
    train_s = time.perf_counter() - t_train

    # Held-out validation on the working grid (independent seed stream).
    net.eval()
    vrng = np.random.default_rng(seed + 1_000_003)
    inter = np.zeros(N_CLASSES)
    total = np.zeros(N_CLASSES)
    with torch.inference_mode():
        for _ in range(n_val):
            f, lab = make_sample(
                vrng, n_nodules=int(vrng.integers(1, 5)), head_fraction=0.0, shell_fraction=0.0
            )
            pad = [(-n) % 16 for n in lab.shape]
            fp = np.pad(f, [(0, 0)] + [(0, p) for p in pad])
            pred = net(torch.from_numpy(fp)[None]).argmax(1)[0].numpy()
            pred = pred[: lab.shape[0], : lab.shape[1], : lab.shape[2]]
            for v in range(1, N_CLASSES):
                inter[v] += ((pred == v) & (lab == v)).sum()
                total[v] += (pred == v).sum() + (lab == v).sum()
    val = {LABELS[v]: round(float(2 * inter[v] / max(total[v], 1)), 4) for v in range(1, N_CLASSES)}
    logger.info("held-out working-grid Dice: %s", val)

    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / "ct_lungs.pt"
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, pt)
    meta = {
        "name": "ct-lungs",
        "architecture": ARCHITECTURE,
        "working_spacing_mm": WORKING_SPACING_MM,
        "input": "2 channels: mean and max HU per working voxel, (HU + 1000) / 1000, "
        "canonical orientation (z superior, y posterior, x patient left)",
        "labels": {str(k): v for k, v in LABELS.items()},
        "training": {
            "seed": seed,
            "steps": steps,
            "batch_size": batch_size,
            "patch_zyx": list(PATCH_ZYX),
            "lr": lr,
            "pool_size": pool_size,
            "refresh_every": refresh_every,
            "threads": threads,
            "train_seconds": round(train_s, 1),
            "data": "synthetic chest and head CT phantoms (ai_models.training.phantoms)",
        },
        "metrics": {"heldout_working_grid_dice": val, "n_heldout_phantoms": n_val},
        "sha256": sha256_file(pt),
    }
    (out_dir / "ct_lungs.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("wrote %s (%.1f MB), sha256 %s", pt, pt.stat().st_size / 1e6, meta["sha256"])
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2200)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--out-dir", type=pathlib.Path, default=WEIGHTS_DIR)
    ap.add_argument("--pool-size", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    train(
        args.steps,
        args.seed,
        args.out_dir,
        pool_size=args.pool_size,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
    )


if __name__ == "__main__":
    main()

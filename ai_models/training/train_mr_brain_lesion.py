"""Train the ``mr-brain-lesion`` demonstration network on synthetic brain MR phantoms.

Reproduces ``ai_models/weights/mr_brain_lesion.pt`` (a state dict) and
``ai_models/weights/mr_brain_lesion.json`` (architecture, working spacing,
label table, seed, steps, held-out metrics, sha256)::

    python -m ai_models.training.train_mr_brain_lesion --steps 2500 --seed 20240611

Everything random is drawn from generators seeded by ``--seed`` and torch is
run with deterministic algorithms, so the same command on the same software
stack and thread count gives the same weights.  It runs on one thread by
default (``--threads 1``): on a shared two-core machine two torch threads
made each step several times slower.  The shipped weights took 12 CPU
minutes (95 s making phantoms, the rest training).

Design
------
Each training sample is a phantom (:mod:`ai_models.training.brain_phantoms`)
"scanned" in a random plane (axial, sagittal, coronal, oblique), contrast
(T1, T2, FLAIR-like), pixel size (1.2-2.6 mm) and slice spacing
(1.2-6.5 mm), then preprocessed exactly as the pipeline preprocesses a
series: canonical orientation, 3 mm working grid, foreground-median
normalisation (:func:`ai_models.pipelines.mr_brain_lesion.mr_features`).
The reference labels are evaluated analytically at the working-grid voxel
centres (:func:`~ai_models.pipelines.mr_brain_lesion.working_kij`), so thick
slices do not blur the target.  Labels: 0 background, 1 brain, 2 lesion,
3 edema.  Patches of 48x64x64 working voxels (144x192x192 mm) are cropped,
centred on a lesion two times out of three.

Why 3D on a 3 mm grid (and not 2D slice by slice): series arrive in any
plane with slices of 1-6 mm; one isotropic grid in canonical orientation lets
one network see every acquisition the same way, edema is judged by its 3D
relation to the lesion, and a whole head is a few cheap windows on a CPU.  The
price is resolution: lesions under about 6 mm are not reported.

The network has instance normalisation and is trained on patches; the
pipeline therefore runs it in overlapping windows of the patch size (and so
does the held-out check here), not on the whole volume at once.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import time
from typing import Any

import numpy as np
import torch

from ai_models.pipelines._grid import orientation_from_direction, working_shape
from ai_models.pipelines.mr_brain_lesion import (
    LESION,
    N_CLASSES,
    WORKING_SPACING_MM,
    mr_features,
    working_kij,
)
from ai_models.training.brain_phantoms import LABELS, labels_on_grid, random_brain_phantom
from ai_models.training.export import save_state_dict, seed_torch, write_sidecar
from ai_models.training.loop import adamw_one_cycle, optimise

logger = logging.getLogger(__name__)

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped weights live."""

PATCH_ZYX = (48, 64, 64)
"""Training patch on the working grid (144 x 192 x 192 mm)."""

ARCHITECTURE: dict[str, Any] = {
    "name": "monai.networks.nets.UNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": N_CLASSES,
        "channels": [16, 32, 64, 128],
        "strides": [2, 2, 2],
        "num_res_units": 0,
        "norm": "instance",
    },
}
"""The network: a 4-level MONAI 3D UNet (input must be divisible by 8)."""

TRAIN_PIXEL_MM = (1.2, 2.6)
TRAIN_SLICE_MM = (1.2, 6.5)

HELDOUT_SEED_OFFSET = 1_000_003
"""The held-out working-grid validation draws from ``seed + HELDOUT_SEED_OFFSET``."""


def build_network() -> torch.nn.Module:
    """The untrained network described by :data:`ARCHITECTURE`."""
    from monai.networks.nets import UNet

    return UNet(**ARCHITECTURE["kwargs"])


def make_sample(
    rng: np.random.Generator,
    pixel_mm: tuple[float, float] = TRAIN_PIXEL_MM,
    slice_mm: tuple[float, float] = TRAIN_SLICE_MM,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom preprocessed like the pipeline does.

    Returns
    -------
    (features, labels)
        ``(1, z, y, x)`` float32 and ``(z, y, x)`` uint8 on the working grid.
    """
    ph = random_brain_phantom(rng, pixel_mm=pixel_mm, slice_mm=slice_mm, max_sub=3, **kwargs)
    orient = orientation_from_direction(ph.direction)
    arr = orient.to_canonical(ph.image)
    wshape = working_shape(arr.shape, orient.spacing(ph.spacing), WORKING_SPACING_MM)
    feats = mr_features(arr, wshape).numpy()
    kij = working_kij(orient, ph.image.shape, wshape)  # type: ignore[arg-type]
    labs = labels_on_grid(ph.anatomy, ph.acquisition, kij).reshape(wshape)
    return feats, labs


def crop_or_pad(
    feats: np.ndarray,
    labs: np.ndarray,
    size: tuple[int, int, int],
    rng: np.random.Generator,
    focus: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Random crop (or zero-pad) to ``size``; ``focus`` centres it on a lesion voxel."""
    f_out = np.zeros((feats.shape[0],) + size, np.float32)
    l_out = np.zeros(size, np.uint8)
    centre = None
    if focus:
        les = np.argwhere(labs == LESION)
        if len(les):
            centre = les[int(rng.integers(len(les)))]
    src, dst = [], []
    for ax, (n, m) in enumerate(zip(labs.shape, size, strict=True)):
        if n >= m:
            if centre is not None:
                a = int(np.clip(centre[ax] - m // 2 + rng.integers(-m // 4, m // 4 + 1), 0, n - m))
            else:
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


def heldout_dice(
    net: torch.nn.Module, seed: int, n: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Working-grid Dice (voxels pooled) on ``n`` phantoms from an independent stream."""
    from monai.inferers import sliding_window_inference

    vrng = np.random.default_rng(seed + HELDOUT_SEED_OFFSET)
    inter = np.zeros(N_CLASSES)
    total = np.zeros(N_CLASSES)
    cases = []
    net.eval()
    with torch.inference_mode():
        for _ in range(n):
            f, lab = make_sample(vrng, n_lesions=int(vrng.integers(1, 3)))
            # as the pipeline runs it: overlapping windows of the training patch size
            pad = [max(m - s, 0) for m, s in zip(PATCH_ZYX, lab.shape, strict=True)]
            fp = np.pad(f, [(0, 0)] + [(0, p) for p in pad])
            out = sliding_window_inference(
                torch.from_numpy(fp)[None], PATCH_ZYX, 4, net, overlap=0.5, mode="gaussian"
            )
            assert isinstance(out, torch.Tensor)
            pred = out.argmax(1)[0].numpy()[: lab.shape[0], : lab.shape[1], : lab.shape[2]]
            for v in range(1, N_CLASSES):
                inter[v] += ((pred == v) & (lab == v)).sum()
                total[v] += (pred == v).sum() + (lab == v).sum()
            cases.append({"shape": list(lab.shape)})
    val = {LABELS[v]: round(float(2 * inter[v] / max(total[v], 1)), 4) for v in range(1, N_CLASSES)}
    return val, cases


def train(
    steps: int,
    seed: int,
    out_dir: pathlib.Path,
    pool_size: int = 32,
    refresh_every: int = 16,
    batch_size: int = 2,
    lr: float = 3e-3,
    threads: int = 1,
    n_val: int = 8,
) -> dict[str, Any]:
    """Train, validate on held-out phantoms, write ``mr_brain_lesion.pt`` + ``.json``.

    Returns
    -------
    dict
        The metadata written to ``mr_brain_lesion.json``.
    """
    from monai.losses import DiceCELoss

    seed_torch(seed, threads, deterministic=True)
    rng = np.random.default_rng(seed)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    pool = [make_sample(rng) for _ in range(pool_size)]
    gen_s = time.perf_counter() - t0
    logger.info("generated %d phantoms in %.1f s", pool_size, gen_s)

    net = build_network()
    opt, sched = adamw_one_cycle(net, lr, steps, weight_decay=1e-5, pct_start=0.1)
    ce_w = torch.tensor([1.0, 1.0, 2.0, 1.5])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=ce_w)

    def step_loss(step: int) -> torch.Tensor:
        """A batch of random patches from the pool (mostly on a lesion), intensity-jittered."""
        xs, ys = [], []
        for _ in range(batch_size):
            f, lab = pool[int(rng.integers(len(pool)))]
            f, lab = crop_or_pad(f, lab, PATCH_ZYX, rng, focus=bool(rng.random() < 0.67))
            # intensity jitter on top of the phantom's own contrast randomisation
            f = np.clip(f, 0, None) ** float(rng.uniform(0.85, 1.18)) * float(rng.normal(1.0, 0.05))
            xs.append(f.astype(np.float32))
            ys.append(lab[None].astype(np.int64))
        x = torch.from_numpy(np.stack(xs))
        y = torch.from_numpy(np.stack(ys))
        return loss_fn(net(x), y)

    def refresh_pool(step: int, loss: torch.Tensor) -> None:
        """Every *refresh_every* steps a new phantom replaces a random one."""
        if step % refresh_every == 0:
            pool[int(rng.integers(len(pool)))] = make_sample(rng)

    train_s = optimise(net, opt, sched, steps, step_loss, after_step=refresh_pool, log=logger)
    cpu_s = time.process_time() - cpu0

    val, _ = heldout_dice(net, seed, n_val)
    logger.info("held-out working-grid Dice: %s", val)

    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / "mr_brain_lesion.pt"
    save_state_dict(net, pt)
    meta = {
        "name": "mr-brain-lesion",
        "architecture": ARCHITECTURE,
        "working_spacing_mm": WORKING_SPACING_MM,
        "input": "1 channel: mean intensity per working voxel divided by the median of the "
        "foreground (voxels above the mean), clipped to [0, 5]; canonical orientation "
        "(z superior, y posterior, x patient left)",
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
            "pixel_mm": list(TRAIN_PIXEL_MM),
            "slice_mm": list(TRAIN_SLICE_MM),
            "generate_seconds": round(gen_s, 1),
            "train_seconds": round(train_s, 1),
            "cpu_seconds": round(cpu_s, 1),
            "data": "synthetic brain MR phantoms (ai_models.training.brain_phantoms): "
            "T1/T2/FLAIR-like, axial/sagittal/coronal/oblique, bias field, Rician noise",
        },
        "metrics": {"heldout_working_grid_dice": val, "n_heldout_phantoms": n_val},
    }
    meta = write_sidecar(out_dir / "mr_brain_lesion.json", meta, pt)
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=20240611)
    ap.add_argument("--out-dir", type=pathlib.Path, default=WEIGHTS_DIR)
    ap.add_argument("--pool-size", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-val", type=int, default=8)
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
        n_val=args.n_val,
    )


if __name__ == "__main__":
    main()

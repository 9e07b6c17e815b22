"""Train the ``ct-lungs`` demonstration network on synthetic CT phantoms.

Reproduces ``ai_models/weights/ct_lungs.pt`` (a state dict) and
``ai_models/weights/ct_lungs.json`` (architecture, working spacing, label
table, seed, steps, held-out metrics, sha256)::

    python -m ai_models.training.train_ct_lungs --workers 2

Everything random is drawn from generators seeded by ``--seed``: each phantom
has its own child seed (``numpy.random.SeedSequence.spawn``), so phantoms can
be made by ``--workers`` processes in any order and still be the same, and
torch runs with deterministic algorithms.  The same command on the same
software stack and device gives the same weights; a CPU run (``--device cpu``,
the default) gives close but not bit-identical ones and takes much longer.

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
import logging
import multiprocessing
import pathlib
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from ai_models.pipelines._grid import hu_features, pool_labels, working_shape
from ai_models.training.export import (
    load_initial_weights,
    save_state_dict,
    seed_torch,
    write_sidecar,
)
from ai_models.training.loop import adamw_one_cycle, optimise
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
    seed: np.random.SeedSequence | int,
    nodules: tuple[int, int] = (2, 7),
    head_fraction: float = 0.15,
    shell_fraction: float = 0.07,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom, drawn from its own seed, pooled to the working grid.

    Parameters
    ----------
    seed:
        The phantom's own seed (all its randomness comes from it).
    nodules:
        ``[low, high)`` of the number of nodules in a chest phantom.

    Returns
    -------
    (features, labels)
        ``(2, z, y, x)`` float32 and ``(z, y, x)`` uint8 on the working grid.
    """
    rng = np.random.default_rng(seed)
    ph = random_phantom(
        rng,
        head_fraction=head_fraction,
        n_nodules=int(rng.integers(*nodules)),
        shell_fraction=shell_fraction,
    )
    shape = working_shape(ph.image.shape, ph.spacing, WORKING_SPACING_MM)
    feats = hu_features(ph.image, shape).numpy()
    labs = pool_labels(ph.labels, shape, N_CLASSES, priority={NODULE: NODULE_PRIORITY})
    return feats, labs


class SampleStream:
    """Phantoms in a fixed order, made ahead by a process pool.

    The ``i``-th phantom comes from the ``i``-th child of ``seed``'s
    :class:`numpy.random.SeedSequence`, whichever worker makes it.
    """

    def __init__(self, seed: int, workers: int, ahead: int = 0, **kwargs: object) -> None:
        self._seeds = np.random.SeedSequence(seed)
        self._kwargs = kwargs
        # spawn, not fork: a forked child of a process that has run torch's
        # thread pool can deadlock in its first parallel region
        spawn = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(workers, mp_context=spawn) if workers > 1 else None
        self._queue: deque[Future | tuple[np.ndarray, np.ndarray]] = deque()
        self._ahead = max(ahead, workers * 2)

    def _submit(self) -> None:
        child = self._seeds.spawn(1)[0]  # the next child, in order
        if self._pool is None:
            self._queue.append(make_sample(child, **self._kwargs))  # type: ignore[arg-type]
        else:
            self._queue.append(self._pool.submit(make_sample, child, **self._kwargs))  # type: ignore[arg-type]

    def next(self) -> tuple[np.ndarray, np.ndarray]:
        """The next phantom in order (features, labels)."""
        while len(self._queue) < (self._ahead if self._pool else 1):
            self._submit()
        item = self._queue.popleft()
        return item.result() if isinstance(item, Future) else item

    def close(self) -> None:
        """Stop the workers (queued phantoms are dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


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
    device: str = "cpu",
    workers: int = 1,
    init_from: pathlib.Path | None = None,
) -> dict:
    """Train, validate on held-out phantoms, write ``ct_lungs.pt`` + ``.json``.

    Returns
    -------
    dict
        The metadata written to ``ct_lungs.json``.
    """
    from monai.losses import DiceCELoss

    seed_torch(seed, threads, deterministic=True)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    t0 = time.perf_counter()
    stream = SampleStream(seed, workers)
    pool = [stream.next() for _ in range(pool_size)]
    logger.info("generated %d phantoms in %.1f s", pool_size, time.perf_counter() - t0)

    net = build_network()
    init_sha = load_initial_weights(net, init_from)  # fine-tune: start from earlier weights
    net = net.to(dev)
    opt, sched = adamw_one_cycle(net, lr, steps, weight_decay=1e-5, pct_start=0.1)
    ce_w = torch.tensor([1.0, 1.0, 1.0, 1.5, 3.0], device=dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True, weight=ce_w)

    def step_loss(step: int) -> torch.Tensor:
        """A batch of random patches from the pool, intensity-jittered."""
        xs, ys = [], []
        for _ in range(batch_size):
            f, lab = pool[int(rng.integers(len(pool)))]
            f, lab = crop_or_pad(f, lab, PATCH_ZYX, rng)
            f = f * float(rng.normal(1.0, 0.03)) + float(rng.normal(0.0, 0.02))
            xs.append(f)
            ys.append(lab[None].astype(np.int64))
        x = torch.from_numpy(np.stack(xs)).to(dev)
        y = torch.from_numpy(np.stack(ys)).to(dev)
        return loss_fn(net(x), y)

    def refresh_pool(step: int, loss: torch.Tensor) -> None:
        """Every *refresh_every* steps a new phantom replaces a random one."""
        if step % refresh_every == 0:
            pool[int(rng.integers(len(pool)))] = stream.next()

    train_s = optimise(net, opt, sched, steps, step_loss, after_step=refresh_pool, log=logger)
    stream.close()

    # Held-out validation on the working grid (independent seed stream).
    net.eval()
    val_stream = SampleStream(
        seed + 1_000_003, workers, nodules=(1, 5), head_fraction=0.0, shell_fraction=0.0
    )
    inter = np.zeros(N_CLASSES)
    total = np.zeros(N_CLASSES)
    with torch.inference_mode():
        for _ in range(n_val):
            f, lab = val_stream.next()
            pad = [(-n) % 16 for n in lab.shape]
            fp = np.pad(f, [(0, 0)] + [(0, p) for p in pad])
            pred = net(torch.from_numpy(fp)[None].to(dev)).argmax(1)[0].cpu().numpy()
            pred = pred[: lab.shape[0], : lab.shape[1], : lab.shape[2]]
            for v in range(1, N_CLASSES):
                inter[v] += ((pred == v) & (lab == v)).sum()
                total[v] += (pred == v).sum() + (lab == v).sum()
    val_stream.close()
    val = {LABELS[v]: round(float(2 * inter[v] / max(total[v], 1)), 4) for v in range(1, N_CLASSES)}
    logger.info("held-out working-grid Dice: %s", val)

    out_dir.mkdir(parents=True, exist_ok=True)
    pt = out_dir / "ct_lungs.pt"
    save_state_dict(net, pt)
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
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "train_seconds": round(train_s, 1),
            "initialised_from_sha256": init_sha,
            "data": "synthetic chest and head CT phantoms (ai_models.training.phantoms)",
        },
        "metrics": {"heldout_working_grid_dice": val, "n_heldout_phantoms": n_val},
    }
    meta = write_sidecar(out_dir / "ct_lungs.json", meta, pt)
    return meta


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--out-dir", type=pathlib.Path, default=WEIGHTS_DIR)
    ap.add_argument("--pool-size", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps-per-refresh", type=int, default=16, dest="refresh_every")
    ap.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    ap.add_argument("--workers", type=int, default=1, help="processes making phantoms")
    ap.add_argument(
        "--init-from",
        type=pathlib.Path,
        default=None,
        help="fine-tune: start from these weights (a state dict .pt) instead of random ones",
    )
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
        refresh_every=args.refresh_every,
        device=args.device,
        workers=args.workers,
        init_from=args.init_from,
    )


if __name__ == "__main__":
    main()

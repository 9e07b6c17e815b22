"""Calibrate the OOD check of a built-in radiograph model on its phantoms.

Writes ``ai_models/weights/<model>.ood.npz`` (:mod:`ai_models.ood`) for the
weights in the weights directory::

    python -m ai_models.training.calibrate_ood cxr-findings
    python -m ai_models.training.calibrate_ood mg-masses

The training scripts call :func:`calibrate` after training, so retrained
weights get statistics in step with them (the file records their sha256).

Method
------
Feature-space Mahalanobis distance (Lee et al., NeurIPS 2018), class-agnostic:
the mean and the Ledoit-Wolf shrinkage covariance of the pooled network
features (``cxr-findings``: channel means and standard deviations of
``layer3``; ``mg-masses``: channel means of the five backbone stages) over
``n_fit`` phantoms of the training family; the threshold is the **maximum
score over** ``n_heldout`` **held-out phantoms** (so about 1 in
``n_heldout + 1`` in-distribution images would be refused).  For
``cxr-findings`` the energy score (Liu et al., NeurIPS 2020, sigmoid form)
of the held-out phantoms is recorded too, for comparison.

Reproducible: phantom ``i`` of a stream is drawn from
``numpy.random.default_rng([seed, stream, i])`` (fit: the training seed from
the sidecar, stream :data:`FIT_STREAM`; held-out: the training script's
``HELDOUT_SEED``, stream :data:`HELDOUT_STREAM`), the network runs in
float32 on the CPU with deterministic algorithms, so the same weights give
the same file on the same software stack.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ai_models import ood
from ai_models.pipelines import CXR_FINDINGS, MG_MASSES

logger = logging.getLogger(__name__)

__all__ = ["FIT_STREAM", "HELDOUT_STREAM", "PIPELINES", "calibrate", "features", "phantom_inputs"]

WEIGHTS_DIR = pathlib.Path(__file__).resolve().parents[1] / "weights"
"""Where the shipped weights live."""

PIPELINES = {CXR_FINDINGS: "cxr_findings", MG_MASSES: "mg_masses"}
"""Pipelines with an OOD check and the stem of their weights."""

FIT_STREAM = 101
"""Stream number of the phantoms the mean and covariance are fitted on."""

HELDOUT_STREAM = 102
"""Stream number of the held-out phantoms that set the threshold."""

N_FIT = {CXR_FINDINGS: 1000, MG_MASSES: 800}
"""Default number of fit phantoms."""

N_HELDOUT = 500
"""Default number of held-out phantoms."""


def phantom_inputs(pipeline: str, seed: int, stream: int, n: int, start: int = 0) -> np.ndarray:
    """Network inputs of phantoms ``start .. start + n - 1`` of one seeded stream.

    ``cxr-findings``: ``(n, 192, 192)`` standardised inputs of 240-pixel
    chest phantoms; ``mg-masses``: ``n`` working images of 256-pixel
    mammogram phantoms (an object array: their widths differ).
    """
    if pipeline == CXR_FINDINGS:
        from ai_models.pipelines.cxr_findings import model_input as cxr_input
        from ai_models.training.cxr_phantoms import random_cxr_phantom
        from ai_models.training.train_cxr_findings import PHANTOM_SIZE

        return np.stack(
            [
                cxr_input(
                    random_cxr_phantom(np.random.default_rng([seed, stream, i]), PHANTOM_SIZE).image
                )[0]
                for i in range(start, start + n)
            ]
        )
    if pipeline == MG_MASSES:
        from ai_models.pipelines.mg_masses import WORK_SIZE
        from ai_models.pipelines.mg_masses import model_input as mg_input
        from ai_models.training.mammo_phantoms import random_mammo_phantom

        out = np.empty(n, dtype=object)
        for j, i in enumerate(range(start, start + n)):
            ph = random_mammo_phantom(np.random.default_rng([seed, stream, i]), rows=WORK_SIZE)
            out[j] = mg_input(ph.image, WORK_SIZE)[0]
        return out
    raise ValueError(f"no OOD check for {pipeline!r}; known: {sorted(PIPELINES)}")


def features(
    pipeline: str, network: torch.nn.Module, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """OOD features ``(n, d)`` of network inputs, and the logits for ``cxr-findings``."""
    if pipeline == CXR_FINDINGS:
        from ai_models.pipelines.cxr_findings import ood_features

        logits, feats = [], []
        for i in range(0, len(xs), 50):
            x = torch.from_numpy(np.asarray(xs[i : i + 50], dtype=np.float32))[:, None]
            lg, f = ood_features(network, x)
            logits.append(lg)
            feats.append(f)
        return np.concatenate(feats), np.concatenate(logits)
    from ai_models.pipelines.mg_masses import ood_features as mg_features

    return np.stack([mg_features(network, x) for x in xs]), None


def _load(pipeline: str, weights: pathlib.Path) -> tuple[torch.nn.Module, str, dict[str, Any]]:
    """The network (CPU, float32), the weights' sha256 and the sidecar."""
    from ai_models import runtime

    if pipeline == CXR_FINDINGS:
        from ai_models.pipelines.cxr_findings import _build as build
    else:
        from ai_models.pipelines.mg_masses import _build as build  # type: ignore[assignment]
    builder: Callable[[dict[str, Any]], torch.nn.Module] = build
    model = runtime.load_built_model(weights, builder, device="cpu", name=pipeline)
    return model.network, model.sha256, model.metadata


def calibrate(
    pipeline: str,
    weights_dir: pathlib.Path = WEIGHTS_DIR,
    n_fit: int | None = None,
    n_heldout: int = N_HELDOUT,
    threads: int = 1,
) -> ood.OodStats:
    """Fit, threshold and write the OOD statistics of ``pipeline``'s weights.

    Returns
    -------
    OodStats
        What was written to ``<weights_dir>/<stem>.ood.npz``.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"no OOD check for {pipeline!r}; known: {sorted(PIPELINES)}")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.perf_counter()
    weights = pathlib.Path(weights_dir) / f"{PIPELINES[pipeline]}.pt"
    network, sha256, meta = _load(pipeline, weights)
    seed = int(meta.get("training", {}).get("seed", 0))
    if pipeline == CXR_FINDINGS:
        from ai_models.training.train_cxr_findings import HELDOUT_SEED
    else:
        from ai_models.training.train_mg_masses import HELDOUT_SEED  # type: ignore[assignment]
    n_fit = int(n_fit or N_FIT[pipeline])
    fit_x = phantom_inputs(pipeline, seed, FIT_STREAM, n_fit)
    held_x = phantom_inputs(pipeline, HELDOUT_SEED, HELDOUT_STREAM, n_heldout)
    fit_f, _ = features(pipeline, network, fit_x)
    held_f, held_logits = features(pipeline, network, held_x)
    mean, precision, shrinkage = ood.fit_mahalanobis(fit_f)
    f32 = np.float32
    probe = ood.OodStats(
        mean.astype(f32).astype(float), precision.astype(f32).astype(float), 0.0, sha256
    )
    held = probe.score(held_f)
    threshold = round(float(held.max()), 3)
    info: dict[str, Any] = {
        "method": "Mahalanobis distance of pooled features, class-agnostic mean and "
        "Ledoit-Wolf shrinkage covariance (Lee et al. 2018)",
        "features": (
            "layer3 channel means and standard deviations (512)"
            if pipeline == CXR_FINDINGS
            else "channel means of the five backbone stages (248)"
        ),
        "layer": "layer3" if pipeline == CXR_FINDINGS else "backbone",
        "shrinkage": round(shrinkage, 5),
        "fit": {"seed": seed, "stream": FIT_STREAM, "n": n_fit},
        "heldout": {"seed": HELDOUT_SEED, "stream": HELDOUT_STREAM, "n": n_heldout},
        "heldout_percentiles": ood.percentiles(held),
        "fit_percentiles": ood.percentiles(probe.score(fit_f)),
        "threshold_from": f"maximum score of the {n_heldout} held-out phantoms",
    }
    if held_logits is not None:
        info["energy_heldout_percentiles"] = ood.percentiles(ood.sigmoid_energy(held_logits))
    stats = ood.OodStats(mean, precision, threshold, sha256, info)
    path = ood.save_stats(ood.stats_path(weights), stats)
    logger.info(
        "%s: threshold %.3f, held-out %s; wrote %s (%.0f kB) in %.0f s",
        pipeline,
        threshold,
        json.dumps(info["heldout_percentiles"]),
        path.name,
        path.stat().st_size / 1e3,
        time.perf_counter() - t0,
    )
    return stats


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("pipeline", choices=sorted(PIPELINES))
    ap.add_argument("--weights-dir", type=pathlib.Path, default=WEIGHTS_DIR)
    ap.add_argument("--n-fit", type=int, default=None)
    ap.add_argument("--n-heldout", type=int, default=N_HELDOUT)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    calibrate(args.pipeline, args.weights_dir, args.n_fit, args.n_heldout, args.threads)


if __name__ == "__main__":
    main()

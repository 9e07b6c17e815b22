"""Out-of-distribution (OOD) scores: is an input like the model's training data?

The built-in radiograph models were trained on synthetic phantoms only; on a
real image they still give confident numbers.  This module scores how far a
network input lies from the inputs the model was calibrated on, so that a
pipeline can refuse the image (``PipelineNotApplicable``) instead of
reporting probabilities it has no grounds for.

Method
------
**Feature-space Mahalanobis distance** (Lee et al., "A Simple Unified
Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018), class-agnostic: one mean ``mu`` and one covariance
``S`` of pooled network features over in-distribution inputs, and the score

    d(f) = sqrt((f - mu)^T S^-1 (f - mu))

``S`` is the Ledoit-Wolf shrinkage estimate (Ledoit & Wolf, "A
well-conditioned estimator for large-dimensional covariance matrices",
J. Multivar. Anal. 2004), computed here with numpy, so that a few hundred
samples give a well-conditioned inverse for a few hundred feature
dimensions.

The **energy score** (Liu et al., "Energy-based Out-of-distribution
Detection", NeurIPS 2020), ``E(x) = -T log sum_k exp(f_k(x) / T)``, is
provided for comparison (:func:`energy_score`); for the multi-label
``cxr-findings`` outputs the sigmoid form ``-sum_k log(1 + exp(f_k))`` is
used.  The calibration script measures both; the pipelines use the
Mahalanobis distance, which separates the real and foreign images from the
phantoms far better (see ``ai_models/README.md``).

Statistics file
---------------
``<weights stem>.ood.npz`` beside the weights (:func:`stats_path`), written
by ``python -m ai_models.training.calibrate_ood <pipeline>``: ``mean``,
``precision`` (``S^-1``, float32), the ``threshold``, the sha256 of the
weights it belongs to, the held-out score percentiles and a description of
the features.  Weights without such a file run without the check (logged
once per weights file); a file whose sha256 does not match its weights is
an error (:class:`~ai_models.errors.ModelLoadError`): statistics of other
weights would make the check meaningless.
"""

from __future__ import annotations

import json
import logging
import pathlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_models.errors import ModelLoadError, PipelineNotApplicable

logger = logging.getLogger(__name__)

__all__ = [
    "refuse_out_of_distribution",
    "MAHALANOBIS",
    "OodStats",
    "energy_score",
    "fit_mahalanobis",
    "ledoit_wolf",
    "load_stats",
    "note_unchecked",
    "percentiles",
    "save_stats",
    "sigmoid_energy",
    "stats_for",
    "stats_path",
]

MAHALANOBIS = "mahalanobis"
"""Method name stored in a statistics file."""

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.5, 100.0)
"""Held-out score percentiles recorded with the statistics."""


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf shrinkage covariance of samples ``x`` ``(n, d)``.

    ``S = (1 - a) * C + a * m * I`` with ``C`` the (biased) sample
    covariance, ``m = trace(C) / d`` and the shrinkage ``a`` that minimises
    the expected Frobenius loss (Ledoit & Wolf 2004; the same estimate as
    ``sklearn.covariance.ledoit_wolf``).

    Returns
    -------
    (covariance, shrinkage)
        ``(d, d)`` float64 and ``a`` in ``0..1``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    xc = x - x.mean(axis=0)
    cov = xc.T @ xc / n
    mu = float(np.trace(cov)) / d
    x2 = xc**2
    beta_ = float(np.sum(x2.T @ x2)) / n - float(np.sum(cov**2))
    delta = float(np.sum(cov**2)) - 2.0 * mu * float(np.trace(cov)) + d * mu**2
    beta = min(beta_ / n, delta)
    shrink = 0.0 if delta == 0 else beta / delta
    out = (1.0 - shrink) * cov
    out[np.diag_indices(d)] += shrink * mu
    return out, shrink


@dataclass(frozen=True)
class OodStats:
    """Mahalanobis statistics of one model's features (see the module docstring).

    Attributes
    ----------
    mean:
        ``(d,)`` feature mean of the in-distribution fit set.
    precision:
        ``(d, d)`` inverse of the shrinkage covariance.
    threshold:
        Scores above it are out of distribution.
    weights_sha256:
        The weights the statistics belong to.
    info:
        Provenance: method, features, seeds, sample counts, held-out
        percentiles, how the threshold was chosen.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    weights_sha256: str
    info: dict[str, Any] = field(default_factory=dict)

    def score(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` ``(n, d)`` (or one ``(d,)``)."""
        f = np.atleast_2d(np.asarray(features, dtype=np.float64)) - self.mean
        p = self.precision.astype(np.float64)
        d2 = np.einsum("ij,jk,ik->i", f, p, f)
        return np.sqrt(np.clip(d2, 0.0, None))


def fit_mahalanobis(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, precision (inverse Ledoit-Wolf covariance) and shrinkage of ``(n, d)`` features."""
    f = np.asarray(features, dtype=np.float64)
    cov, shrink = ledoit_wolf(f)
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2.0
    return f.mean(axis=0), precision, shrink


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy ``-T logsumexp(f / T)`` per row (Liu et al. 2020); higher = more OOD."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64)) / temperature
    m = z.max(axis=1, keepdims=True)
    return -temperature * (m[:, 0] + np.log(np.exp(z - m).sum(axis=1)))


def sigmoid_energy(logits: np.ndarray) -> np.ndarray:
    """Energy of independent sigmoid outputs, ``-sum_k log(1 + exp(f_k))``, per row."""
    z = np.atleast_2d(np.asarray(logits, dtype=np.float64))
    return -np.logaddexp(0.0, z).sum(axis=1)


def percentiles(scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """The :data:`PERCENTILES` of ``scores`` as ``{"p50": ..., "max": ...}``."""
    s = np.asarray(scores, dtype=np.float64)
    out = {}
    for p in PERCENTILES:
        key = "max" if p == 100.0 else f"p{p:g}"
        out[key] = round(float(np.percentile(s, p)), 3)
    return out


def stats_path(weights: str | pathlib.Path) -> pathlib.Path:
    """Where the statistics of ``weights`` live: ``<stem>.ood.npz`` beside them."""
    p = pathlib.Path(weights)
    return p.with_name(p.stem + ".ood.npz")


def save_stats(path: str | pathlib.Path, stats: OodStats) -> pathlib.Path:
    """Write ``stats`` to ``path`` (compressed ``.npz``; precision as float32)."""
    p = pathlib.Path(path)
    np.savez_compressed(
        p,
        mean=stats.mean.astype(np.float32),
        precision=stats.precision.astype(np.float32),
        threshold=np.float64(stats.threshold),
        weights_sha256=np.str_(stats.weights_sha256),
        info=np.str_(json.dumps(stats.info, sort_keys=True)),
    )
    return p


def load_stats(path: str | pathlib.Path) -> OodStats:
    """Read a statistics file written by :func:`save_stats`.

    Raises
    ------
    ModelLoadError
        Unreadable or incomplete file.
    """
    p = pathlib.Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            mean = z["mean"].astype(np.float64)
            precision = z["precision"].astype(np.float64)
            stats = OodStats(
                mean=mean,
                precision=precision,
                threshold=float(z["threshold"]),
                weights_sha256=str(z["weights_sha256"]),
                info=json.loads(str(z["info"])),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"unreadable OOD statistics {p.name}: {exc}") from exc
    d = mean.shape[0]
    if mean.ndim != 1 or precision.shape != (d, d):
        raise ModelLoadError(f"{p.name}: mean {mean.shape} and precision {precision.shape}")
    return stats


_CACHE: dict[tuple[str, float, str], OodStats | None] = {}
_LOGGED: set[str] = set()
_LOCK = threading.Lock()


def note_unchecked(name: str, weights: str | pathlib.Path, why: str) -> None:
    """Log, once per weights file, that a model runs without the OOD check and why."""
    key = str(weights)
    with _LOCK:
        if key in _LOGGED:
            return
        _LOGGED.add(key)
    logger.info(
        "%s: %s for %s; running without the OOD check", name, why, pathlib.Path(weights).name
    )


def stats_for(weights: str | pathlib.Path, weights_sha256: str, name: str) -> OodStats | None:
    """The statistics beside ``weights``, or ``None`` when there are none.

    Cached per file (reloaded when it changes).  No file: ``None``, logged
    once per weights file (the model then runs without the OOD check).

    Raises
    ------
    ModelLoadError
        The file is unreadable, or belongs to other weights (its sha256 is not
        ``weights_sha256``): recalibrate with
        ``python -m ai_models.training.calibrate_ood``.
    """
    p = stats_path(weights)
    if not p.is_file():
        note_unchecked(name, weights, "no OOD statistics")
        return None
    key = (str(p), p.stat().st_mtime, weights_sha256)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
    stats = load_stats(p)
    if stats.weights_sha256 != weights_sha256:
        raise ModelLoadError(
            f"{name}: {p.name} belongs to weights {stats.weights_sha256[:12]}..., not "
            f"{weights_sha256[:12]}...; recalibrate (python -m "
            "ai_models.training.calibrate_ood)"
        )
    with _LOCK:
        _CACHE[key] = stats
    return stats


def refuse_out_of_distribution(name: str, scored: tuple[float, float] | None, what: str) -> None:
    """Raise :class:`PipelineNotApplicable` when ``scored = (score, threshold)`` is above.

    ``None`` (weights without statistics) passes; ``what`` names the output
    that would not be meaningful (``"findings"``, ``"detections"``).
    """
    if scored is None:
        return
    score, threshold = scored
    logger.debug("%s: OOD score %.1f (threshold %.1f)", name, score, threshold)
    if score > threshold:
        raise PipelineNotApplicable(
            f"{name}: the image is out of the model's training distribution "
            f"(OOD score {score:.1f} above the threshold {threshold:.1f}; Mahalanobis "
            "distance of the network features from the synthetic training phantoms): "
            f"its {what} would not be meaningful"
        )

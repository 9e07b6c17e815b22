"""What real radiographs carry besides the anatomy, for the synthetic phantoms.

Shared by :mod:`ai_models.training.cxr_phantoms` and
:mod:`ai_models.training.mammo_phantoms`:

* :func:`variant_rng` -- a child generator for these variants that leaves the
  parent's stream untouched, so that a phantom seed keeps its anatomy and
  labels and only gains the variants;
* :func:`film_texture` -- film grain / detector noise, a non-uniform density
  (the heel effect, uneven development or a digitiser's uneven light) and
  scanner lines (a digitiser's or a detector's stripes);
* :func:`text_mask` -- burned-in text (side markers, labels, annotation
  strips), rendered with Pillow's built-in font.

All images are presentation images in ``0..1`` (dense bright).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

__all__ = ["film_texture", "random_label", "text_mask", "variant_rng"]

_LABEL_WORDS: tuple[str, ...] = (
    "PA",
    "AP",
    "ERECT",
    "SUPINE",
    "PORTABLE",
    "INSP",
    "120KV",
    "2.5MAS",
    "SID180",
    "CR",
    "DX",
    "ROOM 2",
    "ID",
)


def variant_rng(rng: np.random.Generator) -> np.random.Generator:
    """A child generator of ``rng`` that does not advance ``rng``'s own stream.

    Uses :meth:`numpy.random.Generator.spawn` (the parent's seed sequence
    counts its children, so successive calls give different children while
    the parent's draws stay what they were).  A generator without a seed
    sequence gives one draw of its own stream instead.
    """
    try:
        return rng.spawn(1)[0]
    except (TypeError, ValueError):
        return np.random.default_rng(int(rng.integers(2**63)))


def text_mask(shape: tuple[int, int], text: str, x: float, y: float, height: int) -> np.ndarray:
    """``(rows, cols)`` float32 mask (0..1) of ``text`` with its top left corner at ``(x, y)``.

    ``height`` is the font size in pixels (Pillow's built-in font; a Pillow
    without FreeType draws its fixed small bitmap font instead).
    """
    img = Image.new("F", (shape[1], shape[0]), 0.0)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(6, int(height)))
    draw.text((float(x), float(y)), text, fill=1.0, font=font)
    return np.asarray(img, dtype=np.float32)


def random_label(rng: np.random.Generator, n_words: int | None = None) -> str:
    """A short technique / annotation label such as ``"PA ERECT 120KV"``."""
    n = int(n_words if n_words is not None else rng.integers(1, 4))
    words = [str(rng.choice(_LABEL_WORDS)) for _ in range(n)]
    if rng.random() < 0.5:
        words.append(str(int(rng.integers(1, 99999))))
    return " ".join(words)


def film_texture(
    rng: np.random.Generator,
    img: np.ndarray,
    grain: float = 0.02,
    unevenness: float = 0.06,
    lines: bool = True,
) -> np.ndarray:
    """``img`` with grain, a non-uniform density and (sometimes) scanner lines.

    Parameters
    ----------
    rng:
        Source of randomness.
    img:
        Presentation image ``(rows, cols)`` in ``0..1``.
    grain:
        Upper bound of the grain's standard deviation (fine, slightly
        correlated noise, stronger in the brighter, less exposed parts as on
        film).
    unevenness:
        Upper bound of the relative density variation: a smooth field of
        large blotches plus a gradient along one axis (heel effect, a
        digitiser's uneven light).
    lines:
        Whether scanner lines may be drawn (with probability 0.5): a few
        thin rows or columns a little brighter or darker, or a faint
        periodic banding.

    Returns
    -------
    numpy.ndarray
        float32, clipped to ``0..1``.
    """
    rows, cols = img.shape
    out = np.asarray(img, dtype=np.float32).copy()
    # non-uniform density: large blotches and a gradient
    u = float(rng.uniform(0.2, 1.0)) * unevenness
    sigma = max(rows, cols) / float(rng.uniform(3.0, 8.0))
    blot = ndimage.gaussian_filter(rng.standard_normal((rows, cols)).astype(np.float32), sigma)
    blot /= float(blot.std()) + 1e-6
    axis = int(rng.integers(0, 2))
    ramp = np.linspace(-1.0, 1.0, rows if axis == 0 else cols, dtype=np.float32)
    ramp = ramp[:, None] if axis == 0 else ramp[None, :]
    field = 0.6 * blot + float(rng.uniform(-1.0, 1.0)) * ramp
    out = out * (1.0 + u * field)
    # grain: fine noise, correlated over about a pixel
    g = float(rng.uniform(0.2, 1.0)) * grain
    fine = ndimage.gaussian_filter(
        rng.standard_normal((rows, cols)).astype(np.float32), float(rng.uniform(0.4, 1.0))
    )
    fine /= float(fine.std()) + 1e-6
    out = out + g * fine * (0.4 + np.clip(out, 0.0, 1.0))
    # scanner lines
    if lines and rng.random() < 0.5:
        vertical = bool(rng.random() < 0.5)
        n = cols if vertical else rows
        prof = np.zeros(n, np.float32)
        if rng.random() < 0.6:
            for _ in range(int(rng.integers(1, 6))):
                at = int(rng.integers(0, n))
                width = int(rng.integers(1, max(2, n // 150) + 1))
                prof[at : at + width] += float(rng.choice([-1.0, 1.0]) * rng.uniform(0.03, 0.12))
        else:
            period = float(rng.uniform(3.0, 12.0))
            phase = float(rng.uniform(0.0, 2.0 * np.pi))
            prof += float(rng.uniform(0.005, 0.02)) * np.sin(
                2.0 * np.pi * np.arange(n, dtype=np.float32) / period + phase
            )
        out = out + (prof[None, :] if vertical else prof[:, None])
    return np.clip(out, 0.0, 1.0).astype(np.float32)

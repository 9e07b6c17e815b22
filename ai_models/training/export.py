"""What every training script shares: seeding, starting from earlier weights,
storing the weights and writing their sidecar.

The sidecar JSON (``<name>.json`` next to ``<name>.pt``) records the
architecture, labels, training settings, held-out metrics and the sha256 of
the weights file; the model cards quote it, and running the script again
with the recorded settings writes a file with the same sha256.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
from typing import Any

import torch

from ai_models.runtime import file_sha256

__all__ = [
    "load_initial_weights",
    "save_state_dict",
    "seed_torch",
    "training_environment",
    "write_sidecar",
]

logger = logging.getLogger(__name__)


def seed_torch(seed: int, threads: int, *, deterministic: bool = False) -> None:
    """Fix torch's threads and seed; *deterministic* also asks for deterministic kernels
    (and cuBLAS's workspace setting they need on a GPU)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_initial_weights(net: torch.nn.Module, path: pathlib.Path | None) -> str | None:
    """Load *path* (a float16 or float32 state dict) into *net* to fine-tune it.

    Returns the file's sha256 (for the sidecar), or ``None`` without a path.
    """
    if path is None:
        return None
    sha = file_sha256(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    logger.info("fine-tuning from %s (sha256 %s)", path.name, sha)
    return sha


def save_state_dict(
    net: torch.nn.Module, path: pathlib.Path, *, half: bool = False
) -> dict[str, torch.Tensor]:
    """Store *net*'s state dict at *path* (on the CPU; floating tensors as float16
    with *half*); returns what was stored."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
        for k, v in net.state_dict().items()
    }
    torch.save(state, path)
    return state


def training_environment() -> dict[str, str]:
    """What the weights' bits depend on besides the command: library versions and the
    CPU (float results differ between instruction sets, so a rerun on another CPU
    model gives close, not identical, weights)."""
    import platform

    import numpy as np

    cpu = platform.processor() or platform.machine()
    flags: set[str] = set()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                cpu = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu": cpu,
        "cpu_simd": " ".join(simd) or "unknown",
    }


def write_sidecar(
    path: pathlib.Path, meta: dict[str, Any], weights: pathlib.Path
) -> dict[str, Any]:
    """Write *meta*, the :func:`training_environment` and the sha256 of *weights* as the
    sidecar JSON at *path*."""
    meta = {**meta, "environment": training_environment(), "sha256": file_sha256(weights)}
    path.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info(
        "wrote %s (%.1f MB), sha256 %s", weights, weights.stat().st_size / 1e6, meta["sha256"]
    )
    return meta

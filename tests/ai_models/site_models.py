"""Shipped networks exported the way a site ships its own (for the site-weights tests)."""

from __future__ import annotations

import json
import pathlib
import shutil
import warnings
from typing import Any

import torch


def export_torchscript(
    network: torch.nn.Module,
    path: pathlib.Path,
    sidecar: pathlib.Path,
    example: torch.Tensor | None = None,
) -> pathlib.Path:
    """``network`` saved as TorchScript at ``path`` with ``sidecar`` copied beside it.

    Scripted (``torch.jit.script``), or traced on ``example`` when one is given.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        if example is None:
            exported = torch.jit.script(network.eval())
        else:
            exported = torch.jit.trace(network.eval(), example, check_trace=False)
    exported.save(str(path))
    shutil.copyfile(sidecar, path.with_suffix(".json"))
    return path


def as_bundle(
    torchscript: pathlib.Path, root: pathlib.Path, metadata: dict[str, Any] | None = None
) -> pathlib.Path:
    """A MONAI bundle folder: ``configs/metadata.json`` (default: the TorchScript
    file's sidecar) and ``models/model.ts``."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = metadata
    if meta is None:
        meta = json.loads(torchscript.with_suffix(".json").read_text())
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    shutil.copyfile(torchscript, root / "models" / "model.ts")
    return root

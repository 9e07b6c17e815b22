"""The training scripts' shared export: the same command writes the same weights, bit for bit.

Short runs of two scripts (a few steps on a few phantoms) are made twice in
separate folders; the weights files must have the same sha256, and that
sha256 is the one the sidecar records.  The shipped weights are made by the
same code path with the commands their sidecars record.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ai_models.runtime import file_sha256
from ai_models.training.export import load_initial_weights, save_state_dict, write_sidecar

ROOT = Path(__file__).resolve().parents[2]


def _train(module: str, out: Path, *args: str) -> tuple[str, dict]:
    done = subprocess.run(
        [sys.executable, "-m", f"ai_models.training.{module}", "--out-dir", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (weights,) = out.glob("*.pt")
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    return file_sha256(weights), sidecar


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("train_mr_brain_lesion", ["--steps", "2", "--pool-size", "2", "--n-val", "1"]),
        ("train_ct_lungs", ["--steps", "2", "--pool-size", "2"]),
    ],
)
def test_the_same_command_writes_the_same_weights(
    tmp_path: Path, module: str, args: list[str]
) -> None:
    args = [*args, "--threads", "1", "--seed", "7"]
    first, meta = _train(module, tmp_path / "a", *args)
    second, _ = _train(module, tmp_path / "b", *args)
    assert first == second
    assert meta["sha256"] == first


def test_float16_export_and_fine_tune_start(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    stored = save_state_dict(net, tmp_path / "w.pt", half=True)
    assert stored["0.weight"].dtype == torch.float16
    assert stored["1.num_batches_tracked"].dtype == torch.int64  # integers stay as they are
    again = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    sha = load_initial_weights(again, tmp_path / "w.pt")
    assert sha == file_sha256(tmp_path / "w.pt")
    assert again[0].weight.dtype == torch.float32
    assert torch.equal(again[0].weight, net[0].weight.detach().half().float())
    assert load_initial_weights(again, None) is None
    meta = write_sidecar(tmp_path / "w.json", {"name": "toy"}, tmp_path / "w.pt")
    assert json.loads((tmp_path / "w.json").read_text()) == meta
    assert list(meta) == ["name", "environment", "sha256"] and meta["sha256"] == sha
    assert set(meta["environment"]) == {"python", "torch", "numpy", "cpu", "cpu_simd"}

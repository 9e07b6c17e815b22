"""Public model folders as pipelines: the node around them versus their own CLI.

For an nnU-Net v2 trained-model folder (``[[models]] kind = "nnunetv2"``) and a
MONAI Model Zoo bundle (``kind = "monai-bundle"``), on the input the
built-in ``ct-lungs`` row of :mod:`bench.analyze` uses (a 300-slice 512x512
synthetic chest CT written as DICOM; ``--size small``: 40 slices), it
measures in one run:

* **node**: the path a job takes -- read the series, run the pipeline (the
  model's own predictor or bundle config), write SEG and SR -- once cold and
  ``--warm`` times warm; the node's own share is the read and the write
  (``warm`` minus the pipeline stage, which is the tool's own work);
* **CLI**: what a site does without the node for the same series: convert it
  to NIfTI (SimpleITK), then the tool's own command, ``nnUNetv2_predict_from_modelfolder``
  or ``python -m monai.bundle run``, with the same folds, tiling, mirroring
  and device (a fresh process each time, as a script would run it).

The models: nnU-Net's demonstration folder (:mod:`ai_models.training.nnunet_demo`,
planned and trained by nnU-Net's own commands on phantoms) and the real
``spleen_ct_segmentation`` bundle configs (``tests/data/model_zoo/``) with
seeded weights of the same network class.  Both are built once into
``--cache`` (default ``.cache/bench-models``).  Their figures measure the
plumbing and the tools' own inference cost, not accuracy.

Usage::

    python -m bench.model_folders [--models nnunet,bundle] [--device cpu]
                                  [--warm 1] [--size full|small] [--no-cli]
                                  [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.analyze import (
    EXIT_NO_DEVICE,
    Measurement,
    _fmt,
    check_devices,
    measure,
    parse_devices,
    prepare_input,
)

__all__ = ["MODELS", "main"]

ROOT = Path(__file__).resolve().parents[1]
SPLEEN_CONFIGS = ROOT / "tests" / "data" / "model_zoo" / "spleen_ct_segmentation"
MODELS = ("nnunet", "bundle")


@dataclass
class Row:
    """One model folder on one device: the node's runs and the CLI's."""

    model: str
    device: str
    node: Measurement
    nifti_s: float = float("nan")
    cli_s: list[float] = field(default_factory=list)
    cli_error: str | None = None

    @property
    def cli_median_s(self) -> float:
        return statistics.median(self.cli_s) if self.cli_s else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "node": self.node.as_dict(),
            "nifti_s": self.nifti_s,
            "cli_s": self.cli_s,
            "cli_error": self.cli_error,
        }


# --------------------------------------------------------------------------- models


def nnunet_folder(cache: Path, console: Console) -> Path:
    """The demonstration nnU-Net model folder (trained once into ``cache``)."""
    from ai_models.training.nnunet_demo import build_demo_model

    done = cache / "nnunet" / "model-folder.txt"
    if done.is_file() and Path(done.read_text().strip()).is_dir():
        return Path(done.read_text().strip())
    console.print("nnunet: planning and training the demonstration model (once) ...")
    folder = build_demo_model(cache / "nnunet")
    done.write_text(str(folder))
    return folder


def spleen_bundle(cache: Path, console: Console) -> Path:
    """The real spleen bundle configs with seeded weights of its own network class."""
    import torch
    from monai.bundle import ConfigParser

    root = cache / "spleen_ct_segmentation"
    weights = root / "models" / "model.pt"
    if weights.is_file():
        return root
    console.print("bundle: saving seeded weights for spleen_ct_segmentation (once) ...")
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(SPLEEN_CONFIGS, root)
    (root / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), weights)
    return root


def model_spec(model: str, folder: Path, device: str) -> Any:
    """The ``[[models]]`` spec a site would configure for the folder."""
    from ai_models.pipelines import build_model_spec

    if model == "nnunet":
        return build_model_spec("nnunetv2", name="bench-nnunet", path=folder, device=device)
    return build_model_spec("monai-bundle", name="bench-bundle", path=folder, device=device)


# --------------------------------------------------------------------------- CLI


def write_nifti(files: list[Any], out: Path) -> float:
    """The series as SimpleITK reads it, as NIfTI; returns the seconds it took."""
    import SimpleITK as sitk

    t0 = time.perf_counter()
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(files[0].path.parent)))
    out.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(reader.Execute(), str(out))
    return time.perf_counter() - t0


def _script(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.is_file() else name


def cli_command(model: str, folder: Path, spec: Any, nifti_dir: Path, out: Path) -> list[str]:
    """The tool's own command for the same options as ``spec``."""
    device = "cuda" if str(spec.device or "cpu").startswith("cuda") else "cpu"
    if model == "nnunet":
        cmd = [
            _script("nnUNetv2_predict_from_modelfolder"),
            "-i", str(nifti_dir), "-o", str(out), "-m", str(spec.model_folder()),
            "-f", *[str(f) for f in spec.folds],
            "-chk", spec.checkpoint, "-step_size", str(spec.tile_step_size),
            "-device", device, "-npp", "1", "-nps", "1",
        ]  # fmt: skip
        if not spec.use_mirroring:
            cmd.append("--disable_tta")
        return cmd
    dataset = nifti_dir.parent / "dataset"
    (dataset / "imagesTs").mkdir(parents=True, exist_ok=True)
    for f in nifti_dir.glob("*.nii.gz"):
        shutil.copyfile(f, dataset / "imagesTs" / f.name)
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(folder / "configs" / "inference.json"),
        "--bundle_root", str(folder), "--dataset_dir", str(dataset),
        "--output_dir", str(out), "--device", device, "--dataloader#num_workers", "0",
    ]  # fmt: skip


def run_cli(cmd: list[str], timeout: float) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{Path(cmd[0]).name} exited {proc.returncode}: {' | '.join(tail)}")
    return seconds


# --------------------------------------------------------------------------- table


def table(rows: list[Row]) -> Table:
    t = Table(title="bench.model_folders: the node around a public model folder vs its own CLI")
    cols = (
        "model", "device", "input", "node cold s", "node warm s", "model folder's run s",
        "node read+write s", "NIfTI s", "CLI s", "CLI+NIfTI / node warm", "GPU peak MiB",
        "peak RSS MiB",
    )  # fmt: skip
    for i, c in enumerate(cols):
        t.add_column(c, justify="left" if i < 3 else "right", no_wrap=True)
    for r in rows:
        m = r.node
        if m.error is not None:
            t.add_row(r.model, r.device, m.what, f"error: {m.error}", *["-"] * 8)
            continue
        overhead = m.warm_s - m.warm_pipeline_s
        cli_total = r.cli_median_s + r.nifti_s
        ratio = cli_total / m.warm_s if m.warm_s > 0 and r.cli_s else float("nan")
        t.add_row(
            r.model, r.device, m.what, _fmt(m.cold_s), _fmt(m.warm_s), _fmt(m.warm_pipeline_s),
            _fmt(overhead), _fmt(r.nifti_s),
            r.cli_error and f"error: {r.cli_error[:60]}" or _fmt(r.cli_median_s),
            "-" if ratio != ratio else f"{ratio:.2f}x",
            _fmt(m.gpu_reserved_mib, 0), _fmt(m.peak_rss_mib, 0),
        )  # fmt: skip
    return t


def _clear_warm_models() -> None:
    for module, name in (
        ("ai_models.pipelines.nnunet", "clear_predictor_cache"),
        ("ai_models.pipelines.monai_bundle", "clear_bundle_cache"),
    ):
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            getattr(mod, name)()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="nnunet,bundle")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or a list: cuda,cpu")
    ap.add_argument("--warm", type=int, default=1, help="warm node runs after the cold one")
    ap.add_argument("--cli-runs", type=int, default=1, help="runs of the tool's own CLI")
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--no-cli", action="store_true", help="skip the tools' own CLI")
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench-models")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per CLI run")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    devices = parse_devices(args.device)
    problem = check_devices(devices)
    if problem is not None:
        print(f"bench.model_folders: {problem}", file=sys.stderr)
        return EXIT_NO_DEVICE

    console = Console(width=200)
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-model-folders-"))
    rows: list[Row] = []
    try:
        base = prepare_input("ct-lungs", work, small=args.size == "small", console=console)
        nifti_dir = work / "nifti"
        nifti_s = write_nifti(base.files, nifti_dir / "case_0000.nii.gz")
        for model in models:
            folder = (nnunet_folder if model == "nnunet" else spleen_bundle)(args.cache, console)
            for dev in devices:
                spec = model_spec(model, folder, dev)
                inp = dataclasses.replace(base, pipeline=spec.name)
                _clear_warm_models()
                try:
                    node = measure(inp, dev, args.warm, work, console, configured=[spec])
                except Exception as exc:  # one failing model must not hide the other
                    error = f"{type(exc).__name__}: {exc}"
                    node = Measurement(spec.name, dev, base.what, error=error)
                row = Row(model, dev, node, nifti_s=nifti_s)
                if not args.no_cli:
                    for i in range(args.cli_runs):
                        out = work / f"cli-{model}-{dev}-{i}"
                        cmd = cli_command(model, folder, spec, nifti_dir, out)
                        try:
                            row.cli_s.append(run_cli(cmd, args.timeout))
                            console.print(f"{model} CLI on {dev}: {row.cli_s[-1]:.2f} s")
                        except (RuntimeError, subprocess.TimeoutExpired) as exc:
                            row.cli_error = str(exc)
                            console.print(f"[red]{model} CLI failed: {exc}[/red]")
                            break
                rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(table(rows))
    console.print(
        "node: read DICOM + pipeline + write SEG and SR; model folder's run: the pipeline "
        "stage (the tool's own pre-processing, inference and post-processing, and the "
        "hand-over to and from the node's volume); node read+write = node warm - that; "
        "CLI: the tool's own command in a fresh process on a NIfTI of the same series "
        "(model load included, as a script runs it); NIfTI: SimpleITK's conversion; "
        "GPU peak: PyTorch's peak reserved memory in the node's runs"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    return 1 if any(r.node.error or r.cli_error for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())


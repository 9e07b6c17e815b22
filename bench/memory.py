"""Memory benchmark: peak resident memory of a worker's path on a long CT series.

A synthetic chest CT of ``--slices`` x 512x512 (default 1,000; the 300-slice
phantom of :func:`ai_models.training.evaluate.full_size_volume` resampled
along z to the same anatomy at a finer slice spacing) is written as DICOM;
then a fresh process runs what a worker runs for one job
(:func:`dicom_node.work.series_run.run_series`: read the series, the
pipeline, the SEG and SR written and saved) with the series' files as the
database knows them (no header read before), and reports the peak resident
set size (``VmHWM`` of ``/proc/self/status``) after each stage.  The fresh
process starts with the pipeline's imports done, so the table shows what the
series itself costs on top of a worker's baseline.

Usage::

    python -m bench.memory [--slices 1000] [--pipeline ct-lungs] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.synthetic import write_volume_series


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmHWM``, ``VmRSS``) in MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _write_series(slices: int, folder: Path) -> list[Path]:
    """``slices`` x 512x512 synthetic chest CT as DICOM (same anatomy, finer z)."""
    import numpy as np

    from ai_models.training.evaluate import full_size_volume

    base = full_size_volume()
    n = base.shape[0]
    index = np.rint(np.linspace(0, n - 1, slices)).astype(int)
    array = base.array[index]
    spacing = base.spacing.copy()
    spacing[0] = base.spacing[0] * (n - 1) / max(slices - 1, 1)
    volume = type(base)(
        array=array,
        origin=base.origin,
        spacing=spacing,
        direction=base.direction,
        frames=[base.frames[0]] * slices,
        source_datasets=[],
        modality=base.modality,
        study_instance_uid=base.study_instance_uid,
        series_instance_uid=base.series_instance_uid,
        frame_of_reference_uid=base.frame_of_reference_uid,
    )
    return write_volume_series(volume, folder)


def child(folder: Path, pipeline_name: str, device: str | None, out: Path) -> dict[str, float]:
    """The worker's path on the series under ``folder``; peak RSS (MiB) after each stage."""
    import time

    from ai_models.dicom_files import scan_paths
    from ai_models.pipelines import get_pipeline
    from dicom_node.results import save_datasets, write_results

    images, _ = scan_paths([folder])
    # As the worker builds them from the database: no header kept, no frame count.
    from dataclasses import replace

    files = [replace(f, number_of_frames=None) for f in images]
    options = {"device": device} if device else {}
    pipeline = get_pipeline(pipeline_name, **options)
    pipeline.load()
    peaks: dict[str, float] = {"baseline (imports, model)": _status_mb("VmHWM")}
    t0 = time.perf_counter()
    volume = pipeline.read_series(files)
    peaks["read"] = _status_mb("VmHWM")
    result = pipeline.run(volume)
    peaks["pipeline"] = _status_mb("VmHWM")
    del volume
    datasets = write_results(result, ("seg", "sr"), uid_seed="0" * 32)
    save_datasets(datasets, out)
    peaks["write"] = _status_mb("VmHWM")
    peaks["seconds"] = time.perf_counter() - t0
    return peaks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--pipeline", default="ct-lungs")
    ap.add_argument("--device", default=None, help="cpu, cuda (default: automatic)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        peaks = child(args.child, args.pipeline, args.device, args.child.parent / "out")
        print(json.dumps(peaks))
        return 0

    console = Console(width=120)
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        console.print(f"writing a {args.slices}-slice 512x512 synthetic chest CT ...")
        _write_series(args.slices, work / "ct")
        cmd = [sys.executable, "-m", "bench.memory", "--child", str(work / "ct")]
        cmd += ["--pipeline", args.pipeline] + (["--device", args.device] if args.device else [])
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        peaks = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = peaks.pop("seconds")
    table = Table(title=f"{args.pipeline}, {args.slices} x 512x512 CT: worker peak RSS")
    table.add_column("after stage")
    table.add_column("peak RSS MiB (VmHWM)", justify="right")
    for name, mb in peaks.items():
        table.add_row(name, f"{mb:.0f}")
    console.print(table)
    console.print(f"read + pipeline + write: {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Analysis benchmark: time per stage and peak memory of a pipeline, end to end.

It runs the path the node runs for a job -- read the series
(``pipeline.read_series``), run the pipeline (model load, preprocess,
inference, postprocess), write the result objects -- and prints seconds and
peak resident memory per stage, cold (first run in the process: model
loading included) and warm.  Inputs, unless ``--input`` names a folder:

* ``ct-lungs``: a 300-slice 512x512 synthetic chest CT written as DICOM (the
  phantom family the demo model was trained on);
* ``cxr-findings``: a chest CR of the model's training family at the size of
  a real one (about 1950 x 1720; the shared real CR is refused by the model's
  out-of-distribution check, so it measures no inference);
* ``mg-masses``: a mammogram of its training family, 3000 rows (likewise);
* ``mr-brain-lesion``: the real enhanced MR series of the shared test data.

On a machine with CUDA the pipeline runs on the GPU (``--device`` overrides)
and GPU peak memory is reported too.

Usage::

    python -m bench.analyze [--pipeline ct-lungs] [--device cpu] [--repeats 2]
                            [--outputs seg,sr] [--input FOLDER]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.synthetic import write_volume_series


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Samples the resident set size every few milliseconds; per-stage peaks."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            time.sleep(self.interval_s)

    def __enter__(self) -> PeakMemory:
        self.peak = _rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb())


@contextmanager
def stage(timings: dict[str, tuple[float, float]], name: str) -> Iterator[None]:
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
    timings[name] = (seconds, mem.peak)


RADIOGRAPH_INPUTS = {"cxr-findings": "sr,sc", "mg-masses": "sr,gsps"}
"""Pipelines benchmarked on a radiograph of their training family, and default outputs."""


def _training_family_radiograph(pipeline: str, folder: Path) -> Path:
    """A real-sized radiograph of ``pipeline``'s training family, written as DICOM."""
    from tests.support.radiographs import cxr_dataset, mammo_dataset

    ds = cxr_dataset(size=1950) if pipeline == "cxr-findings" else mammo_dataset(rows=3000)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pipeline}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", default="ct-lungs")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: automatic)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--outputs", default=None, help="default: seg,sr (or the pipeline's)")
    ap.add_argument("--input", type=Path, default=None, help="a DICOM file or folder")
    args = ap.parse_args(argv)

    import torch

    from ai_models.dicom_files import discover_series
    from ai_models.pipelines import get_pipeline
    from ai_models.training.evaluate import full_size_volume
    from dicom_node.results import parse_outputs, save_datasets, write_results

    console = Console(width=140)
    work = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    default_outputs = "seg,sr"
    if args.input is not None:
        files = [args.input]
        what = str(args.input)
    elif args.pipeline == "ct-lungs":
        console.print("writing a 300-slice 512x512 synthetic chest CT ...")
        files = write_volume_series(full_size_volume(), work / "ct")
        what = f"{len(files)} x 512x512 CT"
    elif args.pipeline == "mr-brain-lesion":
        # The shared data holds no brain MR (its MR phantom is refused as not a head).
        import numpy as np

        from ai_models.training.brain_phantoms import phantom_volume
        from ai_models.training.evaluate_mr_brain_lesion import heldout_phantom

        console.print("writing a synthetic axial FLAIR brain MR ...")
        ph = heldout_phantom(np.random.default_rng(7), "axial", "FLAIR", n_lesions=2)
        files = write_volume_series(
            phantom_volume(ph), work / "mr", description="synthetic brain MR",
            body_part="BRAIN", modality="MR",
        )  # fmt: skip
        what = f"{len(files)}-slice synthetic brain MR"
    elif args.pipeline in RADIOGRAPH_INPUTS:
        default_outputs = RADIOGRAPH_INPUTS[args.pipeline]
        files = [_training_family_radiograph(args.pipeline, work / "radiograph")]
        what = f"synthetic {args.pipeline} radiograph"
    else:
        ap.error(f"no default input for {args.pipeline!r}: pass --input")
    series = list(discover_series(files).values())
    if not series:
        ap.error(f"no DICOM image series under {files[0]}")
    series_files = series[0]
    outputs = parse_outputs(args.outputs or default_outputs)
    options = {"device": args.device} if args.device else {}

    runs: list[dict[str, tuple[float, float]]] = []
    device_name = "?"
    for run in range(args.repeats):
        timings: dict[str, tuple[float, float]] = {}
        t_all = time.perf_counter()
        with PeakMemory() as total_mem:
            pipe = get_pipeline(args.pipeline, **options)
            with stage(timings, "read"):
                volume = pipe.read_series(series_files)
            with stage(timings, "pipeline (load+infer)"):
                pipe.check(volume)
                result = pipe.run(volume)
            with stage(timings, "write"):
                datasets = write_results(result, outputs)
                save_datasets(datasets, work / f"out{run}")
        for name, seconds in result.timings.items():
            timings[f"  {name}"] = (seconds, float("nan"))
        timings["total"] = (time.perf_counter() - t_all, total_mem.peak)
        runs.append(timings)
        device_name = str(getattr(pipe, "device", options.get("device", "auto")))
        console.print(f"run {run + 1}: {timings['total'][0]:.2f} s")

    table = Table(title=f"{args.pipeline} on {what}, device {device_name}")
    table.add_column("stage")
    for i in range(len(runs)):
        label = "cold" if i == 0 else f"warm {i}"
        table.add_column(f"{label} s", justify="right")
        table.add_column(f"{label} peak RSS MB", justify="right")
    for name in runs[0]:
        row = [name]
        for r in runs:
            seconds, peak = r.get(name, (float("nan"), float("nan")))
            row += [f"{seconds:.2f}", "" if peak != peak else f"{peak:.0f}"]
        table.add_row(*row)
    console.print(table)
    if torch.cuda.is_available():
        console.print(
            f"GPU peak memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB "
            f"({torch.cuda.get_device_name()})"
        )
    console.print("indented rows: the pipeline's own stage timings (inside 'pipeline')")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Analysis benchmark: cold and warm seconds, peak memory, per pipeline and per device.

It runs the path the node runs for a job -- read the series
(``pipeline.read_series``), run the pipeline (model load, checks,
preprocess, inference, postprocess), write the result objects -- once cold
(the model is not loaded yet: load and first-run costs included) and
``--warm`` times warm, for every pipeline asked and on every device asked,
and prints one table: per pipeline and device the cold seconds, the median
warm seconds, peak GPU memory (allocated and reserved by PyTorch, reset per
pipeline), peak resident memory and, when a CPU and a GPU are both asked,
the CPU / GPU ratio.  Inputs, unless ``--input`` names a file or folder:

* ``ct-lungs``: a 300-slice 512x512 synthetic chest CT written as DICOM (the
  phantom family the demo model was trained on);
* ``cxr-findings``: a chest CR of the model's training family at the size of
  a real one (about 1950 x 1720; the shared real CR is refused by the model's
  out-of-distribution check, so it measures no inference);
* ``mg-masses``: a mammogram of its training family, 3000 rows (likewise);
* ``mr-brain-lesion``: a synthetic axial FLAIR brain MR (the shared data hold
  no brain MR that the model accepts).

``--size small`` makes every input small (a 40-slice CT, a 640-pixel CR, a
1024-row mammogram, a thick-slice MR): a smoke run, not a benchmark.

``--device`` takes a comma-separated list (``cuda,cpu``); ``auto`` (the
default) is ``cuda`` where available, else ``cpu``.  A device that is asked
for and not available is an error (exit code 2), never a silent fall-back
to the CPU.  With one pipeline on one device the per-stage table is printed
too (``--stages`` prints it always).

Usage::

    python -m bench.analyze [--pipeline all|ct-lungs,...] [--device cuda,cpu]
                            [--warm 3] [--size full|small] [--stages]
                            [--outputs seg,sr] [--input FOLDER] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.synthetic import write_volume_series

__all__ = [
    "PIPELINES",
    "Measurement",
    "PeakMemory",
    "check_devices",
    "main",
    "summary_table",
    "write_volume_series",
]

PIPELINES = ("ct-lungs", "cxr-findings", "mg-masses", "mr-brain-lesion")
"""The pipelines ``--pipeline all`` runs, in this order."""

RADIOGRAPH_INPUTS = {"cxr-findings": "sr,sc", "mg-masses": "sr,gsps"}
"""Pipelines benchmarked on a radiograph of their training family, and default outputs."""

EXIT_NO_DEVICE = 2
"""Exit code when a device asked for is not available."""

SUMMARY_COLUMNS = (
    "pipeline",
    "device",
    "input",
    "cold s",
    "warm s",
    "warm pipeline s",
    "warm infer s",
    "GPU alloc MiB",
    "GPU reserved MiB",
    "RSS MiB",
    "CPU/GPU warm",
    "CPU/GPU pipeline",
)
"""The summary table's columns (see ``docs/benchmarks-gpu.md``)."""


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
    """Record ``name``'s seconds and peak RSS (MiB) into ``timings``."""
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        yield
        seconds = time.perf_counter() - t0
    timings[name] = (seconds, mem.peak)


NAN = float("nan")

RunTimings = dict[str, tuple[float, float]]
"""One run: stage name -> (seconds, peak RSS MiB or NaN)."""


@dataclass
class BenchInput:
    """A pipeline's input series, written once and shared by every device."""

    pipeline: str
    what: str
    files: list[Path]
    outputs: str


@dataclass
class Measurement:
    """One pipeline on one device: a cold run, then the warm runs."""

    pipeline: str
    device: str
    what: str
    runs: list[RunTimings] = field(default_factory=list)
    gpu_alloc_mib: float | None = None
    gpu_reserved_mib: float | None = None
    error: str | None = None

    def _warm(self, name: str) -> float:
        values = [r[name][0] for r in self.runs[1:] if name in r]
        return statistics.median(values) if values else NAN

    @property
    def cold_s(self) -> float:
        """Seconds of the first run (model load included)."""
        return self.runs[0]["total"][0] if self.runs else NAN

    @property
    def warm_s(self) -> float:
        """Median seconds of the warm runs, read + pipeline + write."""
        return self._warm("total")

    @property
    def warm_pipeline_s(self) -> float:
        """Median seconds of the warm runs' pipeline stage (checks and run)."""
        return self._warm(PIPELINE_STAGE)

    @property
    def warm_infer_s(self) -> float:
        """Median of the pipeline's own ``infer`` timing in the warm runs."""
        return self._warm("  infer")

    @property
    def peak_rss_mib(self) -> float:
        """Highest resident set size seen in any run (the whole process)."""
        peaks = [r["total"][1] for r in self.runs if "total" in r]
        return max(peaks) if peaks else NAN

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-ready values."""
        return {
            "pipeline": self.pipeline,
            "device": self.device,
            "input": self.what,
            "cold_s": _num(self.cold_s),
            "warm_s": _num(self.warm_s),
            "warm_runs": max(len(self.runs) - 1, 0),
            "warm_pipeline_s": _num(self.warm_pipeline_s),
            "warm_infer_s": _num(self.warm_infer_s),
            "gpu_peak_alloc_mib": self.gpu_alloc_mib,
            "gpu_peak_reserved_mib": self.gpu_reserved_mib,
            "peak_rss_mib": _num(self.peak_rss_mib),
            "error": self.error,
            "runs": [{k: v[0] for k, v in r.items()} for r in self.runs],
        }


PIPELINE_STAGE = "pipeline (load+infer)"


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 4)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _ratio(cpu: float, other: float) -> str:
    if math.isnan(cpu) or math.isnan(other) or other <= 0:
        return "-"
    return f"{cpu / other:.1f}x"


def summary_table(measurements: list[Measurement], title: str | None = None) -> Table:
    """One row per pipeline and device: cold, warm, peak memory, CPU/GPU ratios.

    The ratio columns are filled on the rows of a non-CPU device when the same
    pipeline was also measured on the CPU: CPU seconds / this device's seconds
    (warm total, and the warm pipeline stage alone).
    """
    table = Table(title=title or "bench.analyze: cold = first run (model load), warm = median")
    for i, name in enumerate(SUMMARY_COLUMNS):
        table.add_column(name, justify="left" if i < 3 else "right", no_wrap=True)
    cpu = {m.pipeline: m for m in measurements if m.device == "cpu" and m.error is None}
    for m in measurements:
        if m.error is not None:
            table.add_row(m.pipeline, m.device, m.what, f"error: {m.error}", *["-"] * 8)
            continue
        ref = cpu.get(m.pipeline)
        on_gpu = m.device != "cpu" and ref is not None
        table.add_row(
            m.pipeline,
            m.device,
            m.what,
            _fmt(m.cold_s),
            _fmt(m.warm_s),
            _fmt(m.warm_pipeline_s),
            _fmt(m.warm_infer_s, 3),
            _fmt(m.gpu_alloc_mib, 0),
            _fmt(m.gpu_reserved_mib, 0),
            _fmt(m.peak_rss_mib, 0),
            _ratio(ref.warm_s, m.warm_s) if on_gpu and ref else "-",
            _ratio(ref.warm_pipeline_s, m.warm_pipeline_s) if on_gpu and ref else "-",
        )
    return table


def stage_table(m: Measurement) -> Table:
    """Per-stage seconds and peak RSS of every run of one measurement."""
    table = Table(title=f"{m.pipeline} on {m.what}, device {m.device}")
    table.add_column("stage")
    for i in range(len(m.runs)):
        label = "cold" if i == 0 else f"warm {i}"
        table.add_column(f"{label} s", justify="right")
        table.add_column(f"{label} peak RSS MiB", justify="right")
    for name in m.runs[0] if m.runs else []:
        row = [name]
        for r in m.runs:
            seconds, peak = r.get(name, (NAN, NAN))
            row += [_fmt(seconds), "" if math.isnan(peak) else f"{peak:.0f}"]
        table.add_row(*row)
    return table


def check_devices(devices: list[str]) -> str | None:
    """``None`` when every device can be used, else why not (one line per device).

    ``cuda`` (or ``cuda:N``) needs ``torch.cuda.is_available()`` and N below
    the device count; there is no fall-back to the CPU.
    """
    import torch

    problems = []
    for dev in devices:
        try:
            d = torch.device(dev)
        except (RuntimeError, ValueError) as exc:
            problems.append(f"--device {dev}: not a torch device ({exc})")
            continue
        if d.type == "cpu":
            continue
        if d.type != "cuda":
            problems.append(f"--device {dev}: only cpu and cuda[:N] are benchmarked")
        elif not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            problems.append(
                f"--device {dev}: CUDA is not available (torch {torch.__version__}, {build}); "
                "no fall-back to the CPU: run with --device cpu, or on a machine with a GPU"
            )
        elif d.index is not None and d.index >= torch.cuda.device_count():
            problems.append(
                f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    return "\n".join(problems) or None


def parse_devices(spec: str) -> list[str]:
    """``"cuda,cpu"`` -> ``["cuda", "cpu"]``; ``auto`` becomes ``cuda`` or ``cpu``."""
    import torch

    out: list[str] = []
    for part in spec.split(","):
        dev = part.strip().lower()
        if dev in ("", "auto"):
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        if dev not in out:
            out.append(dev)
    return out


def parse_pipelines(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of pipeline names."""
    if spec.strip() == "all":
        return list(PIPELINES)
    return [p.strip() for p in spec.split(",") if p.strip()]


def _training_family_radiograph(pipeline: str, folder: Path, small: bool) -> Path:
    """A radiograph of ``pipeline``'s training family, written as DICOM."""
    from tests.support.radiographs import cxr_dataset, mammo_dataset

    if pipeline == "cxr-findings":
        ds = cxr_dataset(size=640 if small else 1950)
    else:
        ds = mammo_dataset(rows=1024 if small else 3000)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pipeline}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def prepare_input(
    pipeline: str,
    work: Path,
    *,
    small: bool = False,
    input_path: Path | None = None,
    outputs: str | None = None,
    console: Console | None = None,
) -> BenchInput:
    """Write ``pipeline``'s default input (or take ``input_path``) and find its series.

    Raises
    ------
    ValueError
        No default input for ``pipeline``, or no DICOM image series found.
    """
    from ai_models.dicom_files import discover_series

    say = console.print if console is not None else (lambda *a: None)
    default_outputs = RADIOGRAPH_INPUTS.get(pipeline, "seg,sr")
    folder = work / pipeline
    if input_path is not None:
        files = [input_path]
        what = str(input_path)
    elif pipeline == "ct-lungs":
        if small:
            from tests.support.chest_ct import chest_phantom_volume

            volume = chest_phantom_volume()
        else:
            from ai_models.training.evaluate import full_size_volume

            volume = full_size_volume()
        say(f"{pipeline}: writing a synthetic chest CT ...")
        files = write_volume_series(volume, folder)
        rows, cols = volume.array.shape[-2:]
        what = f"{len(files)} x {rows}x{cols} CT"
    elif pipeline == "mr-brain-lesion":
        import numpy as np

        from ai_models.training.brain_phantoms import phantom_volume
        from ai_models.training.evaluate_mr_brain_lesion import heldout_phantom

        say(f"{pipeline}: writing a synthetic axial FLAIR brain MR ...")
        slice_mm = (5.0, 6.0) if small else (1.0, 6.0)
        ph = heldout_phantom(
            np.random.default_rng(7), "axial", "FLAIR", n_lesions=2, slice_mm=slice_mm
        )
        files = write_volume_series(
            phantom_volume(ph), folder, description="synthetic brain MR",
            body_part="BRAIN", modality="MR",
        )  # fmt: skip
        what = f"{len(files)}-slice brain MR"
    elif pipeline in RADIOGRAPH_INPUTS:
        say(f"{pipeline}: writing a synthetic radiograph ...")
        files = [_training_family_radiograph(pipeline, folder, small)]
        what = f"{'small' if small else 'real-sized'} {pipeline.split('-')[0].upper()}"
    else:
        raise ValueError(f"no default input for {pipeline!r}: pass --input")
    series = list(discover_series(files).values())
    if not series:
        raise ValueError(f"no DICOM image series under {files[0]}")
    return BenchInput(pipeline, what, list(series[0]), outputs or default_outputs)


def _gpu_fresh(device: str) -> None:
    """Forget warm models, free cached GPU memory and reset the peak counters."""
    import torch

    from ai_models import runtime

    runtime.clear_model_cache()
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(
    inp: BenchInput,
    device: str,
    warm: int,
    work: Path,
    console: Console | None = None,
    configured: Sequence[Any] = (),
) -> Measurement:
    """Run ``inp``'s pipeline on ``device``: once cold (no warm model), ``warm`` times warm.

    ``configured``: site model specs (``[[models]]``) to find ``inp.pipeline``
    among, as :func:`ai_models.pipelines.get_pipeline` takes them (each spec
    carries its own device).
    """
    import torch

    from ai_models.pipelines import get_pipeline
    from dicom_node.results import parse_outputs, save_datasets, write_results

    m = Measurement(inp.pipeline, device, inp.what)
    outputs = parse_outputs(inp.outputs)
    on_gpu = device.startswith("cuda")
    _gpu_fresh(device)
    for run in range(1 + warm):
        timings: RunTimings = {}
        t_all = time.perf_counter()
        with PeakMemory() as total_mem:
            pipe = get_pipeline(inp.pipeline, configured, device=device)
            with stage(timings, "read"):
                volume = pipe.read_series(inp.files)
            with stage(timings, PIPELINE_STAGE):
                pipe.check(volume)
                result = pipe.run(volume)
                if on_gpu:
                    torch.cuda.synchronize(device)
            with stage(timings, "write"):
                datasets = write_results(result, outputs)
                save_datasets(datasets, work / f"out-{inp.pipeline}-{device}-{run}")
        for name, seconds in result.timings.items():
            timings[f"  {name}"] = (seconds, NAN)
        timings["total"] = (time.perf_counter() - t_all, total_mem.peak)
        m.runs.append(timings)
        if console is not None:
            label = "cold" if run == 0 else f"warm {run}"
            console.print(f"{inp.pipeline} on {device}, {label}: {timings['total'][0]:.2f} s")
    if on_gpu:
        m.gpu_alloc_mib = torch.cuda.max_memory_allocated(device) / 2**20
        m.gpu_reserved_mib = torch.cuda.max_memory_reserved(device) / 2**20
    return m


def _prime(devices: list[str], console: Console) -> None:
    """Pay the once-per-process costs before the clock: imports, CUDA context."""
    import torch

    t0 = time.perf_counter()
    import ai_models.pipelines  # noqa: F401
    import dicom_node.results  # noqa: F401

    try:
        import monai.inferers  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError:
        pass
    console.print(f"imports: {time.perf_counter() - t0:.2f} s (not in any cold figure)")
    for dev in devices:
        if dev.startswith("cuda"):
            t0 = time.perf_counter()
            torch.zeros(1, device=dev).add_(1)
            torch.cuda.synchronize(dev)
            props = torch.cuda.get_device_properties(dev)
            console.print(
                f"{dev}: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                f"CUDA context {time.perf_counter() - t0:.2f} s (not in any cold figure)"
            )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 2 when a device asked for is not available."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--pipeline", default="all", help="all, or names separated by commas")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, or a list: cuda,cpu")
    ap.add_argument("--warm", type=int, default=3, help="warm runs after the cold one")
    ap.add_argument("--size", choices=("full", "small"), default="full")
    ap.add_argument("--stages", action="store_true", help="per-stage table of every run")
    ap.add_argument("--outputs", default=None, help="default: seg,sr (or the pipeline's)")
    ap.add_argument("--input", type=Path, default=None, help="a DICOM file or folder")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.warm < 0:
        ap.error("--warm must be 0 or more")

    devices = parse_devices(args.device)
    problem = check_devices(devices)
    if problem is not None:
        print(f"bench.analyze: {problem}", file=sys.stderr)
        return EXIT_NO_DEVICE
    pipelines = parse_pipelines(args.pipeline)
    if args.input is not None and len(pipelines) != 1:
        ap.error("--input needs exactly one --pipeline")

    import torch

    from ai_models.pipelines import list_pipelines

    known = {info.name for info in list_pipelines()}
    unknown = [p for p in pipelines if p not in known]
    if unknown:
        ap.error(f"unknown pipeline(s) {', '.join(unknown)}; known: {', '.join(PIPELINES)}")

    console = Console(width=200)
    console.print(
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), "
        f"{torch.get_num_threads()} CPU threads; devices {', '.join(devices)}; "
        f"pipelines {', '.join(pipelines)}; 1 cold + {args.warm} warm runs each"
    )
    _prime(devices, console)
    work = Path(tempfile.mkdtemp(prefix="bench-analyze-"))
    measurements: list[Measurement] = []
    try:
        for name in pipelines:
            try:
                inp = prepare_input(
                    name, work, small=args.size == "small", input_path=args.input,
                    outputs=args.outputs, console=console,
                )  # fmt: skip
            except ValueError as exc:
                ap.error(str(exc))
            for dev in devices:
                try:
                    m = measure(inp, dev, args.warm, work, console)
                except Exception as exc:  # one failing pipeline must not hide the others
                    m = Measurement(name, dev, inp.what, error=f"{type(exc).__name__}: {exc}")
                    console.print(f"[red]{name} on {dev} failed: {m.error}[/red]")
                measurements.append(m)
                if m.error is None and (args.stages or len(pipelines) == len(devices) == 1):
                    console.print(stage_table(m))
            shutil.rmtree(work / name, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    console.print(summary_table(measurements))
    console.print(
        "cold: first run with no model loaded (load, first-run kernels); warm: median of "
        f"{args.warm} runs; seconds are read + pipeline + write; GPU memory: PyTorch's "
        "peak allocated / reserved for that pipeline; CPU/GPU: CPU seconds / this device's"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([m.as_dict() for m in measurements], indent=1))
    return 1 if any(m.error for m in measurements) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU readiness benchmark's plumbing, proven on the CPU (no GPU, no timing asserted).

``bench/gpu.sh`` must parse, ``bench.analyze`` must build its table (cold,
warm, peak GPU memory, CPU/GPU ratio) from a real run of the smallest inputs,
and ``--device cuda`` without CUDA must stop with exit code 2 and a message
instead of falling back to the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import analyze

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "bench" / "gpu.sh"


def _headers(table: object) -> list[str]:
    return [str(c.header) for c in table.columns]  # type: ignore[attr-defined]


def _cells(table: object, row: int) -> dict[str, str]:
    cols = table.columns  # type: ignore[attr-defined]
    return {str(c.header): str(list(c.cells)[row]) for c in cols}


def test_gpu_sh_parses_and_has_its_modes() -> None:
    subprocess.run(["bash", "-n", str(GPU_SH)], check=True)
    out = subprocess.run(
        ["bash", str(GPU_SH), "--help"], check=True, capture_output=True, text=True
    ).stdout
    for flag in ("--quick", "--cpu-only", "--fetch-wheels", "OUT"):
        assert flag in out
    bad = subprocess.run(["bash", str(GPU_SH), "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 2


def test_summary_table_columns_and_ratio() -> None:
    def run(total: float, pipe: float) -> analyze.RunTimings:
        return {analyze.PIPELINE_STAGE: (pipe, 1.0), "  infer": (pipe / 2, float("nan")),
                "total": (total, 900.0)}  # fmt: skip

    cpu = analyze.Measurement("ct-lungs", "cpu", "ct", [run(9.0, 6.0), run(4.0, 2.0)])
    gpu = analyze.Measurement(
        "ct-lungs", "cuda", "ct", [run(5.0, 3.0), run(1.0, 0.5), run(3.0, 1.5), run(0.5, 0.25)],
        gpu_alloc_mib=1234.0, gpu_reserved_mib=2048.0,
    )  # fmt: skip
    failed = analyze.Measurement("mg-masses", "cuda", "mg", error="boom")
    table = analyze.summary_table([gpu, cpu, failed])
    assert _headers(table) == list(analyze.SUMMARY_COLUMNS)
    g = _cells(table, 0)
    assert (g["cold s"], g["warm s"], g["warm pipeline s"]) == ("5.00", "1.00", "0.50")
    assert (g["GPU alloc MiB"], g["GPU reserved MiB"]) == ("1234", "2048")
    assert (g["CPU/GPU warm"], g["CPU/GPU pipeline"]) == ("4.0x", "4.0x")
    c = _cells(table, 1)
    assert (c["GPU alloc MiB"], c["CPU/GPU warm"]) == ("-", "-")
    assert "boom" in _cells(table, 2)["cold s"]
    assert gpu.as_dict()["warm_runs"] == 3


def test_analyze_runs_small_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "analyze.json"
    argv = ["--pipeline", "cxr-findings", "--device", "cpu", "--size", "small", "--warm", "1"]
    assert analyze.main([*argv, "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for header in ("cold s", "warm s", "GPU alloc MiB", "GPU reserved MiB", "CPU/GPU warm"):
        assert header in printed
    (row,) = json.loads(out.read_text())
    assert row["pipeline"] == "cxr-findings" and row["device"] == "cpu"
    assert row["error"] is None and row["warm_runs"] == 1
    assert row["cold_s"] > 0 and row["warm_s"] > 0
    assert row["gpu_peak_alloc_mib"] is None  # "-" on the CPU


def test_cuda_without_cuda_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert analyze.main(["--device", "cuda,cpu", "--pipeline", "ct-lungs"]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "no fall-back" in err


def test_cuda_without_cuda_exits_2_from_the_command_line() -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.analyze", "--device", "cuda"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "CUDA is not available" in proc.stderr

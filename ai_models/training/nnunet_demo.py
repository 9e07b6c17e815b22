"""Train a tiny nnU-Net v2 model on synthetic abdominal CT phantoms, with nnU-Net's own commands.

The result is an nnU-Net v2 trained-model folder exactly as ``nnUNetv2_train``
leaves it (``dataset.json``, ``plans.json``, ``fold_0/checkpoint_final.pth``),
the format TotalSegmentator and other public nnU-Net models ship.  It exists
to test the ``nnunetv2`` pipeline kind (:mod:`ai_models.pipelines.nnunet`)
end to end; its accuracy does not matter::

    python -m ai_models.training.nnunet_demo OUT

Steps (each a subprocess running an nnU-Net v2 console command, with
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` set to folders
under ``OUT``):

1. :func:`write_raw_dataset` writes :data:`N_CASES` phantoms of
   :data:`SHAPE_ZYX` voxels as ``.nii.gz`` (SimpleITK) with
   ``dataset.json`` (``channel_names {"0": "CT"}``, labels named like
   TotalSegmentator's: ``liver``, ``spleen``, ``kidney_left``).
2. ``nnUNetv2_plan_and_preprocess -d ID -c 3d_fullres`` (with
   ``--verify_dataset_integrity`` when asked).
3. The plan is shrunk (:func:`shrink_plans`: a four-stage network with few
   features, a small patch) so that one epoch takes seconds on a CPU; the
   preprocessed data stay valid (spacing and normalisation are unchanged).
4. ``nnUNetv2_train ID 3d_fullres 0 -tr nnUNetTrainer_1epoch -device cpu``
   (a trainer variant shipped with nnU-Net, so that predicting needs no
   extra code).

One to two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIGURATION",
    "DATASET_ID",
    "DATASET_NAME",
    "LABELS",
    "TRAINER",
    "build_demo_model",
    "nnunet_command",
    "nnunet_env",
    "phantom_case",
    "shrink_plans",
    "write_raw_dataset",
]

DATASET_ID = 901
"""nnU-Net dataset ID of the demo (``Dataset901_DemoAbdomen``)."""

DATASET_NAME = f"Dataset{DATASET_ID:03d}_DemoAbdomen"
"""nnU-Net dataset folder name."""

CONFIGURATION = "3d_fullres"
"""The configuration trained."""

TRAINER = "nnUNetTrainer_1epoch"
"""A training-length variant shipped with nnU-Net (one epoch)."""

LABELS: dict[str, int] = {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3}
"""``dataset.json`` labels (name -> value), named as TotalSegmentator names them."""

N_CASES = 6
"""Training cases (nnU-Net's five-fold split keeps one or two for validation)."""

SHAPE_ZYX = (32, 64, 64)
"""Voxels per phantom, (slices, rows, columns)."""

SPACING_ZYX = (4.0, 4.0, 4.0)
"""mm between voxel centres, (slices, rows, columns)."""

PATCH_ZYX = (16, 32, 32)
"""Training patch size of the shrunk plan."""

FEATURES = (8, 16, 32, 64)
"""Features per stage of the shrunk plan's U-Net."""

SEED = 901
"""Seed of the phantom generator."""

# HU of the tissues (mean, noise sd).
_HU = {
    "air": (-1000.0, 5.0),
    "fat": (-100.0, 15.0),
    "muscle": (40.0, 15.0),
    "bone": (700.0, 60.0),
    "liver": (110.0, 10.0),
    "spleen": (180.0, 10.0),
    "kidney_left": (280.0, 15.0),
}


def _ellipsoid(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    centre: Sequence[float],
    radii: Sequence[float],
) -> np.ndarray:
    z, y, x = grid
    return (
        ((z - centre[0]) / radii[0]) ** 2
        + ((y - centre[1]) / radii[1]) ** 2
        + ((x - centre[2]) / radii[2]) ** 2
    ) <= 1.0


def phantom_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic abdominal CT and its labels on :data:`SHAPE_ZYX`.

    The array is indexed ``(z, y, x)`` as SimpleITK returns it with an
    identity direction: ``x`` runs towards patient left, ``y`` posterior,
    ``z`` superior.  The liver lies on the patient's right (low ``x``), the
    spleen and left kidney on the left (high ``x``), the kidney posterior.

    Returns
    -------
    (image, labels)
        ``float32`` HU and ``uint8`` label values of :data:`LABELS`.
    """
    nz, ny, nx = SHAPE_ZYX
    grid = np.meshgrid(
        np.arange(nz, dtype=np.float32),
        np.arange(ny, dtype=np.float32),
        np.arange(nx, dtype=np.float32),
        indexing="ij",
    )
    j = rng.uniform(-1.0, 1.0, size=16)
    body = _ellipsoid(
        grid, (nz / 2, ny / 2 + j[0], nx / 2 + j[1]), (nz, 24 + 2 * j[2], 29 + 2 * j[3])
    )
    inner = _ellipsoid(
        grid, (nz / 2, ny / 2 + j[0], nx / 2 + j[1]), (nz, 21 + 2 * j[2], 26 + 2 * j[3])
    )
    spine = _ellipsoid(grid, (nz / 2, ny / 2 + 14 + j[4], nx / 2), (nz, 4, 4))
    liver = _ellipsoid(grid, (nz / 2 + 3 * j[5], 26 + 2 * j[6], 18 + 2 * j[7]), (10, 11, 9))
    spleen = _ellipsoid(grid, (nz / 2 + 3 * j[8], 26 + 2 * j[9], 46 + 2 * j[10]), (9, 9, 8))
    kidney = _ellipsoid(grid, (nz / 2 + 3 * j[11], 45 + j[12], 43 + j[13]), (8, 6, 6))

    tissue = np.full(SHAPE_ZYX, "air", dtype=object)
    tissue[body] = "fat"
    tissue[inner] = "muscle"
    tissue[spine] = "bone"
    labels = np.zeros(SHAPE_ZYX, np.uint8)
    for name, mask in (("liver", liver), ("spleen", spleen), ("kidney_left", kidney)):
        mask = mask & inner & ~spine
        tissue[mask] = name
        labels[mask] = LABELS[name]
    image = np.empty(SHAPE_ZYX, np.float32)
    for name, (mean, sd) in _HU.items():
        m = tissue == name
        image[m] = mean + sd * rng.standard_normal(int(m.sum()))
    return np.rint(image).astype(np.float32), labels


def write_raw_dataset(
    raw_dir: pathlib.Path, n_cases: int = N_CASES, seed: int = SEED
) -> pathlib.Path:
    """Write the phantoms as an nnU-Net v2 raw dataset; returns its folder.

    ``imagesTr/case_XXX_0000.nii.gz``, ``labelsTr/case_XXX.nii.gz`` and
    ``dataset.json`` under ``raw_dir / DATASET_NAME``.
    """
    import SimpleITK as sitk

    folder = raw_dir / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for n, child in enumerate(np.random.SeedSequence(seed).spawn(n_cases)):
        image, labels = phantom_case(np.random.default_rng(child))
        for arr, path in (
            (image.astype(np.int16), folder / "imagesTr" / f"case_{n:03d}_0000.nii.gz"),
            (labels, folder / "labelsTr" / f"case_{n:03d}.nii.gz"),
        ):
            img = sitk.GetImageFromArray(arr)
            img.SetSpacing(tuple(float(s) for s in SPACING_ZYX[::-1]))
            img.SetOrigin((-128.0, -128.0, -64.0))
            sitk.WriteImage(img, str(path))
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": LABELS,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": "DemoAbdomen",
        "description": "Synthetic abdominal CT phantoms (dicom-node nnU-Net demo)",
        "licence": "Apache-2.0",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return folder


def shrink_plans(plans: dict[str, Any], configuration: str = CONFIGURATION) -> dict[str, Any]:
    """``plans`` with ``configuration`` reduced to a tiny, CPU-friendly U-Net.

    Four stages of :data:`FEATURES` features on a :data:`PATCH_ZYX` patch,
    batch size 2; the spacing, normalisation and resampling (what
    preprocessing does) stay as nnU-Net planned them.
    """
    out = json.loads(json.dumps(plans))
    cfg = out["configurations"][configuration]
    cfg["patch_size"] = list(PATCH_ZYX)
    cfg["batch_size"] = 2
    arch = cfg["architecture"]["arch_kwargs"]
    n = len(FEATURES)
    arch["n_stages"] = n
    arch["features_per_stage"] = list(FEATURES)
    arch["kernel_sizes"] = [[3, 3, 3]] * n
    arch["strides"] = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    arch["n_conv_per_stage"] = [1] * n
    arch["n_conv_per_stage_decoder"] = [1] * (n - 1)
    return out


def nnunet_command(name: str) -> list[str]:
    """The argv prefix that runs nnU-Net console command ``name`` with this interpreter.

    The script next to the interpreter when it is there (a virtual
    environment's ``bin/``), else its entry point through ``python -c``.
    """
    script = pathlib.Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name=name)
    return [
        sys.executable,
        "-c",
        f"import sys; from {ep.module} import {ep.attr}; sys.argv[0] = {name!r}; "
        f"sys.exit({ep.attr}())",
    ]


def _run(name: str, args: Sequence[str], env: dict[str, str], log: pathlib.Path) -> None:
    cmd = [*nnunet_command(name), *args]
    logger.info("running %s %s", name, " ".join(args))
    t0 = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ {name} {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); end of {log.name}:\n{tail}")
    logger.info("%s took %.1f s", name, time.perf_counter() - t0)


def nnunet_env(out_dir: pathlib.Path) -> dict[str, str]:
    """The environment for nnU-Net's commands: its three folders under ``out_dir``.

    One process for preprocessing and export (``nnUNet_def_n_proc=1``,
    ``nnUNet_n_proc_DA=1``): the data are tiny and worker start-up would
    dominate.  ``OMP_WAIT_POLICY=PASSIVE``: nnU-Net sets as many torch
    threads as there are cores, and spinning OpenMP threads slow training
    many times over on a machine that runs anything else.
    """
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(out_dir / "nnUNet_raw"),
        nnUNet_preprocessed=str(out_dir / "nnUNet_preprocessed"),
        nnUNet_results=str(out_dir / "nnUNet_results"),
        nnUNet_def_n_proc="1",
        nnUNet_n_proc_DA="1",
        nnUNet_compile="false",
        OMP_WAIT_POLICY="PASSIVE",
    )
    return env


def build_demo_model(out_dir: pathlib.Path, *, verify: bool = False) -> pathlib.Path:
    """Make the raw dataset, plan, preprocess and train; returns the trained-model folder.

    Parameters
    ----------
    out_dir:
        Working folder (created); ``nnUNet_raw``, ``nnUNet_preprocessed``
        and ``nnUNet_results`` go under it, and ``nnunet.log`` collects the
        commands' output.
    verify:
        Also run nnU-Net's dataset integrity check (``--verify_dataset_integrity``;
        half a minute more on two cores).

    Returns
    -------
    pathlib.Path
        ``out_dir/nnUNet_results/Dataset901_DemoAbdomen/
        nnUNetTrainer_1epoch__nnUNetPlans__3d_fullres``.

    Raises
    ------
    RuntimeError
        A command failed (the message holds the end of its output).
    """
    out_dir = pathlib.Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    env = nnunet_env(out_dir)
    log = out_dir / "nnunet.log"
    write_raw_dataset(out_dir / "nnUNet_raw")
    ident = str(DATASET_ID)
    plan = ["-d", ident, "-c", CONFIGURATION, "-np", "1", "--no_pbar"]
    _run("nnUNetv2_plan_and_preprocess", plan + ["--verify_dataset_integrity"] * verify, env, log)
    plans_file = out_dir / "nnUNet_preprocessed" / DATASET_NAME / "nnUNetPlans.json"
    plans = shrink_plans(json.loads(plans_file.read_text()))
    plans_file.write_text(json.dumps(plans, indent=2) + "\n")
    # data augmentation in the training process itself (no worker processes)
    train_env = {**env, "nnUNet_n_proc_DA": "0"}
    _run(
        "nnUNetv2_train",
        [ident, CONFIGURATION, "0", "-tr", TRAINER, "-device", "cpu"],
        train_env,
        log,
    )
    model = out_dir / "nnUNet_results" / DATASET_NAME / f"{TRAINER}__nnUNetPlans__{CONFIGURATION}"
    if not (model / "fold_0" / "checkpoint_final.pth").is_file():
        raise RuntimeError(f"nnUNetv2_train left no fold_0/checkpoint_final.pth in {model}")
    return model


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("out", type=pathlib.Path, help="working folder (created)")
    ap.add_argument("--clean", action="store_true", help="remove OUT first")
    ap.add_argument(
        "--verify", action="store_true", help="run nnU-Net's dataset integrity check too"
    )
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.clean and args.out.exists():
        shutil.rmtree(args.out)
    t0 = time.perf_counter()
    model = build_demo_model(args.out, verify=args.verify)
    print(model)
    logger.info("done in %.0f s", time.perf_counter() - t0)


if __name__ == "__main__":
    main()

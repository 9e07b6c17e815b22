"""``dicom-node analyze`` and ``dicom-node pipelines`` (click commands).

Thin wrappers around :func:`dicom_node.work.analyze.analyze_paths` and
:func:`ai_models.pipelines.list_pipelines`; the CLI group registers them with
``main.add_command(analyze)`` / ``main.add_command(pipelines)``.
"""

from __future__ import annotations

import pathlib
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dicom_node.results import OUTPUT_KINDS, parse_outputs

__all__ = ["analyze", "pipelines"]


def _configured(ctx: click.Context) -> tuple[Any, ...]:
    """Configured pipeline specs, when the CLI group put them on ``ctx.obj``."""
    obj = ctx.obj
    specs = getattr(obj, "pipeline_specs", None) if obj is not None else None
    return tuple(specs or ())


def _outputs(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_outputs(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command("analyze")
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=pathlib.Path)
)
@click.option("--pipeline", "pipeline_name", required=True, help="Pipeline name (see `pipelines`).")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="Folder for the result DICOM files.",
)
@click.option(
    "--outputs", default="seg,sr", show_default=True, callback=_outputs,
    help=f"Comma-separated result kinds from {', '.join(OUTPUT_KINDS)}.",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: automatic).")
@click.pass_context
def analyze(
    ctx: click.Context,
    paths: tuple[pathlib.Path, ...],
    pipeline_name: str,
    out_dir: pathlib.Path,
    outputs: tuple[str, ...],
    device: str | None,
) -> None:
    """Run a pipeline on the series under PATH... and write SEG/SR/SC files."""
    from ai_models.pipelines import UnknownPipelineError
    from dicom_node.work.analyze import analyze_paths

    console = Console()
    try:
        report = analyze_paths(
            paths, pipeline_name, out_dir, outputs=outputs, device=device,
            configured=_configured(ctx),
        )
    except UnknownPipelineError as exc:
        raise click.BadParameter(str(exc), param_hint="--pipeline") from exc

    stages: list[str] = []
    for s in report.series:
        for stage in s.timings:
            if stage not in stages:
                stages.append(stage)
    if "write" in stages:  # always last
        stages.remove("write")
        stages.append("write")
    table = Table(title=f"{report.pipeline}: {len(report.series)} series")
    table.add_column("series")
    table.add_column("modality")
    table.add_column("inst", justify="right")
    table.add_column("status")
    for stage in stages:
        table.add_column(f"{stage} s", justify="right")
    table.add_column("total s", justify="right")
    table.add_column("files / reason", overflow="fold")
    for s in report.series:
        detail = (
            ", ".join(p.name for p in s.files) if s.files else s.reason
        )
        table.add_row(
            "…" + s.series_instance_uid[-12:],
            s.modality,
            str(s.instances),
            s.status,
            *[f"{s.timings[st]:.2f}" if st in s.timings else "" for st in stages],
            f"{s.total_s:.2f}" if s.timings else "",
            detail,
        )
    console.print(table)
    console.print(f"{len(report.files)} file(s) written to {report.out_dir}")
    if not report.ok:
        ctx.exit(1)


@click.command("pipelines")
@click.option(
    "--labels", "-l", "show_labels", is_flag=True,
    help="Also list each pipeline's labels (structures or findings), one per line.",
)
@click.pass_context
def pipelines(ctx: click.Context, show_labels: bool) -> None:
    """List the available pipelines: name, modalities, description."""
    from ai_models.pipelines import list_pipelines

    for info in list_pipelines(_configured(ctx)):
        modalities = ",".join(info.modalities) or "any"
        click.echo(f"{info.name}\t{modalities}\t{info.description}")
        if show_labels:
            for label in info.labels:
                click.echo(f"  {label}")

"""``dicom-node worker``: run jobs handed out through Celery (``[worker] executor = "celery"``)."""

from __future__ import annotations

import logging
import os
import socket
import sys

import click

__all__ = ["worker"]

LOGGER = logging.getLogger("dicom_node.cli")

GPU_QUEUE = "gpu"
"""The queue name this command treats as needing a GPU."""


def _cuda_available() -> bool:
    """Whether CUDA is usable, asked through NVML so that CUDA is not initialised in
    this process: Celery's prefork pool forks it, and a forked child cannot use a
    CUDA context its parent created."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def consumable_queues(requested: list[str], default_queue: str, cuda: bool) -> list[str]:
    """The queues this host consumes: *requested* (else ``gpu`` with a GPU, and the
    default queue), without ``gpu`` on a host without CUDA."""
    queues = list(dict.fromkeys(requested or ([GPU_QUEUE] if cuda else []) + [default_queue]))
    if not cuda and GPU_QUEUE in queues:
        LOGGER.warning("no CUDA device here: the %r queue is not consumed", GPU_QUEUE)
        queues.remove(GPU_QUEUE)
    return queues


@click.command()
@click.option(
    "--queues",
    "-Q",
    default="",
    help="Comma-separated Celery queues to consume (default: gpu when CUDA is usable, "
    "[celery] default_queue and deliver_queue).",
)
@click.option(
    "--concurrency",
    "-n",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Jobs run at once (processes; one per GPU is usual).",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo", "threads"]),
    default="prefork",
    show_default=True,
    help="Celery's execution pool; solo runs jobs in this process.",
)
@click.pass_context
def worker(ctx: click.Context, queues: str, concurrency: int, pool: str) -> None:
    """Run jobs published by ``serve`` with ``[worker] executor = "celery"``.

    Each message names a job; the job is claimed in the node's database (so a
    job runs once however often it is delivered), read from the shared spool,
    analysed, and its results are written to the shared results folder, from
    where the sender delivers them.
    """
    from dicom_node.work.celery_app import make_app

    settings = ctx.obj.settings()
    wanted = [q.strip() for q in queues.split(",") if q.strip()]
    consumed = consumable_queues(wanted, settings.celery.default_queue, _cuda_available())
    if not wanted and settings.celery.deliver_queue:
        consumed.append(settings.celery.deliver_queue)
    if not consumed:
        click.echo("error: no queue left to consume on this host", err=True)
        sys.exit(2)
    app = make_app(settings)
    LOGGER.info(
        "worker: queues %s, concurrency %d (%s pool), device %s",
        ",".join(consumed),
        concurrency,
        pool,
        settings.worker.device,
    )
    app.worker_main(
        [
            "worker",
            f"--queues={','.join(consumed)}",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            f"--hostname=dicom-node-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={ctx.obj.log_level}",
            "--without-gossip",
            "--without-mingle",
        ]
    )

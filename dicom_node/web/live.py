"""The console's live overview: what the node is doing right now.

Figures the database holds (instances per second, queues per pipeline and
destination) are read from it, so they are the same whichever process
serves the page.  Figures only a process knows (open associations, models
loaded, GPU memory) are this process's own, and say so: with
``serve --role`` splitting the node, the web process may run no receiver or
worker, and the page then shows "not in this process" rather than a zero.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from dicom_node.config import Settings
from storage.console import PipelineQueue, instances_since, pipeline_queues
from storage.db import Database
from storage.models import utcnow

__all__ = ["RATE_WINDOW_S", "DiskState", "GpuState", "LiveOverview", "live_overview"]

LOGGER = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
"""Instances per second are averaged over this many seconds."""
MiB = 2**20


@dataclass(frozen=True, slots=True)
class DiskState:
    """The spool's file system against the node's limits."""

    path: str
    free_mb: float
    total_mb: float
    min_free_mb: int
    """``[storage] min_free_disk_mb``: below it C-STOREs are refused (0xA700)."""
    high_watermark_percent: float | None
    """``[retention] disk_high_watermark_percent``: above it retention purges early."""

    @property
    def used_percent(self) -> float:
        return 0.0 if not self.total_mb else 100.0 * (1 - self.free_mb / self.total_mb)

    @property
    def state(self) -> str:
        """``ok``, ``high`` (above the watermark) or ``full`` (below the free minimum)."""
        if self.free_mb < self.min_free_mb:
            return "full"
        if self.high_watermark_percent is not None and (
            self.used_percent >= self.high_watermark_percent
        ):
            return "high"
        return "ok"


@dataclass(frozen=True, slots=True)
class GpuState:
    """One CUDA device as this process sees it."""

    name: str
    used_mb: float
    total_mb: float


@dataclass(frozen=True, slots=True)
class LiveOverview:
    """Everything the overview page shows."""

    associations: int | None
    """Open DICOM associations of this process's receiver (``None``: it runs none)."""
    instances_per_s: float
    queues: list[PipelineQueue]
    disk: DiskState | None
    gpus: list[GpuState] | None
    """``None``: no CUDA in this process (torch not loaded here, or no GPU)."""
    warm_models: list[str] | None
    """Model files loaded in this process (``None``: no worker runs here)."""


def disk_state(settings: Settings) -> DiskState | None:
    """The spool's disk (``None`` when the spool folder does not exist yet)."""
    spool = Path(settings.storage.spool_dir)
    try:
        usage = shutil.disk_usage(spool)
    except OSError:
        return None
    return DiskState(
        path=str(spool),
        free_mb=usage.free / MiB,
        total_mb=usage.total / MiB,
        min_free_mb=settings.storage.min_free_disk_mb,
        high_watermark_percent=settings.retention.disk_high_watermark_percent,
    )


def gpu_state() -> list[GpuState] | None:
    """CUDA memory in use per device, if this process has loaded torch and has a GPU.

    torch is never imported here (it costs seconds); a process whose
    workers run pipelines has it loaded already.
    """
    torch: Any = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        out = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            out.append(
                GpuState(torch.cuda.get_device_name(index), (total - free) / MiB, total / MiB)
            )
        return out
    except Exception as exc:  # noqa: BLE001 - a page must render without the GPU figure
        LOGGER.debug("overview: no GPU figures: %s", exc)
        return None


def warm_models() -> list[str] | None:
    """File names of the models loaded in this process (``None``: none were ever)."""
    runtime: Any = sys.modules.get("ai_models.runtime")
    if runtime is None:
        return None
    return [Path(p).name for p in runtime.loaded_model_paths()]


def live_overview(
    db: Database, settings: Settings, associations: Callable[[], int] | None
) -> LiveOverview:
    """Read the overview now."""
    now = utcnow()
    received = instances_since(db, now - timedelta(seconds=RATE_WINDOW_S))
    return LiveOverview(
        associations=associations() if associations is not None else None,
        instances_per_s=received / RATE_WINDOW_S,
        queues=pipeline_queues(db),
        disk=disk_state(settings),
        gpus=gpu_state(),
        warm_models=warm_models(),
    )

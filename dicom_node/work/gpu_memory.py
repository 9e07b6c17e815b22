"""GPU memory bounds: a worker never starts more jobs on its GPU than fit.

Each pipeline declares the most GPU memory one run of it needs
(:attr:`ai_models.pipelines.Pipeline.gpu_memory_mb`).  A worker process
serves one GPU (``[worker] device = "cuda:N"``); before a job runs there,
:class:`GpuMemoryGate` admits it only when the memory it declares fits:

* in what this process has not yet promised to its other running jobs, out
  of the memory that was free on the device when the worker started, less a
  headroom (``[worker] gpu_headroom_mb``); and
* beside jobs of its own already running, also in what the device reports
  free at that moment (:func:`torch.cuda.mem_get_info`), so that other
  processes' use of the same GPU counts.

A job that does not fit waits for running jobs to finish; one that could
never fit (more than the device's capacity for this worker) is refused with a
message, so that a worker with a larger GPU can take it.  On the CPU the gate
admits everything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["GpuMemoryGate", "GpuMemoryTooSmall"]

LOGGER = logging.getLogger(__name__)

MiB = 2**20

FreeAndTotal = Callable[[], tuple[int, int]]
"""Free and total bytes of the device, as :func:`torch.cuda.mem_get_info` returns them."""


class GpuMemoryTooSmall(RuntimeError):
    """A job needs more GPU memory than this worker's device can ever give it."""


def _cuda_mem_get_info(device: str) -> FreeAndTotal:
    import torch

    index = torch.device(device)

    def query() -> tuple[int, int]:
        free, total = torch.cuda.mem_get_info(index)
        return int(free), int(total)

    return query


class GpuMemoryGate:
    """Admit jobs on one device while their declared GPU memory fits.

    Parameters
    ----------
    device:
        The worker's device (``cpu``, ``cuda``, ``cuda:N``, ``auto``).
    headroom_mb:
        Kept free for the CUDA context, allocator caches and other users.
    mem_get_info:
        Free and total bytes of the device (default :func:`torch.cuda.mem_get_info`).
    poll_s:
        How often a waiting job looks at the device's free memory again.
    """

    def __init__(
        self,
        device: str,
        *,
        headroom_mb: int = 1024,
        mem_get_info: FreeAndTotal | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.device = device
        self.headroom = headroom_mb * MiB
        self.poll_s = poll_s
        self._query = mem_get_info
        self._capacity: int | None = None
        self._promised = 0
        self._cond = threading.Condition()

    @property
    def on_gpu(self) -> bool:
        """Whether the device is a GPU (the gate then bounds anything)."""
        if self._query is not None:
            return True
        if self.device.startswith("cuda"):
            return True
        if self.device == "auto":
            import torch

            return bool(torch.cuda.is_available())
        return False

    def _info(self) -> tuple[int, int]:
        if self._query is None:
            self._query = _cuda_mem_get_info("cuda" if self.device == "auto" else self.device)
        return self._query()

    def capacity(self) -> int:
        """Bytes this worker may promise to jobs at once (measured on first use)."""
        if self._capacity is None:
            free, _total = self._info()
            self._capacity = max(0, free - self.headroom)
            LOGGER.info(
                "GPU memory for jobs on %s: %d MiB (%d MiB free, %d MiB headroom)",
                self.device,
                self._capacity // MiB,
                free // MiB,
                self.headroom // MiB,
            )
        return self._capacity

    @contextmanager
    def hold(self, need_mb: int, what: str = "job") -> Iterator[float]:
        """Wait until *need_mb* fits, hold it while the block runs; yields seconds waited.

        Raises
        ------
        GpuMemoryTooSmall
            *need_mb* is more than this worker's capacity on its device.
        """
        if not self.on_gpu or need_mb <= 0:
            yield 0.0
            return
        need = need_mb * MiB
        capacity = self.capacity()
        if need > capacity:
            raise GpuMemoryTooSmall(
                f"{what} needs {need_mb} MiB of GPU memory; this worker's {self.device} "
                f"offers {capacity // MiB} MiB (free at start less the headroom)"
            )
        started = time.monotonic()
        logged = False
        with self._cond:
            while True:
                fits_promise = self._promised + need <= capacity
                # Alone, a job is admitted on the promise: what is in use then is
                # this process's warm models or other processes' (it may fail, and
                # be retried); beside running jobs, the device must show the room.
                alone = self._promised == 0
                free = 0 if alone or not fits_promise else self._info()[0]
                if fits_promise and (alone or need <= free - self.headroom // 2):
                    self._promised += need
                    break
                if not logged:
                    LOGGER.info(
                        "%s waits for %d MiB of GPU memory (%d MiB promised to running jobs)",
                        what,
                        need_mb,
                        self._promised // MiB,
                    )
                    logged = True
                self._cond.wait(self.poll_s)
        try:
            yield time.monotonic() - started
        finally:
            with self._cond:
                self._promised -= need
                self._cond.notify_all()

"""GPU memory bounds: jobs start on a worker's GPU only while their declared memory fits.

No GPU is needed: the device's free memory comes from a function the test
controls, in place of :func:`torch.cuda.mem_get_info`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.collect import Collector
from dicom_node.work.gpu_memory import GpuMemoryGate, GpuMemoryTooSmall
from dicom_node.work.worker import JobRunner, job_queue
from storage.models import Job
from tests.support.ct_series import SERIES_UID, stored_ct_series

GiB = 2**30


class FakeDevice:
    """A GPU of *total_gib* whose allocations the test makes."""

    def __init__(self, total_gib: float) -> None:
        self.total = int(total_gib * GiB)
        self.used = 0
        self.queries = 0

    def mem_get_info(self) -> tuple[int, int]:
        self.queries += 1
        return self.total - self.used, self.total


def test_the_cpu_bounds_nothing() -> None:
    gate = GpuMemoryGate("cpu")
    with gate.hold(10**6) as waited:
        assert waited == 0.0


def test_a_second_job_waits_until_the_first_frees_its_memory() -> None:
    device = FakeDevice(10)
    gate = GpuMemoryGate("cuda:0", headroom_mb=1024, mem_get_info=device.mem_get_info, poll_s=0.02)
    assert gate.capacity() == 9 * GiB
    order: list[str] = []
    first_holds = threading.Event()
    release_first = threading.Event()

    def first() -> None:
        with gate.hold(6 * 1024, "first"):
            device.used += 6 * GiB  # the model is loaded
            order.append("first runs")
            first_holds.set()
            release_first.wait(10)
            device.used -= 6 * GiB
            order.append("first done")

    def second() -> None:
        first_holds.wait(10)
        with gate.hold(6 * 1024, "second") as waited:
            order.append(f"second runs after {waited:.1f} s")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    first_holds.wait(10)
    time.sleep(0.3)
    assert order == ["first runs"]  # 6 + 6 GiB promised would pass the 9 GiB capacity
    release_first.set()
    for t in threads:
        t.join(10)
    assert order[:2] == ["first runs", "first done"]
    assert order[2].startswith("second runs after 0.")


def test_two_small_jobs_run_together_while_the_device_shows_room() -> None:
    device = FakeDevice(10)
    gate = GpuMemoryGate("cuda", headroom_mb=1024, mem_get_info=device.mem_get_info)
    with gate.hold(3 * 1024):
        device.used += 3 * GiB
        with gate.hold(3 * 1024) as waited:
            assert waited < 0.5


def test_memory_used_by_other_processes_makes_a_job_wait() -> None:
    device = FakeDevice(10)
    gate = GpuMemoryGate("cuda", headroom_mb=1024, mem_get_info=device.mem_get_info, poll_s=0.02)
    gate.capacity()
    admitted = threading.Event()
    with gate.hold(2 * 1024):
        device.used += 8 * GiB  # our 2 GiB job and 6 GiB of another process

        def wait_for_room() -> None:
            with gate.hold(2 * 1024):
                admitted.set()

        t = threading.Thread(target=wait_for_room)
        t.start()
        assert not admitted.wait(0.3)  # 4 of 9 GiB promised, but only 2 GiB free
        device.used -= 6 * GiB  # the other process ends
        assert admitted.wait(5)
        t.join(5)


def test_alone_a_job_is_admitted_beside_warm_models() -> None:
    device = FakeDevice(10)
    gate = GpuMemoryGate("cuda", headroom_mb=1024, mem_get_info=device.mem_get_info)
    gate.capacity()
    device.used = 8 * GiB  # models of earlier jobs stay loaded
    with gate.hold(4 * 1024) as waited:
        assert waited < 0.5


def test_a_job_larger_than_the_device_is_refused_with_the_figures() -> None:
    gate = GpuMemoryGate("cuda:1", headroom_mb=1024, mem_get_info=FakeDevice(8).mem_get_info)
    with pytest.raises(GpuMemoryTooSmall, match=r"job 7 needs 9000 MiB .* offers 7168 MiB"):
        with gate.hold(9000, "job 7"):
            pass


def test_a_job_that_cannot_fit_is_retried_with_the_reason(tmp_path: Path) -> None:
    settings, db, _ = stored_ct_series(
        tmp_path, "ct-lungs", worker={"device": "cpu", "retry_base_s": 60}
    )
    (job_id,) = Collector(db, settings).complete(SERIES_UID).job_ids
    queue = job_queue(settings, db)
    runner = JobRunner(settings, db, queue)
    runner.gpu = GpuMemoryGate("cuda:0", mem_get_info=FakeDevice(2).mem_get_info)
    job = queue.claim("test", job_id=job_id)
    assert job is not None
    assert runner.run(job).value == "queued"
    with db.engine.connect() as conn:
        error = conn.execute(select(Job.error).where(Job.id == job_id)).scalar_one()
    assert error.startswith(f"job {job_id} (ct-lungs) needs 2048 MiB of GPU memory"), error
    db.dispose()

"""Jobs run by ``dicom-node worker`` processes through a real Celery broker.

``serve`` with ``[worker] executor = "celery"`` publishes due jobs to Redis or
RabbitMQ (both run on this machine kind); ``dicom-node worker`` consumes them
and claims each job in the node's database before running it.  A synthetic
chest CT is pushed with DCMTK ``storescu`` and analysed by ct-lungs; the
results land in a folder destination.

Without a broker the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicom_node.cli_worker import consumable_queues
from dicom_node.config import load_settings
from dicom_node.work.celery_app import RUN_JOB, make_app
from storage.db import Database
from storage.models import Job, Result
from tests.conftest import IN_CI
from tests.storage.conftest import postgres_url  # noqa: F401  (fixture)
from tests.support.chest_ct import write_chest_ct
from tests.support.peers import NodeProcess, free_port, storescu

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(400)

BROKERS = {
    "redis": ("127.0.0.1", 6379, "redis://127.0.0.1:6379/0"),
    "rabbitmq": ("127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672//"),
}


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    url: str
    queue: str
    """A queue of this test's own, deleted afterwards."""

    def length(self, app: Any) -> int:
        with app.connection_for_write() as conn:
            ok = conn.default_channel.queue_declare(self.queue, durable=True, auto_delete=False)
            return int(ok.message_count)

    def purge(self, app: Any) -> int:
        """Drop the queue's messages, as a broker restart without persistence would."""
        with app.connection_for_write() as conn:
            return int(conn.default_channel.queue_purge(self.queue) or 0)


def _broker(kind: str) -> Iterator[Broker]:
    host, port, url = BROKERS[kind]
    if not _reachable(host, port):
        if IN_CI:
            pytest.fail(f"{kind} not reachable at {host}:{port}")
        pytest.skip(f"{kind} not reachable at {host}:{port}")
    broker = Broker(url, f"test-{uuid.uuid4().hex[:10]}")
    yield broker
    try:
        settings = load_settings(None)
        settings.celery.broker_url = url  # type: ignore[assignment]
        app = make_app(settings)
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(broker.queue)
    except Exception:  # noqa: BLE001 - the queue may never have been declared
        pass


@pytest.fixture(params=sorted(BROKERS))
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    yield from _broker(request.param)


@pytest.fixture
def redis_broker() -> Iterator[Broker]:
    yield from _broker("redis")


def node_extra(broker: Broker, outbox: Path, *, republish_after_s: float = 60.0) -> dict[str, Any]:
    return {
        "worker": {
            "executor": "celery",
            "device": "cpu",
            "lease_s": 10,
            "poll_interval_s": 0.2,
        },
        "celery": {
            "broker_url": broker.url,
            "default_queue": broker.queue,
            "republish_after_s": republish_after_s,
        },
        "destinations": [{"name": "outbox", "type": "folder", "path": str(outbox)}],
        "rules": [
            {
                "name": "ct-chest",
                "match": {"Modality": "CT"},
                "pipelines": ["ct-lungs"],
                "destinations": ["outbox"],
                "quiet_period_s": 1.0,
                "outputs": ["seg", "sr"],
            }
        ],
    }


class WorkerProcess:
    """``dicom-node worker`` in a subprocess, on the node's config."""

    def __init__(self, node: NodeProcess, *args: str) -> None:
        self.log_path = node.workdir / f"worker-{uuid.uuid4().hex[:6]}.log"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_node.cli",
                    "-c",
                    str(node.config_path),
                    "worker",
                    *args,
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether the worker still runs (fails the test with its log when it stopped)."""
        assert self.proc.poll() is None, f"worker exited:\n{self.log()}"
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(what: str, check: Any, timeout_s: float = 240.0, poll_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def jobs_of(db: Database) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(Job.id, Job.status, Job.attempts, Job.error)).all())


def result_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return len(conn.execute(select(Result.id)).all())


def push_chest_ct(node: NodeProcess, work: Path, seed: int | None = None) -> None:
    files = write_chest_ct(work, **({"seed": seed} if seed is not None else {}))
    done = storescu(node.port, files, calling_ae="CT_SCANNER_1")
    assert done.returncode == 0, done.stdout + done.stderr


def test_jobs_run_on_a_celery_worker_once(
    broker: Broker,
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    """PostgreSQL + Redis, and PostgreSQL + RabbitMQ: push a CT; the worker runs its job
    once and the results reach the folder destination."""
    outbox = tmp_path / "outbox"
    node = NodeProcess(
        tmp_path / "node",
        free_port(),
        database_url=postgres_url,
        extra=node_extra(broker, outbox),
    )
    worker: WorkerProcess | None = None
    with node:
        worker = WorkerProcess(node, "--concurrency", "1")
        try:
            push_chest_ct(node, tmp_path / "ct")
            db = Database(node.db_url)
            try:
                wait_for(
                    "the job to end",
                    lambda: (
                        worker.alive()
                        and [j for j in jobs_of(db) if j.status not in ("queued", "running")]
                    ),
                )
                ((job_id, status, attempts, error),) = jobs_of(db)
                assert (status, attempts) == ("succeeded", 1), (error, worker.log())
                sent = wait_for("two result files", lambda: sorted(outbox.rglob("*.dcm")) or None)
                wait_for("SEG and SR", lambda: len(list(outbox.rglob("*.dcm"))) == 2)
                assert len(sent) >= 1
                assert result_count(db) == 2
            finally:
                db.dispose()
        finally:
            worker.stop()
    assert f"job {job_id} (ct-lungs) published to queue {broker.queue}" in node.log()
    assert worker.log().count(f"job {job_id} started") == 1, worker.log()
    assert "Traceback" not in worker.log()


def test_a_job_published_twice_or_lost_runs_once(redis_broker: Broker, tmp_path: Path) -> None:
    """A lost message is published again; duplicate messages find the job claimed or done."""
    broker = redis_broker
    outbox = tmp_path / "outbox"
    node = NodeProcess(
        tmp_path / "node", free_port(), extra=node_extra(broker, outbox, republish_after_s=3)
    )
    with node:
        settings = load_settings(node.config_path)
        app = make_app(settings)
        push_chest_ct(node, tmp_path / "ct")
        line = "job 1 (ct-lungs) published to queue"
        wait_for("the job's message", lambda: line in node.log(), timeout_s=60)
        assert broker.length(app) == 1
        broker.purge(app)  # the message is lost
        assert broker.length(app) == 0
        wait_for("the message again", lambda: f"{line} {broker.queue} again" in node.log(), 30)
        assert broker.length(app) >= 1
        for _ in range(2):  # and two more copies of it
            app.send_task(RUN_JOB, args=[1], queue=broker.queue)

        worker = WorkerProcess(node, "--pool", "solo")
        db = Database(node.db_url)
        try:
            wait_for(
                "the job to succeed",
                lambda: worker.alive() and jobs_of(db)[0].status == "succeeded",
            )
            wait_for("every copy consumed", lambda: broker.length(app) == 0, 60)
            wait_for(
                "the copies answered",
                lambda: worker.log().count("job 1 is succeeded: nothing to run") >= 2,
                60,
            )
            ((_, status, attempts, error),) = jobs_of(db)
            assert (status, attempts, error) == ("succeeded", 1, None)
            assert result_count(db) == 2
        finally:
            db.dispose()
            worker.stop()
    assert worker.log().count("job 1 started") == 1, worker.log()
    assert "Traceback" not in worker.log()


def test_cpu_hosts_do_not_consume_the_gpu_queue() -> None:
    assert consumable_queues([], "cpu", cuda=False) == ["cpu"]
    assert consumable_queues([], "cpu", cuda=True) == ["gpu", "cpu"]
    assert consumable_queues(["gpu", "cpu", "gpu"], "cpu", cuda=False) == ["cpu"]
    assert consumable_queues(["gpu"], "cpu", cuda=False) == []
    assert consumable_queues(["ct-big"], "cpu", cuda=False) == ["ct-big"]

"""Jobs run by ``dicom-node worker`` processes through a real Celery broker.

``serve`` with ``[worker] executor = "celery"`` publishes due jobs to Redis or
RabbitMQ (both run on this machine kind); ``dicom-node worker`` consumes them
and claims each job in the node's database before running it.  A synthetic
chest CT is pushed with DCMTK ``storescu`` and analysed by ct-lungs; the
results land in a folder destination.

Without a broker the tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from dicom_node.cli_worker import consumable_queues
from dicom_node.config import load_settings
from dicom_node.work.celery_app import RUN_JOB, make_app
from storage.db import Database
from storage.models import Delivery, Instance, Job, Result
from tests.conftest import IN_CI
from tests.storage.conftest import postgres_url  # noqa: F401  (fixture)
from tests.support.chest_ct import write_chest_ct
from tests.support.orthanc import OrthancServer
from tests.support.peers import NodeProcess, free_port, storescu, wait_for_port

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


def node_extra(
    broker: Broker,
    outbox: Path | None = None,
    *,
    orthanc: OrthancServer | None = None,
    republish_after_s: float = 60.0,
    lease_s: float = 10.0,
    storage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    destinations: list[dict[str, Any]] = []
    if outbox is not None:
        destinations.append({"name": "outbox", "type": "folder", "path": str(outbox)})
    if orthanc is not None:
        destinations.append(
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": orthanc.ae_title,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "retry_base_s": 1.0,
                "retry_max_s": 2.0,
                "timeout_s": 30.0,
            }
        )
    extra: dict[str, Any] = {
        "worker": {
            "executor": "celery",
            "device": "cpu",
            "lease_s": lease_s,
            "poll_interval_s": 0.2,
        },
        "celery": {
            "broker_url": broker.url,
            "default_queue": broker.queue,
            "republish_after_s": republish_after_s,
        },
        "destinations": destinations,
        "rules": [
            {
                "name": "ct-chest",
                "match": {"Modality": "CT"},
                "pipelines": ["ct-lungs"],
                "destinations": [d["name"] for d in destinations],
                "quiet_period_s": 3.0,
                "outputs": ["seg", "sr"],
            }
        ],
    }
    if storage:
        extra["storage"] = storage
    return extra


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


def deliveries_of(db: Database) -> list[Any]:
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                select(Result.sop_instance_uid, Delivery.status, Delivery.attempts).join(
                    Result, Result.id == Delivery.result_id
                )
            ).all()
        )


def test_two_receivers_two_workers_one_sender(
    broker: Broker,
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
    orthanc_server: OrthancServer,
) -> None:
    """PostgreSQL + Redis, and PostgreSQL + RabbitMQ: four chest CTs, each sent half to
    one receiver process and half to another at the same time; two ``dicom-node worker``
    processes and one collector + sender.  Each series completes once, each job runs
    once, each result object reaches Orthanc once."""
    shared = {
        "spool_dir": str(tmp_path / "spool"),
        "results_dir": str(tmp_path / "results"),
        "shared_spool": True,
    }
    extra = node_extra(broker, orthanc=orthanc_server, storage=shared)
    receivers = [
        NodeProcess(
            tmp_path / f"rx{i}", free_port(), database_url=postgres_url, extra=extra,
            roles="receiver",
        )
        for i in (1, 2)
    ]  # fmt: skip
    control = NodeProcess(
        tmp_path / "control", free_port(), database_url=postgres_url, extra=extra,
        roles="collector,sender",
    )  # fmt: skip
    studies = [write_chest_ct(tmp_path / f"ct{k}", seed=20250 + k) for k in range(4)]
    workers: list[WorkerProcess] = []
    db = Database(postgres_url)
    try:
        for rx in receivers:
            rx.start()
        control.start()
        workers = [WorkerProcess(control, "--pool", "solo") for _ in range(2)]
        sends = []
        for files in studies:
            half = len(files) // 2
            sends += [(receivers[0], files[:half]), (receivers[1], files[half:])]
        with ThreadPoolExecutor(len(sends)) as pool:
            done = list(pool.map(lambda s: storescu(s[0].port, s[1]), sends))
        for d in done:
            assert d.returncode == 0, d.stdout + d.stderr

        def all_sent() -> bool:
            for w in workers:
                w.alive()
            jobs = jobs_of(db)
            if len(jobs) < 4 or any(j.status in ("queued", "running") for j in jobs):
                return False
            sent = deliveries_of(db)
            return len(sent) == 8 and all(d.status == "sent" for d in sent)

        wait_for("four jobs run and their results sent", all_sent, timeout_s=330)
        jobs = jobs_of(db)
        assert [(j.status, j.attempts) for j in jobs] == [("succeeded", 1)] * 4, jobs
        with db.engine.connect() as conn:
            per_series = (
                conn.execute(select(func.count(Instance.id)).group_by(Instance.series_id))
                .scalars()
                .all()
            )
        assert sorted(per_series) == [len(f) for f in studies]
        sent = deliveries_of(db)
        assert [d.attempts for d in sent] == [1] * 8
        for uid, _, _ in sent:
            assert len(orthanc_server.lookup(uid)) == 1, uid
        assert orthanc_server.count_instances() == 8
    finally:
        for w in workers:
            w.stop()
        control.terminate()
        for rx in receivers:
            rx.terminate()
        db.dispose()
    logs = "".join(w.log() for w in workers)
    for job_id in range(1, 5):
        assert logs.count(f"job {job_id} started") == 1, logs
    assert "Traceback" not in logs
    for process in (*receivers, control):
        assert "Traceback" not in process.log(), process.log()


def test_a_job_of_a_killed_worker_is_taken_over(redis_broker: Broker, tmp_path: Path) -> None:
    """SIGKILL the worker in the middle of a job: once its lease runs out the job is
    published again and another worker finishes it.  No sender role runs: with
    ``[celery] deliver_queue`` the worker sends the results too."""
    broker = redis_broker
    outbox = tmp_path / "outbox"
    extra = node_extra(broker, outbox, lease_s=4)
    extra["celery"]["deliver_queue"] = f"{broker.queue}-deliver"
    node = NodeProcess(tmp_path / "node", free_port(), extra=extra, roles="receiver,collector")
    with node:
        first = WorkerProcess(node, "--pool", "solo")
        push_chest_ct(node, tmp_path / "ct")
        wait_for("the job to start", lambda: first.alive() and "job 1 started" in first.log())
        first.proc.kill()
        first.proc.wait(10)
        second = WorkerProcess(node, "--pool", "solo")
        db = Database(node.db_url)
        try:
            wait_for(
                "the job to succeed",
                lambda: second.alive() and jobs_of(db)[0].status == "succeeded",
            )
            ((_, status, attempts, error),) = jobs_of(db)
            assert (status, attempts) == ("succeeded", 2), error
            assert result_count(db) == 2
            wait_for("SEG and SR sent", lambda: len(list(outbox.rglob("*.dcm"))) == 2, 120)
            wait_for("the deliveries recorded", lambda: [d.status for d in deliveries_of(db)]
                     == ["sent", "sent"], 60)  # fmt: skip
        finally:
            db.dispose()
            second.stop()
    assert "job 1 (ct-lungs) published to queue" in node.log()
    assert f"deliveries to outbox published to queue {broker.queue}-deliver" in node.log()
    assert second.log().count("job 1 started") == 1
    assert "taken over" in second.log() or "lease expired" in second.log(), second.log()
    assert "deliveries to outbox: 2 handled" in second.log(), second.log()


class PrivateRedis:
    """A ``redis-server`` of the test's own, keeping nothing on disk, to kill and restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("redis-server")
        if exe is None:
            if IN_CI:
                pytest.fail("redis-server not installed (scripts/install-system-deps.sh)")
            pytest.skip("redis-server not installed")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, 20, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def test_a_lost_or_duplicated_message_runs_the_job_once(tmp_path: Path) -> None:
    """SIGKILL the broker after the job was published (its message is lost with it) and
    start it again: the job is published again; two more copies of the message find the
    job claimed or done.  The job runs once."""
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    broker = Broker(redis.url, f"test-{uuid.uuid4().hex[:10]}")
    outbox = tmp_path / "outbox"
    node = NodeProcess(
        tmp_path / "node", free_port(), extra=node_extra(broker, outbox, republish_after_s=3)
    )
    worker: WorkerProcess | None = None
    try:
        with node:
            app = make_app(load_settings(node.config_path))
            push_chest_ct(node, tmp_path / "ct")
            line = f"job 1 (ct-lungs) published to queue {broker.queue}"
            wait_for("the job's message", lambda: line in node.log(), timeout_s=60)
            assert broker.length(app) == 1
            redis.kill()  # the message is lost with the broker
            wait_for("the publisher to notice", lambda: "cannot publish jobs" in node.log(), 30)
            redis.start()
            assert broker.length(app) == 0
            wait_for("the message again", lambda: "Celery broker reachable again" in node.log(), 30)
            assert f"{line} again" in node.log()
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
    finally:
        redis.kill()
    assert worker.log().count("job 1 started") == 1, worker.log()
    assert "Traceback" not in worker.log()


def test_cpu_hosts_do_not_consume_the_gpu_queue() -> None:
    assert consumable_queues([], "cpu", cuda=False) == ["cpu"]
    assert consumable_queues([], "cpu", cuda=True) == ["gpu", "cpu"]
    assert consumable_queues(["gpu", "cpu", "gpu"], "cpu", cuda=False) == ["cpu"]
    assert consumable_queues(["gpu"], "cpu", cuda=False) == []
    assert consumable_queues(["ct-big"], "cpu", cuda=False) == ["ct-big"]

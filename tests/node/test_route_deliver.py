"""Route and deliver, end to end with real peers.

DCMTK ``storescu`` is the scanner, ``dicom-node serve`` runs in a subprocess
(collector, worker pool, sender), Orthanc is the archive.  The tests wait for
results in Orthanc's REST API, check them with ``dciodvfy``, and kill the node
with SIGKILL at the moments that matter.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Completion, Delivery, Job, Result
from tests.results.helpers import assert_valid
from tests.support.chest_ct import CHEST_SLICES, write_chest_ct
from tests.support.orthanc import OrthancServer
from tests.support.peers import NodeProcess, free_port, storescu

HEAD_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def wait_for(
    what: str, check: Callable[[], Any], timeout_s: float = 120.0, poll_s: float = 0.2
) -> Any:
    """Poll *check* until it returns something truthy; fail with *what* after the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def ct_files(work: Path) -> list[Path]:
    """A 40-slice synthetic chest CT, written under *work* (the shared data has no chest CT)."""
    files = write_chest_ct(work / "chest-ct")
    assert len(files) == CHEST_SLICES == 40
    return files


def node_config(
    orthanc: OrthancServer | None,
    *,
    outputs: tuple[str, ...] = ("seg", "sr"),
    quiet_s: float = 2.0,
    sc_slices: str = "mask",
    folder: Path | None = None,
) -> dict[str, Any]:
    destinations: list[dict[str, Any]] = []
    names: list[str] = []
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
                "max_attempts": 50,
                "timeout_s": 10.0,
            }
        )
        names.append("pacs")
    if folder is not None:
        destinations.append({"name": "outbox", "type": "folder", "path": str(folder)})
        names.append("outbox")
    return {
        "worker": {
            "concurrency": 1,
            "device": "cpu",
            "lease_s": 5,
            "poll_interval_s": 0.1,
            "retry_base_s": 1.0,
            "sc_slices": sc_slices,
        },
        "destinations": destinations,
        "rules": [
            {
                "name": "ct-chest",
                "match": {"Modality": "CT", "ImageType": {"contains": "AXIAL"}},
                "pipelines": ["ct-lungs"],
                "destinations": names,
                "quiet_period_s": quiet_s,
                "outputs": list(outputs),
            },
            {"name": "nothing-else", "match": {"Modality": "MR"}, "pipelines": ["ct-lungs"]},
        ],
    }


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Nodes sharing one folder and port (a restart finds the same spool and database)."""
    port = free_port()
    started: list[NodeProcess] = []

    def make(extra: dict[str, Any]) -> NodeProcess:
        extra = {**extra, "storage": {"results_dir": str(tmp_path / "node" / "results")}}
        node = NodeProcess(tmp_path / "node", port, extra=extra)
        started.append(node)
        return node.start()

    yield make
    for node in started:
        if node.proc is not None and node.proc.poll() is None:
            node.kill()


def db_of(node: NodeProcess) -> Database:
    return Database(node.db_url)


def rows(db: Database, query: Any) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(query).all())


def results_in_orthanc(orthanc: OrthancServer, study_uid: str) -> dict[str, list[str]]:
    """SOP Instance UIDs in the study, keyed by ``Modality:SOPClassUID``."""
    out: dict[str, list[str]] = {}
    for series in orthanc.series_of_study(study_uid):
        for instance_id in series["Instances"]:
            tags = orthanc.instance_tags(instance_id)
            out.setdefault(
                tags.get("Modality", "?") + ":" + tags.get("SOPClassUID", ""), []
            ).append(tags["SOPInstanceUID"])
    return out


SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def by_class(found: dict[str, list[str]], sop_class: str) -> list[str]:
    return [uid for key, uids in found.items() if key.endswith(":" + sop_class) for uid in uids]


def source_study(files: list[Path]) -> tuple[str, str]:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def audit_trail(node: NodeProcess) -> list[dict[str, Any]]:
    """The node's audit trail as ``dicom-node audit --json`` lists it."""
    listing = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "-c", str(node.config_path), "audit", "--json",
         "--since", "1h", "--limit", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    return [json.loads(line) for line in listing.stdout.splitlines()]


def push(node: NodeProcess, files: list[Path]) -> None:
    done = storescu(node.port, files, calling_ae="CT_SCANNER_1")
    assert done.returncode == 0, done.stdout + done.stderr


def fetch(orthanc: OrthancServer, sop_uid: str) -> pydicom.Dataset:
    (hit,) = orthanc.lookup(sop_uid)
    return pydicom.dcmread(io.BytesIO(orthanc.instance_file(hit["ID"])))


def test_ct_series_comes_back_as_seg_and_sr(
    orthanc_server: OrthancServer,
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
) -> None:
    files = ct_files(tmp_path)
    study_uid, series_uid = source_study(files)
    web_port = free_port()
    config = node_config(orthanc_server)
    config["web"] = {"enabled": True, "host": "127.0.0.1", "port": web_port}
    node = node_factory(config)
    push(node, files)
    found = wait_for(
        "a SEG and an SR in Orthanc",
        lambda: (
            (f := results_in_orthanc(orthanc_server, study_uid))
            and by_class(f, SEG_CLASS)
            and by_class(f, SR_CLASS)
            and f
        ),
    )
    (seg_uid,) = by_class(found, SEG_CLASS)
    (sr_uid,) = by_class(found, SR_CLASS)
    seg = fetch(orthanc_server, seg_uid)
    sr = fetch(orthanc_server, sr_uid)
    # Same study, referencing the series that was sent.
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == study_uid
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert seg.SeriesInstanceUID != series_uid and sr.SeriesInstanceUID != series_uid
    for ds, name in ((seg, "seg.dcm"), (sr, "sr.dcm")):
        path = tmp_path / name
        ds.save_as(path, enforce_file_format=True)
        assert_valid(path)
    # The database tells the same story: one job, succeeded, every delivery sent.
    db = db_of(node)
    try:
        (job,) = rows(db, select(Job.status, Job.attempts, Job.timings))
        assert job.status == "succeeded" and job.attempts == 1
        assert {"wait", "read", "infer", "write"} <= set(job.timings)
        statuses = rows(db, select(Delivery.status, Delivery.last_status))
        assert statuses == [("sent", 0), ("sent", 0)]
    finally:
        db.dispose()
    listing = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_node.cli",
            "-c",
            str(node.config_path),
            "jobs",
            "list",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    (listed,) = [json.loads(line) for line in listing.stdout.splitlines()]
    assert listed["status"] == "succeeded" and listed["deliveries"] == {"sent": 2}
    assert listed["series_instance_uids"] == [series_uid]
    # The audit trail says what was done, and for which study.
    trail = wait_for(
        "the job and the sending in the audit trail",
        lambda: (
            (t := audit_trail(node))
            and any(e["event"] == "result-sent" for e in t)
            and any(e["event"] == "job-run" for e in t)
            and t
        ),
    )
    (run,) = [e for e in trail if e["event"] == "job-run"]
    assert (run["outcome"], run["study_instance_uid"]) == (0, study_uid)
    assert run["detail"]["pipeline"] == "ct-lungs" and run["detail"]["series"] == [series_uid]
    sent = [e for e in trail if e["event"] == "result-sent" and e["outcome"] == 0]
    assert {e["study_instance_uid"] for e in sent} == {study_uid}
    assert sorted(u for e in sent for u in e["detail"]["sop_instance_uids"]) == sorted(
        [seg_uid, sr_uid]
    )
    assert {e["actor"] for e in sent} == {"pacs"}
    assert any(e["event"] == "node-started" for e in trail)
    # The running node's REST API and metrics say the same.
    base = f"http://127.0.0.1:{web_port}"
    job = json.loads(urllib.request.urlopen(f"{base}/api/jobs/{listed['id']}", timeout=10).read())
    assert job["status"] == "succeeded"
    metrics = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    assert 'dicom_node_deliveries{destination="pacs",status="sent"} 2.0' in metrics


def test_sigkill_while_the_job_runs_then_restart(
    tmp_path: Path,
    orthanc_server: OrthancServer,
    node_factory: Callable[..., NodeProcess],
) -> None:
    files = ct_files(tmp_path)
    study_uid, _ = source_study(files)
    config = node_config(orthanc_server)
    node = node_factory(config)
    push(node, files)
    db = db_of(node)
    try:
        wait_for(
            "the job to run",
            lambda: rows(db, select(Job.id).where(Job.status == "running")),
            poll_s=0.02,
        )
        node.kill()
        assert rows(db, select(Job.status)) == [("running",)]
        node_factory(config)  # same spool, database and port
        wait_for(
            "the job to succeed after the restart",
            lambda: rows(db, select(Job.id).where(Job.status == "succeeded")),
        )
        wait_for(
            "every delivery to be sent",
            lambda: rows(db, select(func.count()).where(Delivery.status == "sent"))[0][0] == 2,
        )
        (job,) = rows(db, select(Job.attempts))
        assert job.attempts == 2  # the killed attempt counts
    finally:
        db.dispose()
    found = results_in_orthanc(orthanc_server, study_uid)
    assert len(by_class(found, SEG_CLASS)) == 1 and len(by_class(found, SR_CLASS)) == 1


def test_sigkill_while_results_are_sent_then_restart(
    tmp_path: Path,
    orthanc_server: OrthancServer,
    node_factory: Callable[..., NodeProcess],
) -> None:
    files = ct_files(tmp_path)
    study_uid, _ = source_study(files)
    config = node_config(orthanc_server, outputs=("seg", "sr", "sc"), sc_slices="all")
    node = node_factory(config)
    push(node, files)
    db = db_of(node)
    sending = (
        select(Delivery.id)
        .where(Delivery.status == "pending", Delivery.lease_owner.is_not(None))
        .limit(1)
    )
    try:
        wait_for("results being sent", lambda: rows(db, sending), poll_s=0.005)
        node.kill()
        partial = orthanc_server.count_instances()
        expected = rows(db, select(func.count()).select_from(Result))[0][0]
        assert expected == CHEST_SLICES + 2  # SEG + SR + one SC per slice
        assert rows(db, select(func.count()).where(Delivery.status == "sent"))[0][0] < expected
        node_factory(config)
        wait_for(
            "every delivery to be sent after the restart",
            lambda: (
                rows(db, select(func.count()).where(Delivery.status == "sent"))[0][0] == expected
            ),
        )
        result_uids = {r[0] for r in rows(db, select(Result.sop_instance_uid))}
    finally:
        db.dispose()
    found = results_in_orthanc(orthanc_server, study_uid)
    in_orthanc = [uid for key, uids in found.items() for uid in uids]
    # Exactly once: the same objects, no second copy under other UIDs.
    assert sorted(set(in_orthanc) - _ct_uids(files)) == sorted(result_uids)
    assert len(in_orthanc) == len(set(in_orthanc)) == CHEST_SLICES + 2
    assert len(by_class(found, SC_CLASS)) == CHEST_SLICES
    assert partial <= CHEST_SLICES + 2


def _ct_uids(files: list[Path]) -> set[str]:
    return {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def test_archive_down_then_back(
    tmp_path: Path,
    orthanc_server: OrthancServer,
    node_factory: Callable[..., NodeProcess],
) -> None:
    files = ct_files(tmp_path)
    study_uid, _ = source_study(files)
    orthanc_server.stop()
    node = node_factory(node_config(orthanc_server))
    push(node, files)
    db = db_of(node)
    try:
        failing = select(Delivery.attempts, Delivery.error, Delivery.next_attempt_at).where(
            Delivery.status == "pending", Delivery.attempts >= 2
        )
        pending = wait_for("failed attempts while the archive is down", lambda: rows(db, failing))
        # The root cause, not only "association failed".
        port = orthanc_server.dicom_port
        assert f"connection refused by 127.0.0.1:{port}" in (pending[0].error or "")
        orthanc_server.start()
        back = time.monotonic()
        wait_for(
            "delivery after the archive is back",
            lambda: rows(db, select(func.count()).where(Delivery.status == "sent"))[0][0] == 2,
            timeout_s=30,
        )
        # The backoff is capped at retry_max_s = 2 s; allow a poll and an association.
        assert time.monotonic() - back < 10
    finally:
        db.dispose()
    found = results_in_orthanc(orthanc_server, study_uid)
    assert len(by_class(found, SEG_CLASS)) == 1 and len(by_class(found, SR_CLASS)) == 1


def test_late_instance_supersedes_the_results(
    orthanc_server: OrthancServer,
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
) -> None:
    files = ct_files(tmp_path)
    study_uid, _ = source_study(files)
    node = node_factory(node_config(orthanc_server))
    push(node, files[:-1])
    first = wait_for(
        "the first SR",
        lambda: by_class(results_in_orthanc(orthanc_server, study_uid), SR_CLASS),
    )
    push(node, files[-1:])
    found = wait_for(
        "the revised SEG and SR",
        lambda: (
            (f := results_in_orthanc(orthanc_server, study_uid))
            and len(by_class(f, SR_CLASS)) == 2
            and len(by_class(f, SEG_CLASS)) == 2
            and f
        ),
    )
    (old_sr,) = first
    (new_sr,) = [u for u in by_class(found, SR_CLASS) if u != old_sr]
    sr = fetch(orthanc_server, new_sr)
    predecessor = sr.PredecessorDocumentsSequence[0]
    referenced = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == old_sr
    sr.save_as(tmp_path / "sr-rev1.dcm", enforce_file_format=True)
    assert_valid(tmp_path / "sr-rev1.dcm")
    seg_uids = by_class(found, SEG_CLASS)
    newest_seg = max(
        (fetch(orthanc_server, u) for u in seg_uids),
        key=lambda d: len(d.ReferencedSeriesSequence[0].ReferencedInstanceSequence),
    )
    assert len(newest_seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) >= 1
    db = db_of(node)
    try:
        (completion,) = rows(db, select(Completion.revision, Completion.instance_count))
        assert completion == (1, CHEST_SLICES)
        assert sorted(r[0] for r in rows(db, select(Job.revision))) == [0, 1]
    finally:
        db.dispose()


def test_forced_completion_to_a_folder( node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    files = ct_files(tmp_path)[8:20]
    _, series_uid = source_study(files)
    outbox = tmp_path / "outbox"
    node = node_factory(node_config(None, quiet_s=3600, folder=outbox))
    push(node, files)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_node.cli",
            "-c",
            str(node.config_path),
            "complete",
            series_uid,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "queued job(s): 1" in done.stdout
    written = wait_for(
        "results in the outbox", lambda: sorted(outbox.rglob("*.dcm")), timeout_s=120
    )
    wait_for("both results", lambda: len(sorted(outbox.rglob("*.dcm"))) == 2)
    written = sorted(outbox.rglob("*.dcm"))
    classes = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in written)
    assert classes == sorted([SEG_CLASS, SR_CLASS])


@pytest.mark.parametrize(
    ("pipeline", "path", "outputs", "expected"),
    [
        ("cxr-findings", "cxr", ["sr", "sc"], {SR_CLASS, SC_CLASS}),
        (
            "mg-masses",
            "mg",
            ["sr", "gsps"],
            {SR_CLASS, "1.2.840.10008.5.1.4.1.1.11.1"},
        ),
    ],
)
def test_radiograph_pipelines_through_routing(
    dicom_data: Path,
    node_factory: Callable[..., NodeProcess],
    tmp_path: Path,
    pipeline: str,
    path: str,
    outputs: list[str],
    expected: set[str],
) -> None:
    from tests.support.peers import storescu_as_is
    from tests.support.radiographs import write_cxr, write_mammogram

    # phantoms of the training families: the shared real chest CR and
    # mammogram are refused by the models' OOD checks (tests/ai_models/test_ood.py)
    write = write_cxr if path == "cxr" else write_mammogram
    source = write(tmp_path / "src")
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    outbox = tmp_path / "outbox"
    config = node_config(None, quiet_s=1.0, folder=outbox)
    config["rules"] = [
        {
            "name": pipeline,
            "match": {"SOPInstanceUID": str(ds.SOPInstanceUID)},
            "pipelines": [pipeline],
            "destinations": ["outbox"],
            "quiet_period_s": 1.0,
            "outputs": outputs,
        }
    ]
    node = node_factory(config)
    done = storescu_as_is(
        node.port, [source], str(ds.file_meta.TransferSyntaxUID), calling_ae="MODALITY"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wait_for(
        f"{pipeline} results in the outbox",
        lambda: (
            {
                str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID)
                for p in outbox.rglob("*.dcm")
            }
            >= expected
        ),
        timeout_s=240,
    )
    for p in outbox.rglob("*.dcm"):
        out = pydicom.dcmread(p, stop_before_pixels=True)
        assert out.StudyInstanceUID == ds.StudyInstanceUID


def test_head_ct_routed_to_ct_lungs_is_skipped_and_nothing_is_sent(
    dicom_data: Path, node_factory: Callable[..., NodeProcess], tmp_path: Path
) -> None:
    """A rule that sends every axial CT to ct-lungs (no anatomy condition) gets
    the real head CT: the pipeline sees no lung fields in the pixels, the job
    ends ``skipped`` with that reason, and no result reaches the destination."""
    files = sorted((dicom_data / HEAD_CT).iterdir(), key=lambda p: int(p.name[1:]))
    assert len(files) == 28
    outbox = tmp_path / "outbox"
    node = node_factory(node_config(None, quiet_s=1.0, folder=outbox))
    push(node, files)
    db = db_of(node)
    try:
        (job,) = wait_for(
            "the job to end",
            lambda: rows(
                db, select(Job.status, Job.error).where(Job.status.in_(["skipped", "failed"]))
            ),
        )
        assert job.status == "skipped", job
        assert "ct-lungs: not a chest CT: no lung fields" in job.error
        assert rows(db, select(Result.id)) == [] and rows(db, select(Delivery.id)) == []
    finally:
        db.dispose()
    assert not outbox.exists() or not list(outbox.rglob("*.dcm"))

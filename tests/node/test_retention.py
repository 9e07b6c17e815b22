"""Retention end to end: a real node, DCMTK storescu, the CLI in subprocesses.

A chest CT (synthetic, 40 slices) goes through ct-lungs to a folder
destination.  ``dicom-node retention run --dry-run`` says what would go and
deletes nothing; ``retention run`` deletes the spool and result files and
keeps the rows (``jobs list`` lists the job, ``jobs show`` says purged,
``jobs retry`` refuses and says why, and is audited); a slice sent again
after the purge is kept, collected again and run (on the file that is
there); a restarted node's retention loop purges it in turn.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from storage.db import Database
from storage.models import Delivery, Instance, Job, Result
from tests.support.chest_ct import write_chest_ct
from tests.support.peers import NodeProcess, free_port, storescu

ROOT = Path(__file__).resolve().parents[2]
KEEP_S = 3.0

pytestmark = pytest.mark.timeout(400)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 180.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def rows(db: Database, query: Any) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(query).all())


def cli(node: NodeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "-c", str(node.config_path), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def config(outbox: Path, results: Path, interval_s: float) -> dict[str, Any]:
    return {
        "storage": {"results_dir": str(results)},
        "worker": {"concurrency": 1, "device": "cpu", "lease_s": 5, "poll_interval_s": 0.1},
        "retention": {"keep_days": KEEP_S / 86400, "interval_s": interval_s},
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


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path


def spool_files(node: NodeProcess) -> list[Path]:
    return [p for p in node.spool.rglob("*.dcm") if not any(s.startswith(".") for s in p.parts)]


def test_retention_purges_what_is_done_keeps_rows_and_handles_a_late_instance(
    workdir: Path,
) -> None:
    files = write_chest_ct(workdir / "chest-ct")
    outbox, results = workdir / "outbox", workdir / "results"
    port = free_port()
    # A loop interval of an hour: the passes of this test are the CLI's.
    node = NodeProcess(workdir / "node", port, extra=config(outbox, results, 3600))
    node.start()
    db = Database(node.db_url)
    try:
        done = storescu(port, files, calling_ae="CT_SCANNER_1")
        assert done.returncode == 0, done.stderr
        (job_id, status) = wait_for(
            "the job to end and its results to be sent",
            lambda: (
                [
                    r
                    for r in rows(db, select(Job.id, Job.status))
                    if r.status not in ("queued", "running")
                ]
                and not rows(db, select(Delivery.id).where(Delivery.status == "pending"))
                and rows(db, select(Delivery.id))
                and rows(db, select(Job.id, Job.status))[0]
            ),
        )
        assert status == "succeeded"
        n_results = len(rows(db, select(Result.id)))
        assert n_results >= 1 and len(list(results.rglob("*.dcm"))) == n_results
        delivered = sorted(outbox.rglob("*.dcm"))
        assert len(delivered) == n_results
        time.sleep(KEEP_S + 0.5)

        dry = cli(node, "retention", "run", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "would delete" in dry.stdout and "age" in dry.stdout
        assert f"{len(files)}" in dry.stdout, dry.stdout
        assert len(spool_files(node)) == len(files)  # nothing deleted

        run = cli(node, "retention", "run")
        assert run.returncode == 0, run.stderr
        assert f"files deleted: {len(files) + n_results}" in run.stdout, run.stdout
        assert spool_files(node) == []
        assert list(results.rglob("*.dcm")) == []
        assert sorted(outbox.rglob("*.dcm")) == delivered  # what was delivered is not ours
        assert all(r.purged_at for r in rows(db, select(Instance.purged_at)))

        listed = [
            json.loads(line) for line in cli(node, "jobs", "list", "--json").stdout.splitlines()
        ]
        assert [j["id"] for j in listed] == [job_id] and listed[0]["purged_at"]
        assert "(purged)" in cli(node, "jobs", "list").stdout
        shown = cli(node, "jobs", "show", str(job_id))
        assert "purged: retention deleted" in shown.stdout, shown.stdout
        assert json.loads(cli(node, "jobs", "show", str(job_id), "--json").stdout)["purged_at"]
        retry = cli(node, "jobs", "retry", str(job_id))
        assert retry.returncode == 1
        assert "purged" in retry.stderr and "send the series to the node again" in retry.stderr

        # A slice sent again after the purge: kept, collected again, run on what is there.
        again = storescu(port, [files[0]], calling_ae="CT_SCANNER_1")
        assert again.returncode == 0, again.stderr
        assert len(spool_files(node)) == 1
        (rev1,) = wait_for(
            "a new revision's job to end",
            lambda: rows(
                db,
                select(Job.id, Job.status, Job.error).where(
                    Job.revision == 1, Job.status.not_in(["queued", "running"])
                ),
            ),
        )
        assert rev1.status in ("skipped", "succeeded"), rev1  # never a missing file
        assert len(spool_files(node)) == 1
    finally:
        node.terminate()

    # The node's own loop (collector role) purges the late slice once it is done.
    node = NodeProcess(workdir / "node", port, extra=config(outbox, results, 1))
    node.start()
    try:
        wait_for("the loop to purge the late slice", lambda: spool_files(node) == [], 60)
    finally:
        node.terminate()
        db.dispose()

    # A forced completion of the purged series: nothing new to run, and audited.
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    forced = cli(node, "complete", series_uid)
    assert forced.returncode == 0, forced.stderr
    assert "already complete with the same instances" in forced.stdout, forced.stdout

    trail = [
        json.loads(line)
        for line in cli(
            node, "audit", "--json", "--since", "1h", "--limit", "1000"
        ).stdout.splitlines()
    ]
    purges = [e for e in trail if e["event"] == "retention-purge"]
    assert len(purges) == 2
    by_cli = [e for e in purges if e["actor_kind"] == "user"]
    by_node = [e for e in purges if e["actor_kind"] == "node"]
    assert len(by_cli) == 1 and len(by_node) == 1
    assert by_cli[0]["detail"]["instances"] == len(files)
    assert by_cli[0]["detail"]["reason"] == "age"
    assert by_node[0]["detail"]["instances"] == 1
    admin = {e["detail"]["action"]: e for e in trail if e["event"] == "admin-action"}
    assert sorted(admin) == ["complete", "jobs-retry"]
    assert all(e["actor"] == getpass.getuser() for e in admin.values())
    assert all(e["actor_kind"] == "user" and e["detail"]["via"] == "cli" for e in admin.values())
    assert admin["jobs-retry"]["detail"]["refused"] == {str(job_id): "purged"}
    assert admin["jobs-retry"]["detail"]["job_ids"] == [job_id]
    assert admin["complete"]["detail"]["uid"] == series_uid

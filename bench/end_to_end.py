"""End-to-end benchmark: a 300-slice CT pushed by storescu comes back to Orthanc as SEG + SR.

The node (``dicom-node serve``: collector, one worker, sender) runs with a
rule that sends every CT to ``ct-lungs`` and the results to a real Orthanc.
For each run a new synthetic chest CT (300 x 512x512, new UIDs) is pushed
with DCMTK ``storescu``; the clock starts when storescu has its last
acknowledgement and stops when Orthanc has acknowledged the last result
(the delivery's ``sent_at`` in the node's database).  The quiet period is
subtracted; the rest is split into stages from the node's own records:

* ``completion delay`` -- collector: from the end of the quiet period to the job row;
* ``wait for worker`` -- job row to a worker's claim;
* ``read`` -- spool files -> volume;  ``model load`` -- first run only (cold);
* ``inference`` -- the pipeline's preprocess + inference + postprocess;
* ``write`` -- SEG + SR built and flushed;
* ``record`` -- result and delivery rows committed after the write;
* ``send`` -- from those rows to Orthanc's last acknowledgement.

The node's own overhead is everything but inference and model load.  Two
peers give ratios in the same run: ``storescu`` sending the same 300 CT to
Orthanc (the push, node vs Orthanc as receiver) and ``storescu`` sending the
node's own result files to Orthanc (the send stage, node vs DCMTK as sender).
Every DCMTK tool and Orthanc run with ``TCP_NODELAY=1``.

Usage::

    python -m bench.end_to_end [--runs 3] [--quiet 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from bench.analyze import write_volume_series
from bench.receive import ROOT, free_port, orthanc, send, stop, wait_port
from storage.db import Database
from storage.jobs import as_utc
from storage.models import Completion, Delivery, Job, Result


def node_config(work: Path, port: int, orthanc_port: int, quiet: float, device: str) -> Path:
    cfg = work / "config.toml"
    cfg.write_text(
        f"""[node]
ae_title = "DICOM_NODE"
host = "127.0.0.1"
port = {port}
[storage]
spool_dir = "{work / "spool"}"
results_dir = "{work / "results"}"
database_url = "sqlite:///{work / "node.db"}"
min_free_disk_mb = 0
[worker]
concurrency = 1
device = "{device}"
poll_interval_s = 0.1
[web]
enabled = false
[log]
level = "WARNING"

[[destinations]]
name = "pacs"
type = "dicom"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = {orthanc_port}

[[rules]]
name = "ct"
pipelines = ["ct-lungs"]
destinations = ["pacs"]
quiet_period_s = {quiet}
outputs = ["seg", "sr"]
[rules.match]
Modality = "CT"
"""
    )
    return cfg


def wait_delivered(db: Database, study_uid: str, timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    query = (
        select(func.count(), func.count().filter(Delivery.status == "sent"))
        .join(Result, Result.id == Delivery.result_id)
        .where(Result.study_instance_uid == study_uid)
    )
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            total, sent = conn.execute(query).one()
            failed = conn.execute(
                select(Job.error).where(Job.status == "failed").limit(1)
            ).scalar_one_or_none()
        if failed:
            raise RuntimeError(f"job failed: {failed}")
        if total and sent == total:
            return
        time.sleep(0.05)
    raise TimeoutError("results not delivered in time")


def stages(db: Database, study_uid: str, t_ack: datetime, quiet: float) -> dict[str, float]:
    with db.engine.connect() as conn:
        job = conn.execute(
            select(Job.__table__)
            .join(Result, Result.job_id == Job.id)
            .where(Result.study_instance_uid == study_uid)
            .limit(1)
        ).one()
        completion = conn.execute(
            select(Completion.__table__).where(Completion.id == job.completion_id)
        ).one()
        created, last_sent = conn.execute(
            select(func.max(Result.created_at), func.max(Delivery.sent_at))
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Result.job_id == job.id)
        ).one()
    t = job.timings
    finished = as_utc(created)
    done = as_utc(last_sent)
    started = as_utc(job.started_at)
    assert finished and done and started
    last_instance = as_utc(completion.last_instance_at)
    completed = as_utc(completion.completed_at)
    assert last_instance and completed
    quiet_end = last_instance + timedelta(seconds=quiet)
    inference = sum(t.get(k, 0.0) for k in ("preprocess", "infer", "postprocess"))
    out = {
        "completion delay": (completed - quiet_end).total_seconds(),
        "wait for worker": t.get("wait", 0.0),
        "read": t.get("read", 0.0),
        "model load": t.get("load", 0.0),
        "inference": inference,
        "write": t.get("write", 0.0),
    }
    accounted = started + timedelta(
        seconds=sum(t.get(k, 0.0) for k in ("read", "load", "write")) + inference
    )
    out["record"] = max(0.0, (finished - accounted).total_seconds())
    out["send"] = (done - finished).total_seconds()
    out["total - quiet"] = (done - t_ack).total_seconds() - quiet
    out["node overhead"] = out["total - quiet"] - inference - out["model load"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="first is cold (model load)")
    ap.add_argument("--quiet", type=float, default=2.0, help="the rule's quiet period, s")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)

    from ai_models.training.evaluate import full_size_volume

    console = Console(width=150)
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    for sub in ("orthanc-node", "orthanc-peer", "node"):
        (work / sub).mkdir()
    rows: list[dict[str, float]] = []
    push_node: list[float] = []
    push_orthanc: list[float] = []
    send_dcmtk: list[float] = []
    try:
        with (
            orthanc(work / "orthanc-node") as (o_port, o_aet),
            orthanc(work / "orthanc-peer") as (peer_port, peer_aet),
        ):
            port = free_port()
            cfg = node_config(work / "node", port, o_port, args.quiet, args.device)
            proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node.cli", "-c", str(cfg), "serve"],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=(work / "node.log").open("wb"),
            )
            db = Database(f"sqlite:///{work / 'node' / 'node.db'}")
            try:
                wait_port(port)
                base = full_size_volume()
                for run in range(args.runs):
                    files = write_volume_series(base, work / f"ct{run}")
                    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                    subprocess.run(["sync"], check=True)
                    push_node.append(send(port, "DICOM_NODE", files, 1))
                    t_ack = datetime.now(timezone.utc)
                    wait_delivered(db, study)
                    row = stages(db, study, t_ack, args.quiet)
                    rows.append(row)
                    console.print(
                        f"run {run + 1}: {row['total - quiet']:.2f} s after the quiet period "
                        f"(node overhead {row['node overhead']:.2f} s)"
                    )
                    # The peers, same files, same machine, same run.
                    push_orthanc.append(send(peer_port, peer_aet, files, 1))
                    with db.engine.connect() as conn:
                        paths = (
                            conn.execute(
                                select(Result.path).where(Result.study_instance_uid == study)
                            )
                            .scalars()
                            .all()
                        )
                    result_files = [work / "node" / "results" / p for p in paths]
                    send_dcmtk.append(
                        send(peer_port, peer_aet, result_files, 1, extra_args=("-R",))
                    )
            finally:
                stop(proc)
                db.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = Table(title=f"ct-lungs end to end, 300 x 512x512 CT, quiet period {args.quiet} s")
    table.add_column("stage")
    for i in range(len(rows)):
        table.add_column("cold s" if i == 0 else f"warm {i} s", justify="right")
    if len(rows) > 1:
        table.add_column("warm median s", justify="right")
    for name in rows[0]:
        values = [r[name] for r in rows]
        cells = [f"{v:.2f}" for v in values]
        if len(rows) > 1:
            cells.append(f"{statistics.median(values[1:]):.2f}")
        table.add_row(name, *cells)
    console.print(table)

    peers = Table(title="the same work by real peers in this run (median)")
    peers.add_column("what")
    peers.add_column("dicom-node s", justify="right")
    peers.add_column("peer s", justify="right")
    peers.add_column("ratio (peer / node)", justify="right")
    node_push = statistics.median(push_node)
    orthanc_push = statistics.median(push_orthanc)
    node_send = statistics.median(r["send"] for r in rows)
    dcmtk_send = statistics.median(send_dcmtk)
    peers.add_row(
        "receive the 300 CT (storescu ->)",
        f"{node_push:.2f}",
        f"Orthanc {orthanc_push:.2f}",
        f"{orthanc_push / node_push:.2f}x",
    )
    peers.add_row(
        "send SEG + SR to Orthanc",
        f"{node_send:.2f}",
        f"storescu {dcmtk_send:.2f}",
        f"{dcmtk_send / node_send:.2f}x",
    )
    console.print(peers)
    console.print(
        "send (node) runs from the result rows' commit to Orthanc's last acknowledgement, "
        "so it includes the sender's poll; storescu's includes its process start."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Chaos harness: SIGKILL the node at random moments, take its archive and its
database away, fill its disk, and count what was lost.

Everything runs on 127.0.0.1: ``dicom-node serve`` in a subprocess (web off,
plain DICOM), DCMTK ``storescu`` as the modality, a private Orthanc as the
archive (PACS), and, for the database outage, a private PostgreSQL cluster
in a temporary folder (the machine's shared server is never touched).

Kill trials.  Each trial sends a fresh copy (new UIDs) of a synthetic chest CT
(``tests.support.chest_ct``: 40 slices, the family ``ct-lungs`` was trained
on; the shared real CTs are heads, which ``ct-lungs`` rightly skips) to a
fresh node routing it to ``ct-lungs`` -> SEG + SR + SC -> Orthanc, and
SIGKILLs the node in one phase, chosen round-robin, at a random moment
within it, found by watching the node's database and results folder:

``receive``     after a random number of acknowledged instances, storescu still sending;
``completion``  half the time 0.3 s to the quiet period + 0.3 s after the last instance,
                half the time 0-0.05 s after the series' completion row appears;
``inference``   while the job is ``running``, after a random 0-2 s;
``results``     when the first result file appears in the results folder;
``sending``     while a delivery to Orthanc is leased (being sent).

The node is then restarted on the same spool, database and port (for
``receive``, the modality then sends the whole series again, as a modality
retries a failed association) and left to finish.  Counted per trial:
instances acknowledged (C-STORE Success, PS3.4 B.2.3) and missing from the
database or spool (must be 0), results the database holds versus results
present in Orthanc (0 missing), and result objects in Orthanc that the node's
database does not hold (duplicates under other UIDs: 0).

Scenarios (PS3.4 B.2.3 status codes):

(a) archive down then back: Orthanc stopped for ``--archive-down-s`` (600 s
    by default) while a series is processed; every result is delivered after
    it comes back, none twice.
(b) PostgreSQL stopped for ``--db-outage-s`` (30 s) while a sender stores an
    instance every ``0.25`` s: no Success during the outage (a failure status
    or a refused association), Success again by itself after.
(c) disk at the watermark (``[storage] min_free_disk_mb`` above what is free):
    every C-STORE answered 0xA700 (Out of Resources), nothing left in spool
    or database.

Usage::

    python -m bench.chaos [--trials 50] [--seed 1] [--archive-down-s 600]
                          [--db-outage-s 30] [--only kills,archive,db,disk]
                          [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from bench.live import (
    DICOM_DATA,
    PostgresCluster,
    dataset_sha256,
    parse_storescu_acks,
    reuid_series,
    wait_until,
)
from dicom_node.receive.store import INTAKE_DIR
from storage.db import Database
from storage.intake import read_entries
from storage.models import Completion, Delivery, Instance, Job, Result
from tests.support.orthanc import OrthancServer
from tests.support.peers import NodeProcess, dcmtk_env, free_port, sender_ae

PHASES = ("receive", "completion", "inference", "results", "sending")
DONE_JOBS = {"succeeded", "failed", "skipped", "superseded"}
DONE_DELIVERIES = {"sent", "failed", "cancelled"}
QUIET_S = 2.0
SMALL_CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700


# -- the node ----------------------------------------------------------------------


def node_extra(
    orthanc: OrthancServer | None,
    results_dir: Path,
    *,
    retry_max_s: float = 2.0,
    workers: int = 1,
) -> dict[str, Any]:
    """Config sections for a node routing axial CT to ``ct-lungs`` -> Orthanc."""
    destinations = []
    if orthanc is not None:
        destinations.append(
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": orthanc.ae_title,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "retry_base_s": 1.0,
                "retry_max_s": retry_max_s,
                "max_attempts": 10_000,
                "timeout_s": 10.0,
            }
        )
    return {
        "storage": {"results_dir": str(results_dir)},
        "web": {"enabled": False},
        "worker": {
            "concurrency": workers,
            "device": "cpu",
            "lease_s": 5,
            "poll_interval_s": 0.1,
            "retry_base_s": 1.0,
            "sc_slices": "mask",
        },
        "destinations": destinations,
        "rules": [
            {
                "name": "ct-chest",
                "match": {"Modality": "CT", "ImageType": {"contains": "AXIAL"}},
                "pipelines": ["ct-lungs"],
                "destinations": [d["name"] for d in destinations],
                "quiet_period_s": QUIET_S,
                "outputs": ["seg", "sr", "sc"],
            }
        ],
    }


def count(db: Database, query: Any) -> int:
    with db.engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def rows(db: Database, query: Any) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(query).all())


def storescu_cmd(port: int, files: list[Path]) -> list[str]:
    exe = shutil.which("storescu", path="/usr/bin:/usr/local/bin") or "storescu"
    return [exe, "-v", "-aet", "CT_SCANNER_1", "-aec", "DICOM_NODE", "-nh", "127.0.0.1",
            str(port), *map(str, files)]  # fmt: skip


class AckReader(threading.Thread):
    """Reads a running ``storescu -v``'s output, counting Success responses as they come."""

    def __init__(self, sender: subprocess.Popen[str]) -> None:
        super().__init__(daemon=True)
        self.sender = sender
        self.lines: list[str] = []
        self.acks = 0
        self.start()

    def run(self) -> None:
        assert self.sender.stdout is not None
        for line in self.sender.stdout:
            self.lines.append(line)
            if "Received Store Response (Success)" in line:
                self.acks += 1

    def output(self) -> str:
        return "".join(self.lines)


def send_all(port: int, files: list[Path], timeout_s: float = 300.0) -> list[str]:
    """Send *files* with ``storescu``; the paths acknowledged with Success."""
    done = subprocess.run(
        storescu_cmd(port, files), env=dcmtk_env(), capture_output=True, text=True,
        timeout=timeout_s,
    )  # fmt: skip
    return parse_storescu_acks(done.stdout + done.stderr)


def finished(db: Database, since_send: float) -> bool:
    """All jobs ended and every delivery ended, the quiet period long past."""
    if time.monotonic() - since_send < QUIET_S + 1.5:
        return False
    jobs = rows(db, select(Job.status))
    if not jobs or any(s not in DONE_JOBS for (s,) in jobs):
        return False
    deliveries = rows(db, select(Delivery.status))
    return all(s in DONE_DELIVERIES for (s,) in deliveries)


# -- what is counted ---------------------------------------------------------------


@dataclass
class Trial:
    n: int
    phase: str
    hit: bool = False
    """Whether the node was in the phase when killed (False: the phase was missed)."""
    state_at_kill: str = ""
    acked: int = 0
    lost: int = 0
    results_expected: int = 0
    results_present: int = 0
    results_missing: int = 0
    duplicates: int = 0
    leftovers: int = 0
    """Spool files no database row names, after the restart (0: nothing half-written)."""
    jobs: str = ""
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        counts_zero = (self.lost, self.results_missing, self.duplicates, self.leftovers)
        return not self.error and self.results_expected > 0 and not any(counts_zero)


def lost_instances(db: Database, spool: Path, acked: dict[str, str]) -> int:
    """Acknowledged SOP Instance UIDs (-> sha256 of the file sent) that the database
    does not list, whose spool file is gone, or whose stored bytes differ."""
    stored = {
        uid: (path, sha)
        for uid, path, sha in rows(
            db, select(Instance.sop_instance_uid, Instance.path, Instance.sha256)
        )  # fmt: skip
    }
    lost = 0
    for uid in acked:
        if uid not in stored:
            lost += 1
            continue
        path = Path(stored[uid][0])
        path = path if path.is_absolute() else spool / path
        if (
            not path.is_file()
            or acked[uid] != stored[uid][1]
            or dataset_sha256(path) != stored[uid][1]
        ):
            lost += 1
    return lost


def spool_leftovers(db: Database, spool: Path) -> int:
    """Files in the spool that no database row names: placed files without an
    ``instance`` row, temporary ``.part`` files, and intake journal entries not
    yet applied (the quarantine is left out: what it holds was set aside on
    purpose; the journal's own segment files are not data)."""
    known = {str(p) for (p,) in rows(db, select(Instance.path))}
    left = 0
    for journal in (spool / INTAKE_DIR).glob("*"):
        left += sum(1 for _ in read_entries(journal))
    for path in spool.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(spool)
        if rel.parts[0] in (".quarantine", INTAKE_DIR):
            continue
        if rel.parts[0] == ".tmp" or (rel.as_posix() not in known and str(path) not in known):
            left += 1
    return left


def results_check(
    db: Database, orthanc: OrthancServer, study_uid: str, source_uids: set[str]
) -> tuple[int, int, int]:
    """(expected, present, duplicates): results the database holds for delivery (not
    cancelled), those of them in Orthanc, and result objects in Orthanc's study that
    the database does not hold at all (a second copy under other UIDs)."""
    held = {u for (u,) in rows(db, select(Result.sop_instance_uid))}
    # results of a job superseded by a later revision have their deliveries
    # cancelled: they need not reach the archive (though they may have)
    expected = {
        u
        for (u,) in rows(
            db,
            select(Result.sop_instance_uid)
            .join(Delivery, Delivery.result_id == Result.id)
            .where(Delivery.status != "cancelled")
            .distinct(),
        )
    }
    in_orthanc: set[str] = set()
    for series in orthanc.series_of_study(study_uid):
        for instance_id in series["Instances"]:
            in_orthanc.add(orthanc.instance_tags(instance_id)["SOPInstanceUID"])
    results = in_orthanc - source_uids
    return len(expected), len(expected & results), len(results - held)


def uid_of(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)


# -- kill trials -------------------------------------------------------------------


def kill_trial(
    n: int, phase: str, rng: random.Random, orthanc: OrthancServer, template: list[Path],
    base: Path, console: Console,
) -> Trial:  # fmt: skip
    trial = Trial(n, phase)
    started = time.monotonic()
    work = base / f"trial-{n:03d}"
    files = reuid_series(template, work / "series")
    sop_of = {str(p): uid_of(p)[0] for p in files}
    sha_of = {str(p): dataset_sha256(p) for p in files}
    study_uid = uid_of(files[0])[1]
    extra = node_extra(orthanc, work / "node" / "results")
    node = NodeProcess(work / "node", free_port(), extra=extra)
    node.start()
    db = Database(node.db_url)
    results_dir = work / "node" / "results"
    acked: dict[str, str] = {}
    try:
        if phase == "receive":
            k = rng.randint(1, len(files) - 1)
            sender = subprocess.Popen(
                storescu_cmd(node.port, files), env=dcmtk_env(), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1,
            )  # fmt: skip
            reader = AckReader(sender)
            try:
                # Acknowledged means durable, rows or not yet (the intake journal):
                # the kill comes after the k-th Success the sender has read.
                wait_until("acknowledgements", lambda: reader.acks >= k
                           or sender.poll() is not None, 120, 0.002)  # fmt: skip
                trial.hit = sender.poll() is None
                node.kill()
                trial.state_at_kill = f"{reader.acks} acknowledged at the kill"
                sender.wait(timeout=60)
            finally:
                if sender.poll() is None:
                    sender.kill()
                reader.join()
            acked.update({sop_of[p]: sha_of[p] for p in parse_storescu_acks(reader.output())})
            trial.state_at_kill += f", {len(acked)} in all"
        else:
            acked.update({sop_of[p]: sha_of[p] for p in send_all(node.port, files)})
            if phase == "completion":
                if rng.random() < 0.5:  # while the quiet period runs out
                    time.sleep(rng.uniform(0.3, QUIET_S + 0.3))
                else:  # when the completion row appears
                    wait_until(
                        "a completion",
                        lambda: count(db, select(func.count(Completion.id))),
                        60,
                        0.002,
                    )
                    time.sleep(rng.uniform(0.0, 0.05))
                trial.hit = not rows(db, select(Job.id).where(Job.status != "queued"))
            elif phase == "inference":
                wait_until("the job to run", lambda: rows(db, select(Job.id).where(
                    Job.status == "running")), 120, 0.01)  # fmt: skip
                time.sleep(rng.uniform(0.0, 2.0))
                trial.hit = bool(rows(db, select(Job.id).where(Job.status == "running")))
            elif phase == "results":
                wait_until("a result file", lambda: results_dir.exists() and any(
                    p.is_file() for p in results_dir.rglob("*")), 180, 0.002)  # fmt: skip
                trial.hit = not rows(db, select(Job.id).where(Job.status == "succeeded"))
            elif phase == "sending":
                wait_until("a delivery being sent", lambda: rows(db, select(Delivery.id).where(
                    Delivery.status == "pending", Delivery.lease_owner.is_not(None)).limit(1)),
                    180, 0.002)  # fmt: skip
                trial.hit = bool(
                    count(db, select(func.count(Delivery.id)).where(Delivery.status != "sent"))
                )
            node.kill()
            jobs = rows(db, select(Job.status))
            sent = count(db, select(func.count(Delivery.id)).where(Delivery.status == "sent"))
            trial.state_at_kill = (
                f"jobs {','.join(s for (s,) in jobs) or '-'}; "
                f"results {count(db, select(func.count(Result.id)))}; sent {sent}"
            )
        trial.acked = len(acked)
        # Restart on the same spool, database and port, and let it finish.
        node.start()
        last_send = time.monotonic()
        if phase == "receive":
            acked.update({sop_of[p]: sha_of[p] for p in send_all(node.port, files)})
            last_send = time.monotonic()
            trial.acked = len(acked)
        wait_until("every job and delivery to end", lambda: finished(db, last_send), 300, 0.3)
        node.terminate(60)
        trial.lost = lost_instances(db, node.spool, acked)
        trial.leftovers = spool_leftovers(db, node.spool)
        expected, present, dups = results_check(db, orthanc, study_uid, set(sop_of.values()))
        trial.results_expected, trial.results_present = expected, present
        trial.results_missing, trial.duplicates = expected - present, dups
        trial.jobs = ",".join(f"{s}/{a}" for s, a in rows(db, select(Job.status, Job.attempts)))
    except Exception as exc:  # noqa: BLE001 - a trial that breaks is reported, not fatal
        trial.error = f"{type(exc).__name__}: {exc}"[:300]
        console.print(f"[red]trial {n} ({phase}): {trial.error}[/red]")
        console.print(node.log()[-3000:])
    finally:
        node.kill()
        db.dispose()
        trial.seconds = round(time.monotonic() - started, 1)
    if trial.ok and "Traceback" not in node.log():
        shutil.rmtree(work, ignore_errors=True)
    return trial


# -- scenario (a): archive down then back -----------------------------------------------


def archive_down(
    orthanc: OrthancServer, template: list[Path], base: Path, down_s: float, retry_max_s: float
) -> dict[str, Any]:
    work = base / "archive-down"
    files = reuid_series(template, work / "series")
    sources = {uid_of(p)[0] for p in files}
    study_uid = uid_of(files[0])[1]
    node = NodeProcess(
        work / "node", free_port(),
        extra=node_extra(orthanc, work / "node" / "results", retry_max_s=retry_max_s),
    )  # fmt: skip
    out: dict[str, Any] = {"down_s": down_s, "retry_max_s": retry_max_s}
    orthanc.stop()
    down_at = time.monotonic()
    node.start()
    db = Database(node.db_url)
    try:
        out["acked"] = len(send_all(node.port, files))
        wait_until("failed delivery attempts", lambda: count(db, select(func.count(
            Delivery.id)).where(Delivery.attempts >= 1, Delivery.status == "pending")),
            300, 0.5)  # fmt: skip
        time.sleep(max(0.0, down_s - (time.monotonic() - down_at)))
        out["attempts_while_down"] = count(db, select(func.sum(Delivery.attempts)))
        out["failed_while_down"] = count(
            db, select(func.count(Delivery.id)).where(Delivery.status == "failed")
        )
        orthanc.start()
        back = time.monotonic()
        wait_until("every delivery after the archive is back", lambda: finished(db, 0),
                   retry_max_s + 120, 0.2)  # fmt: skip
        out["delivered_after_s"] = round(time.monotonic() - back, 1)
        expected, present, dups = results_check(db, orthanc, study_uid, sources)
        out.update(results_expected=expected, results_present=present,
                   results_missing=expected - present, duplicates=dups)  # fmt: skip
        out["ok"] = expected > 0 and present == expected and dups == 0
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["ok"] = False
    finally:
        orthanc.start()
        node.kill()
        db.dispose()
    return out


# -- scenario (b): the database stops ---------------------------------------------------


def one_store(port: int, path: Path, timeout_s: float = 20.0) -> int | None:
    """C-STORE *path* on its own association: the status, or ``None`` when no
    association could be made or no response came (both count as not stored)."""
    ae = sender_ae("DB_PROBE")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ds = pydicom.dcmread(path)
    ae.add_requested_context(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_store(ds)
        return int(rsp.Status) if rsp is not None and "Status" in rsp else None
    finally:
        if assoc.is_established:
            assoc.release()


def db_outage(base: Path, outage_s: float, interval_s: float = 0.25) -> dict[str, Any]:
    """Store an instance every *interval_s* before, during and after a PostgreSQL stop."""
    work = base / "db-outage"
    source = sorted((DICOM_DATA / SMALL_CT).iterdir())[0]
    pg = PostgresCluster().init()
    pg.start()
    node = NodeProcess(
        work / "node", free_port(), database_url=pg.url,
        extra={"worker": {"concurrency": 0}, "web": {"enabled": False},
               "node": {"acse_timeout": 20, "dimse_timeout": 20}},
    )  # fmt: skip
    out: dict[str, Any] = {"outage_s": outage_s}
    sent: list[tuple[str, float, int | None, str]] = []  # (phase, t, status, sop uid)
    n = 0

    def probe(phase: str) -> int | None:
        nonlocal n
        n += 1
        path = reuid_series([source], work / "probe" / str(n))[0]
        status = one_store(node.port, path)
        sent.append((phase, time.monotonic(), status, uid_of(path)[0]))
        return status

    node.start()
    db = Database(node.db_url)
    try:
        for _ in range(4):
            probe("before")
        pg.stop("immediate")
        stopped = time.monotonic()
        while time.monotonic() - stopped < outage_s:
            probe("during")
            time.sleep(interval_s)
        pg.start()
        restarted = time.monotonic()
        recovered: float | None = None
        while time.monotonic() - restarted < 120:
            if probe("after") == STATUS_SUCCESS:
                recovered = time.monotonic() - restarted
                break
            time.sleep(interval_s)
        for _ in range(4):
            probe("after")
        during = [s for p, _, s, _ in sent if p == "during"]
        acked = {u for _, _, s, u in sent if s == STATUS_SUCCESS}
        stored = {u for (u,) in rows(db, select(Instance.sop_instance_uid))}
        out.update(
            probes=len(sent),
            during=len(during),
            success_during=sum(1 for s in during if s == STATUS_SUCCESS),
            statuses_during=sorted({("none" if s is None else f"0x{s:04X}") for s in during}),
            recovered_after_s=None if recovered is None else round(recovered, 1),
            acked=len(acked),
            lost=len(acked - stored),
            spool_leftovers=spool_leftovers(db, node.spool),
            node_alive=node.proc is not None and node.proc.poll() is None,
        )
        out["ok"] = (out["success_during"] == 0 and recovered is not None and out["lost"] == 0
                     and out["spool_leftovers"] == 0
                     and out["node_alive"] and before_ok(sent))  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["ok"] = False
    finally:
        node.kill()
        db.dispose()
        pg.destroy()
    return out


def before_ok(sent: list[tuple[str, float, int | None, str]]) -> bool:
    return all(s == STATUS_SUCCESS for p, _, s, _ in sent if p == "before")


# -- scenario (c): the disk at the watermark ---------------------------------------------


def disk_watermark(base: Path, instances: int = 5) -> dict[str, Any]:
    """Every C-STORE refused with 0xA700 when free space is below the watermark."""
    work = base / "disk"
    work.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(work).free // 2**20
    node = NodeProcess(
        work / "node", free_port(),
        extra={"storage": {"min_free_disk_mb": int(free_mb + 100_000)},
               "worker": {"concurrency": 0}, "web": {"enabled": False}},
    )  # fmt: skip
    source = sorted((DICOM_DATA / SMALL_CT).iterdir())[0]
    out: dict[str, Any] = {}
    node.start()
    db = Database(node.db_url)
    try:
        statuses = [
            one_store(node.port, reuid_series([source], work / "probe" / str(i))[0])
            for i in range(instances)
        ]
        files = [
            p for p in node.spool.rglob("*")
            if p.is_file() and p.relative_to(node.spool).parts[0] != INTAKE_DIR
        ]  # fmt: skip
        out.update(
            sent=instances,
            statuses=sorted({("none" if s is None else f"0x{s:04X}") for s in statuses}),
            refused_a700=sum(1 for s in statuses if s == STATUS_OUT_OF_RESOURCES),
            spool_files=len(files),
            db_instances=count(db, select(func.count(Instance.id))),
        )
        out["ok"] = (out["refused_a700"] == instances and not files
                     and out["db_instances"] == 0)  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["ok"] = False
    finally:
        node.kill()
        db.dispose()
    return out


# -- the report --------------------------------------------------------------------------


@dataclass
class Report:
    trials: list[Trial] = field(default_factory=list)
    archive: dict[str, Any] | None = None
    db: dict[str, Any] | None = None
    disk: dict[str, Any] | None = None
    seconds: float = 0.0

    def totals(self) -> dict[str, int]:
        t = self.trials
        return {
            "trials": len(t),
            "in_phase": sum(x.hit for x in t),
            "acked": sum(x.acked for x in t),
            "lost": sum(x.lost for x in t),
            "results_expected": sum(x.results_expected for x in t),
            "results_present": sum(x.results_present for x in t),
            "results_missing": sum(x.results_missing for x in t),
            "duplicates": sum(x.duplicates for x in t),
            "spool_leftovers": sum(x.leftovers for x in t),
            "errors": sum(1 for x in t if x.error),
            "failed_trials": sum(1 for x in t if not x.ok),
        }

    def ok(self) -> bool:
        scenarios = (self.archive, self.db, self.disk)
        return all(x.ok for x in self.trials) and all(s is None or s.get("ok") for s in scenarios)

    def as_json(self) -> dict[str, Any]:
        return {
            "totals": self.totals(),
            "trials": [asdict(t) | {"ok": t.ok} for t in self.trials],
            "archive_down": self.archive,
            "db_outage": self.db,
            "disk_watermark": self.disk,
            "seconds": round(self.seconds, 1),
            "ok": self.ok(),
        }


def print_report(console: Console, report: Report) -> None:
    if report.trials:
        table = Table(title="SIGKILL trials (restart, then let the node finish)")
        for col in ("phase", "trials", "in phase", "acked", "lost", "results expected",
                    "present", "missing", "duplicates", "leftovers", "failed"):  # fmt: skip
            table.add_column(col, justify="right" if col != "phase" else "left")
        for phase in (*PHASES, None):
            ts = [t for t in report.trials if phase is None or t.phase == phase]
            if not ts:
                continue
            table.add_row(
                phase or "[b]all[/b]", str(len(ts)), str(sum(t.hit for t in ts)),
                str(sum(t.acked for t in ts)), str(sum(t.lost for t in ts)),
                str(sum(t.results_expected for t in ts)),
                str(sum(t.results_present for t in ts)),
                str(sum(t.results_missing for t in ts)), str(sum(t.duplicates for t in ts)),
                str(sum(t.leftovers for t in ts)),
                str(sum(1 for t in ts if not t.ok)),
            )  # fmt: skip
        console.print(table)
    table = Table(title="Scenarios")
    table.add_column("scenario")
    table.add_column("figures")
    table.add_column("ok", justify="center")
    for name, s in (("(a) archive down, then back", report.archive),
                    ("(b) PostgreSQL stopped", report.db),
                    ("(c) disk at the watermark", report.disk)):  # fmt: skip
        if s is not None:
            figures = ", ".join(f"{k}={v}" for k, v in s.items() if k != "ok")
            table.add_row(name, figures, "yes" if s.get("ok") else "[red]NO[/red]")
    console.print(table)
    console.print(f"total {report.seconds:.0f} s; all good: {report.ok()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=50, help="SIGKILL trials (0: none)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--phases", default=",".join(PHASES), help="phases to kill in")
    parser.add_argument("--archive-down-s", type=float, default=600.0)
    parser.add_argument("--retry-max-s", type=float, default=30.0,
                        help="the destination's backoff cap in scenario (a)")  # fmt: skip
    parser.add_argument("--db-outage-s", type=float, default=30.0)
    parser.add_argument("--only", default="kills,archive,db,disk")
    parser.add_argument("--json", type=Path, help="write the figures as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {sorted(unknown)}")
    console = Console(width=150)
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="dicom-node-chaos-"))
    report = Report()
    started = time.monotonic()
    orthanc: OrthancServer | None = None
    try:
        template: list[Path] = []
        if only & {"kills", "archive"}:
            from tests.support.chest_ct import write_chest_ct

            template = write_chest_ct(base / "template")
            orthanc = OrthancServer(base / "orthanc").start()
        if "kills" in only:
            for n in range(args.trials):
                phase = phases[n % len(phases)]
                assert orthanc is not None
                trial = kill_trial(n, phase, rng, orthanc, template, base, console)
                report.trials.append(trial)
                console.print(
                    f"trial {n:3d} {phase:<10} in-phase={trial.hit!s:<5} "
                    f"[{trial.state_at_kill}] acked={trial.acked} lost={trial.lost} "
                    f"results {trial.results_present}/{trial.results_expected} "
                    f"dups={trial.duplicates} left={trial.leftovers} jobs={trial.jobs} "
                    f"{trial.seconds:.0f}s " + ("ok" if trial.ok else "[red]FAILED[/red]")
                )
        if "archive" in only:
            assert orthanc is not None
            console.print(f"(a) archive down for {args.archive_down_s:.0f} s ...")
            report.archive = archive_down(
                orthanc, template, base, args.archive_down_s, args.retry_max_s
            )
            console.print(report.archive)
        if "db" in only:
            console.print(f"(b) PostgreSQL stopped for {args.db_outage_s:.0f} s ...")
            report.db = db_outage(base, args.db_outage_s)
            console.print(report.db)
        if "disk" in only:
            report.disk = disk_watermark(base)
            console.print(report.disk)
    finally:
        if orthanc is not None:
            orthanc.stop()
        report.seconds = time.monotonic() - started
        if not args.keep and report.ok():
            shutil.rmtree(base, ignore_errors=True)
        else:
            console.print(f"work folder kept: {base}")
    print_report(console, report)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz harness: malformed data sets and raw PDUs against a live node SCP.

Everything runs on 127.0.0.1: ``dicom-node serve`` in a subprocess (web off,
plain DICOM), the fuzz peers over raw sockets (:mod:`bench.wire`), and beside
them a well-behaved sender, pynetdicom, storing re-UID'd copies of real files
of the shared data set (nine transfer syntaxes) in a loop.

Families (:mod:`bench.fuzz_cases`; each case reproducible from ``--seed`` and
its family and number):

data sets, over a valid association (PS3.5 7, PS3.7 9.3.1):
  ``truncated``, ``wrong_vr_length``, ``deep_sequence`` (undefined-length
  nesting, up to 20,000 deep, terminated or not), ``uid_path`` (``../``, ``/``,
  NUL, empty ... in the Study/Series/SOP Instance UIDs; half of them from a
  peer with ``uid_policy = "warn"`` so that they are stored), ``charset`` (bad
  Specific Character Set, invalid bytes), ``pixel_lie`` (pixel data that lies
  about its size, bit depth, frames or encapsulation);
raw PDUs, each on a new connection (PS3.8 9.3):
  ``pdu_truncated``, ``pdu_oversized_length``, ``pdu_wrong_type``,
  ``pdu_interleaved_contexts``, ``pdu_abort_mid_dataset``, ``pdu_bitflip``.

Counted: cases tried, node crashes (the node process gone; it is restarted
and the run goes on), peak RSS of the node (``VmHWM``), the well-behaved
sender's instances (every one acknowledged must be stored byte for byte: the
SHA-256 of the data set bytes sent equals the database's and that of the
spool file's data set), malformed cases acknowledged but not stored, files a
hostile UID placed outside the spool, half-written files left behind, and the
outcome of the cases of each family (stored, refused with a status, aborted,
rejected, closed).

Usage::

    python -m bench.fuzz [--cases 10000] [--seed 1] [--workers 3] [--json PATH]
    python -m bench.fuzz --seed 1 --replay uid_path:17   # one case, verbose
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from bench import wire
from bench.fuzz_cases import (
    CONTEXTS,
    DATASET_FAMILIES,
    FAMILIES,
    DatasetCase,
    PduCase,
    make_case,
    plan,
)
from bench.live import DICOM_DATA, PostgresCluster, peak_rss_mb
from storage.db import Database
from storage.models import Instance
from tests.support.peers import NodeProcess, echoscu, free_port, sender_ae

WELL_BEHAVED_FILES = [
    *(f"dcm_qa_ts/siemens_trio_ax_asc_35sl/{n}.dcm" for n in range(1, 10)),
    "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm/I10",
    "pydicom/transfer_syntaxes/image_dfl.dcm",
    "pydicom/transfer_syntaxes/MR_small_RLE.dcm",
]
"""Real files, one of each transfer syntax the shared set has in quantity."""

NODE_SETTINGS = {
    "max_pdu": 65536,
    "max_associations": 32,
    "acse_timeout": 5,
    "dimse_timeout": 10,
    "network_timeout": 10,
}
PEERS = [
    {"ae_title": "FUZZ"},
    {"ae_title": "FUZZWARN", "uid_policy": "warn"},
    {"ae_title": "WELLBEHAVED"},
    {"ae_title": "ECHOSCU"},
]
SUCCESS_OR_WARNING = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}
ESCAPE_MARKERS = ("fuzz-escape", "fuzz-abs", "fuzz-shell", "authorized_keys")
"""Names some hostile UIDs would create if a path were ever built from them."""


def rss_mb(pid: int) -> float:
    """Resident set of *pid* now (``VmRSS``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fds_and_threads(pid: int) -> tuple[int, int]:
    """Open file descriptors and threads of *pid*: what a leaked connection would hold."""
    return len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task"))


# -- data set bytes of a DICOM file ----------------------------------------------------


def dataset_offset(raw: bytes) -> int:
    """Where the data set starts in a Part 10 file: after the 128-byte preamble, ``DICM``
    and the File Meta Information group, whose length (0002,0000) says how long it is
    (PS3.10 7.1)."""
    if raw[128:132] != b"DICM" or raw[136:138] != b"UL":
        raise ValueError("not a Part 10 file with a group length")
    return 144 + int.from_bytes(raw[140:144], "little")


def dataset_sha256(path: Path) -> str:
    import hashlib

    raw = path.read_bytes()
    return hashlib.sha256(raw[dataset_offset(raw) :]).hexdigest()


# -- the well-behaved sender ------------------------------------------------------------


def _same_length_uid(old: str, rng: random.Random) -> str:
    """A new UID of exactly ``len(old)`` characters under ``2.25`` (PS3.5 B.2)."""
    n = max(len(old) - 5, 1)
    digits = str(rng.randrange(1, 10)) + "".join(str(rng.randrange(10)) for _ in range(n - 1))
    return "2.25." + digits


def reuid_bytes(src: Path, rng: random.Random) -> tuple[bytes, str]:
    """*src* with its Study, Series and SOP Instance UIDs replaced by new ones of the same
    length, byte for byte (so the encoding, whatever its syntax, is untouched); the
    deflated file is rewritten with pydicom instead."""
    import pydicom
    from pydicom.uid import UID

    ds = pydicom.dcmread(src, stop_before_pixels=False)
    olds = [str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)]
    raw = src.read_bytes()
    news = [_same_length_uid(u, rng) for u in olds]
    body = raw[dataset_offset(raw) :]
    if all(u.encode() in body for u in olds):
        for old, new in zip(olds, news, strict=True):
            raw = raw.replace(old.encode(), new.encode())
        return raw, news[2]
    keywords = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    for keyword, new in zip(keywords, news, strict=True):
        setattr(ds, keyword, new)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(news[2])
    out = tempfile.SpooledTemporaryFile()
    ds.save_as(out, enforce_file_format=True)  # type: ignore[arg-type]
    out.seek(0)
    return out.read(), news[2]


@dataclass
class WellBehaved:
    """pynetdicom storing re-UID'd real files, one association per round, until stopped."""

    port: int
    folder: Path
    seed: int
    data: Path = DICOM_DATA
    sent: dict[str, str] = field(default_factory=dict)
    """SOP Instance UID -> SHA-256 of the data set bytes sent, for those answered Success"""
    refused: list[tuple[str, int | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rounds: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    assoc: Any = None
    """the association in use (pynetdicom's ``Association``)"""

    def interrupt(self) -> None:
        """Abort the association in use: the node it was with is gone (a crash), and a
        sender that waits for an answer from a dead peer waits out its whole timeout."""
        assoc = self.assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def run(self) -> None:
        import hashlib

        import pydicom
        import pynetdicom._config

        pynetdicom._config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes, as they are
        rng = random.Random(f"{self.seed}:well-behaved")
        templates = [self.data / p for p in WELL_BEHAVED_FILES]
        ae = sender_ae("WELLBEHAVED")
        # a peer killed mid-association can leave pynetdicom waiting out its timeout
        ae.dimse_timeout = ae.network_timeout = 60
        for path in templates:
            meta = pydicom.dcmread(path, stop_before_pixels=True)
            ae.add_requested_context(str(meta.SOPClassUID), [str(meta.file_meta.TransferSyntaxUID)])
        self.folder.mkdir(parents=True, exist_ok=True)
        while not self.stop.is_set():
            files: list[tuple[Path, str, str]] = []
            for n, template in enumerate(templates):
                raw, sop = reuid_bytes(template, rng)
                path = self.folder / f"{self.rounds}-{n}.dcm"
                path.write_bytes(raw)
                files.append((path, sop, hashlib.sha256(raw[dataset_offset(raw) :]).hexdigest()))
            try:
                assoc = self.assoc = ae.associate("127.0.0.1", self.port, ae_title="DICOM_NODE")
            except Exception as exc:  # noqa: BLE001 - counted, the loop goes on
                self.errors.append(f"associate: {exc}")
                time.sleep(0.5)
                continue
            if not assoc.is_established:
                self.errors.append("association not established")
                time.sleep(0.5)
                continue
            try:
                for path, sop, digest in files:
                    if not assoc.is_established:
                        self.errors.append("association lost")
                        break
                    rsp = assoc.send_c_store(path)
                    status = rsp.get("Status") if rsp else None
                    if status == 0x0000:
                        self.sent[sop] = digest
                    else:
                        self.refused.append((sop, status))
            except Exception as exc:  # noqa: BLE001 - the node may be gone (a crash)
                self.errors.append(f"send: {exc!r}")
            finally:
                if assoc.is_established:
                    assoc.release()
            for path, _, _ in files:
                path.unlink(missing_ok=True)
            self.rounds += 1


# -- the fuzz peers -------------------------------------------------------------------


@dataclass
class Outcome:
    family: str
    number: int
    variant: str
    outcome: str
    """``stored`` / ``refused 0xC...`` / ``aborted`` / ``rejected`` / ``closed`` / ``no answer``"""
    sop_instance: str | None = None
    acked: bool = False


class DatasetSender:
    """One worker's associations (one per calling AE title) for data set cases."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.assocs: dict[str, wire.Association] = {}

    def send(self, case: DatasetCase) -> Outcome:
        assoc = self.assocs.get(case.calling)
        if assoc is None:
            assoc = _retry(lambda: wire.Association.open(
                self.port, [CONTEXTS[0]], calling=case.calling))  # fmt: skip
            self.assocs[case.calling] = assoc
        kind, status = assoc.store(1, case.sop_class, case.sop_instance, case.data)
        # UI values are padded (PS3.5 6.2): the node, like pydicom, keeps the value unpadded
        sop = case.sop_instance.decode("utf-8", "replace").strip(" \x00")
        if kind == "status" and status is not None:
            ok = status in SUCCESS_OR_WARNING
            outcome = "stored" if ok else f"refused {status:#06x}"
            return Outcome(case.family, case.number, case.variant, outcome, sop, acked=ok)
        assoc.close()
        del self.assocs[case.calling]
        return Outcome(case.family, case.number, case.variant,
                       "aborted" if kind == "abort" else kind, sop)  # fmt: skip

    def close(self) -> None:
        for assoc in self.assocs.values():
            assoc.release()
        self.assocs.clear()


def _retry(open_: Any, tries: int = 60) -> Any:
    for attempt in range(tries):
        try:
            return open_()
        except (OSError, ConnectionError):
            if attempt == tries - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def send_pdu_case(port: int, case: PduCase) -> Outcome:
    """One raw case on a new connection: what came back, in order, until the node closed."""
    sock = _retry(lambda: wire.connect(port))
    seen: list[str] = []
    try:
        if case.associate:
            sock.sendall(wire.associate_rq(CONTEXTS, calling="FUZZ"))
            got = wire.recv_pdu(sock, 30)
            if got is None or got[0] != wire.A_ASSOCIATE_AC_TYPE:
                return Outcome(case.family, case.number, case.variant,
                               "association refused", case.sop_instance)  # fmt: skip
        try:
            sock.sendall(case.stream)
            if case.close == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                return Outcome(case.family, case.number, case.variant, "reset by us",
                               case.sop_instance)  # fmt: skip
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            seen.append("closed")
        while not seen or seen[-1] not in ("closed", "no answer"):
            got = wire.recv_pdu(sock, 20)
            if got is None:
                seen.append("closed")
                break
            seen.append(_describe(got))
            if len(seen) > 16:
                seen.append("no answer")
    finally:
        sock.close()
    acked = any(s.startswith("status 0x0000") for s in seen)
    answer = next((s for s in seen if s != "closed"), "closed")
    return Outcome(case.family, case.number, case.variant, answer, case.sop_instance, acked)


def _describe(got: tuple[int, bytes]) -> str:
    pdu_type, body = got
    if pdu_type == wire.A_ASSOCIATE_RJ_TYPE:
        return "rejected"
    if pdu_type == wire.A_ABORT:
        return "aborted"
    if pdu_type == wire.A_RELEASE_RP:
        return "released"
    if pdu_type == wire.P_DATA_TF and len(body) > 6:
        status = wire.response_status(body[6:])
        if status is None:
            return "data"
        return "status 0x0000" if status in SUCCESS_OR_WARNING else f"refused {status:#06x}"
    return f"pdu {pdu_type:#04x}"


# -- the run ----------------------------------------------------------------------------


@dataclass
class Report:
    seed: int
    database: str = "sqlite"
    cases: int = 0
    seconds: float = 0.0
    crashes: int = 0
    crash_cases: list[str] = field(default_factory=list)
    alive_and_echo: bool = False
    peak_rss_mb: float = 0.0
    rss_start_mb: float = 0.0
    """resident set of the node when it was started and had answered one C-ECHO"""
    fds_start: int = 0
    fds_end: int = 0
    threads_start: int = 0
    threads_end: int = 0
    well_behaved_sent: int = 0
    well_behaved_stored_identical: int = 0
    well_behaved_mismatch: list[str] = field(default_factory=list)
    well_behaved_refused: int = 0
    well_behaved_errors: int = 0
    acked_not_stored: list[str] = field(default_factory=list)
    refused_but_stored: list[str] = field(default_factory=list)
    """cases answered a failure status whose SOP Instance UID, unique in the run, is in
    the database all the same"""
    unanswered_but_stored: list[str] = field(default_factory=list)
    """cases whose connection ended before an answer and whose instance was stored"""
    harness_errors: list[str] = field(default_factory=list)
    outside_spool: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)
    tracebacks: int = 0
    by_family: dict[str, dict[str, int]] = field(default_factory=dict)
    stored_cases: dict[str, list[str]] = field(default_factory=dict)
    examples: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """up to three ``number: variant`` of each outcome of each family"""
    """the malformed cases the node stored, by family: ``number: variant``"""

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.seconds if self.seconds else 0.0

    def ok(self) -> bool:
        return (
            self.crashes == 0
            and self.alive_and_echo
            and self.well_behaved_sent > 0
            and self.well_behaved_stored_identical == self.well_behaved_sent
            and not self.acked_not_stored
            and not self.refused_but_stored
            and not self.outside_spool
            and not self.half_written
            and not self.harness_errors
        )

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["cases_per_s"] = round(self.cases_per_s, 1)
        out["ok"] = self.ok()
        return out


class Fuzzer:
    def __init__(
        self,
        base: Path,
        seed: int,
        workers: int,
        data: Path = DICOM_DATA,
        database_url: str | None = None,
    ) -> None:
        self.base = base
        self.seed = seed
        self.workers = workers
        self.data = data
        self.node = NodeProcess(
            base / "node",
            free_port(),
            extra={"node": NODE_SETTINGS, "peers": PEERS},
            database_url=database_url,
        )
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.in_flight: dict[int, str] = {}
        self.crash_cases: list[str] = []
        self.errors: list[str] = []
        self.done = threading.Event()
        self.well: WellBehaved | None = None

    # the node may die: the monitor notes which cases were in flight and restarts it
    def monitor(self) -> None:
        while not self.done.wait(0.2):
            proc = self.node.proc
            if proc is not None and proc.poll() is not None:
                with self.lock:
                    flying = ", ".join(sorted(self.in_flight.values()))
                self.crash_cases.append(f"exit {proc.returncode} during {flying or '?'}")
                for attempt in range(5):
                    try:
                        self.node.start()
                        break
                    except (RuntimeError, OSError) as exc:
                        self.errors.append(f"restart {attempt + 1}: {str(exc)[-300:]}")
                        time.sleep(1.0)

    def worker(self, n: int, work: queue.Queue[tuple[str, int]]) -> None:
        sender = DatasetSender(self.node.port)
        try:
            while True:
                try:
                    family, number = work.get_nowait()
                except queue.Empty:
                    return
                case = make_case(self.seed, family, number)
                with self.lock:
                    self.in_flight[n] = f"{family}:{number}"
                try:
                    if isinstance(case, DatasetCase):
                        out = sender.send(case)
                    else:
                        out = send_pdu_case(self.node.port, case)
                except Exception as exc:  # noqa: BLE001 - a peer error is an outcome
                    for assoc in sender.assocs.values():
                        assoc.close()
                    sender.assocs.clear()
                    out = Outcome(family, number, case.variant, f"error {type(exc).__name__}")
                    self.errors.append(f"{family}:{number}: {exc!r}")
                with self.lock:
                    self.in_flight.pop(n, None)
                    self.outcomes.append(out)
        finally:
            sender.close()

    def run(self, cases: int, families: tuple[str, ...], console: Console) -> Report:
        report = Report(self.seed, self.node.db_url.split(":", 1)[0].split("+")[0])
        self.node.start()
        assert self.node.proc is not None
        well = self.well = WellBehaved(
            self.node.port, self.base / "well-behaved", self.seed, self.data
        )
        work: queue.Queue[tuple[str, int]] = queue.Queue()
        for item in plan(cases, families):
            work.put(item)
        monitor = threading.Thread(target=self.monitor, daemon=True)
        sender = threading.Thread(target=well.run, daemon=True)
        threads = [
            threading.Thread(target=self.worker, args=(n, work), daemon=True)
            for n in range(self.workers)
        ]
        echoscu(self.node.port)
        report.rss_start_mb = round(rss_mb(self.node.proc.pid), 1)
        report.fds_start, report.threads_start = fds_and_threads(self.node.proc.pid)
        start = last_log = time.monotonic()
        monitor.start()
        sender.start()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                console.log(
                    f"{len(self.outcomes)}/{cases} cases, {well.rounds} well-behaved rounds"
                )
        report.seconds = time.monotonic() - start
        well.stop.set()
        sender.join(300)
        self.done.set()
        monitor.join(5)
        report.cases = len(self.outcomes)
        report.crash_cases = self.crash_cases
        report.crashes = len(self.crash_cases)
        report.harness_errors = self.errors
        proc = self.node.proc
        alive = proc is not None and proc.poll() is None
        report.alive_and_echo = alive and echoscu(self.node.port).returncode == 0
        if proc is not None and alive:
            report.peak_rss_mb = round(peak_rss_mb(proc.pid), 1)
            time.sleep(1.0)  # connections the last cases closed are let go
            report.fds_end, report.threads_end = fds_and_threads(proc.pid)
        self.check(report, well)
        self.node.terminate(60)
        report.tracebacks = self.node.log().count("Traceback")
        return report

    def check(self, report: Report, well: WellBehaved) -> None:
        db = Database(self.node.db_url)
        try:
            with db.session() as s:
                rows = {i.sop_instance_uid: (i.path, i.sha256) for i in s.scalars(select(Instance))}
        finally:
            db.dispose()
        spool = self.node.spool
        report.well_behaved_sent = len(well.sent)
        report.well_behaved_refused = len(well.refused)
        report.well_behaved_errors = len(well.errors)
        for sop, digest in well.sent.items():
            row = rows.get(sop)
            if row is None:
                report.well_behaved_mismatch.append(f"{sop}: not in the database")
            elif row[1] != digest:
                report.well_behaved_mismatch.append(f"{sop}: database sha256 differs")
            elif dataset_sha256(spool / row[0]) != digest:
                report.well_behaved_mismatch.append(f"{sop}: spool file differs")
            else:
                report.well_behaved_stored_identical += 1
        uses = Counter(out.sop_instance for out in self.outcomes)
        by_family: dict[str, Counter[str]] = defaultdict(Counter)
        examples: dict[str, list[str]] = defaultdict(list)
        seen: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
        for out in self.outcomes:
            stored = out.sop_instance is not None and out.sop_instance in rows
            if out.acked and not stored and out.family == "pdu_bitflip":
                stored = flipped_uid_stored(out.sop_instance, rows)
            label = out.outcome
            if out.family not in DATASET_FAMILIES and out.sop_instance is not None:
                label = "stored" if stored else label
            by_family[out.family][label] += 1
            if len(seen[out.family][label]) < 3:
                seen[out.family][label].append(f"{out.number}: {out.variant}")
            if out.acked and not stored:
                report.acked_not_stored.append(f"{out.family}:{out.number}")
            if stored and not out.acked and uses[out.sop_instance] == 1:
                case = f"{out.family}:{out.number} ({out.outcome})"
                if out.outcome.startswith("refused"):
                    report.refused_but_stored.append(case)
                else:  # durable before the answer was lost: the sender re-sends, no harm
                    report.unanswered_but_stored.append(case)
            if label == "stored":
                examples[out.family].append(f"{out.number}: {out.variant}")
        report.by_family = {f: dict(c.most_common()) for f, c in sorted(by_family.items())}
        report.stored_cases = dict(examples)
        report.examples = {f: dict(by_label) for f, by_label in sorted(seen.items())}
        root = spool.resolve()
        for sop, (rel, _) in rows.items():
            if not (spool / rel).resolve().is_relative_to(root):
                report.outside_spool.append(f"{sop!r} -> {rel}")
        for folder in {self.base, Path(tempfile.gettempdir()), Path.cwd(), Path("/")}:
            for name in os.listdir(folder):
                if any(m in name for m in ESCAPE_MARKERS):
                    report.outside_spool.append(str(folder / name))
        report.half_written = [
            str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file() and
            (p.suffix == ".part" or p.stat().st_size == 0)
        ]  # fmt: skip


def flipped_uid_stored(sop: str | None, rows: dict[str, Any], max_flips: int = 8) -> bool:
    """Whether the database holds a UID a few flipped characters away from *sop*: a bit
    flip may change the data set's SOP Instance UID (and leave the command without
    one), and then the node rightly stores it under the UID the data set names."""
    if not sop:
        return False
    return any(
        len(uid) == len(sop) and sum(a != b for a, b in zip(uid, sop, strict=True)) <= max_flips
        for uid in rows
    )


def print_report(console: Console, report: Report) -> None:
    title = f"Fuzz: {report.cases} malformed cases, seed {report.seed}, {report.database}"
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    rows = [
        ("cases tried", f"{report.cases}", "10,000"),
        ("cases per second", f"{report.cases_per_s:.1f}", ""),
        ("node crashes", f"{report.crashes}", "0"),
        ("node alive and answering C-ECHO at the end", "yes" if report.alive_and_echo else "NO",
         "yes"),
        ("peak RSS of the node (VmHWM)", f"{report.peak_rss_mb:.0f} MB",
         f"start {report.rss_start_mb:.0f} MB"),
        ("open files / threads of the node, start -> end",
         f"{report.fds_start} -> {report.fds_end} / {report.threads_start} -> {report.threads_end}",
         ""),
        ("well-behaved instances acknowledged", f"{report.well_behaved_sent}", ""),
        ("  stored byte-identical (database + spool)",
         f"{report.well_behaved_stored_identical}", f"{report.well_behaved_sent}"),
        ("  refused / association errors",
         f"{report.well_behaved_refused} / {report.well_behaved_errors}", "0 / 0"),
        ("malformed cases acknowledged but not stored", f"{len(report.acked_not_stored)}", "0"),
        ("malformed cases refused but stored", f"{len(report.refused_but_stored)}", "0"),
        ("cases cut before their answer, stored", f"{len(report.unanswered_but_stored)}", ""),
        ("files outside the spool", f"{len(report.outside_spool)}", "0"),
        ("half-written files in the spool", f"{len(report.half_written)}", "0"),
        ("tracebacks in the node's log", f"{report.tracebacks}", ""),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    console.print(table)
    fam = Table(title="Outcome of the malformed cases, by family")
    fam.add_column("family")
    fam.add_column("cases", justify="right")
    fam.add_column("stored", justify="right")
    fam.add_column("refused / aborted / rejected / closed")
    for family in FAMILIES:
        counts = report.by_family.get(family)
        if not counts:
            continue
        rest = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "stored")
        fam.add_row(family, str(sum(counts.values())), str(counts.get("stored", 0)), rest)
    console.print(fam)
    for family, stored in report.stored_cases.items():
        console.print(f"stored {family}, e.g.: " + "; ".join(stored[:3]))
    problems = ("crash_cases", "acked_not_stored", "refused_but_stored", "outside_spool",
                "half_written", "well_behaved_mismatch", "harness_errors")  # fmt: skip
    for problem in problems:
        items = getattr(report, problem)
        if items:
            console.print(f"[red]{problem}[/red]: {items[:10]}")


def replay(seed: int, spec: str, console: Console, database_url: str | None = None) -> int:
    """Send one case to a fresh node and print what happened, with the node's log."""
    family, number = spec.split(":")
    case = make_case(seed, family, int(number))
    with tempfile.TemporaryDirectory(prefix="dicom-node-fuzz-") as tmp:
        node = NodeProcess(Path(tmp) / "node", free_port(), database_url=database_url,
                           extra={"node": NODE_SETTINGS, "peers": PEERS})  # fmt: skip
        with node:
            if isinstance(case, DatasetCase):
                sender = DatasetSender(node.port)
                out = sender.send(case)
                sender.close()
            else:
                out = send_pdu_case(node.port, case)
            alive = node.proc is not None and node.proc.poll() is None
            console.print(out)
            console.print(f"node alive: {alive}")
        console.print(node.log()[-4000:])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3, help="fuzz peers at once")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="the node's database on a private PostgreSQL cluster (default: SQLite)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--replay", help="FAMILY:NUMBER: send this one case and show the log")
    parser.add_argument("--keep", action="store_true", help="keep the node's folder")
    args = parser.parse_args(argv)
    console = Console()
    families = tuple(f for f in args.families.split(",") if f)
    unknown = set(families) - set(FAMILIES)
    if unknown:
        parser.error(f"unknown families: {', '.join(sorted(unknown))}")
    base = Path(tempfile.mkdtemp(prefix="dicom-node-fuzz-"))
    cluster = PostgresCluster().init() if args.postgres else None
    try:
        if cluster is not None:
            cluster.start()
        url = cluster.url if cluster is not None else None
        if args.replay:
            return replay(args.seed, args.replay, console, url)
        fuzzer = Fuzzer(base, args.seed, args.workers, database_url=url)
        report = fuzzer.run(args.cases, families, console)
    finally:
        if cluster is not None:
            cluster.destroy()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print_report(console, report)
    if args.json:
        args.json.write_text(json.dumps(report.as_json(), indent=2))
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())

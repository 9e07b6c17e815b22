"""Live peers shared by the robustness harnesses (``bench.chaos``, ``bench.fuzz``).

Everything listens on 127.0.0.1 only.  The node is ``dicom-node serve`` in a
subprocess (``tests.support.peers.NodeProcess``) with the web interface off
and plain DICOM (PS3.8 upper layer over TCP); the archive is a private
Orthanc (``tests.support.orthanc.OrthancServer``); PostgreSQL, where asked
for, is a private cluster in a temporary folder on a free port, never the
machine's shared one.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from tests.support.peers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
DICOM_DATA = Path(
    os.environ.get("DICOM_TEST_DATA", ROOT / ".." / "shared" / "data" / "dicom")
).resolve()


def wait_until(
    what: str, check: Callable[[], Any], timeout_s: float = 120.0, poll_s: float = 0.1
) -> Any:
    """Poll *check* until it returns something truthy; raise ``TimeoutError`` naming *what*."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}


def dataset_offset(data: bytes) -> int:
    """Where the data set starts in a DICOM file's bytes: after the 128-byte preamble,
    ``DICM`` and the File Meta Information group 0002, always Explicit VR Little
    Endian (PS3.10 7.1).  0 when there is no preamble."""
    if data[128:132] != b"DICM":
        return 0
    pos = 132
    while pos + 8 <= len(data) and int.from_bytes(data[pos : pos + 2], "little") == 0x0002:
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return pos


def dataset_sha256(path: Path) -> str:
    """sha256 of a DICOM file's data set, its file meta left out: what the node
    records as ``instance.sha256`` (the bytes that came over the wire)."""
    data = path.read_bytes()
    return hashlib.sha256(data[dataset_offset(data) :]).hexdigest()


def peak_rss_mb(pid: int) -> float:
    """Peak resident set of *pid* (``VmHWM`` of ``/proc/<pid>/status``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reuid_series(template: list[Path], folder: Path) -> list[Path]:
    """Copies of the series *template* under *folder* with new Study, Series and SOP
    Instance UIDs (PS3.5 9: UIDs made under the ``pydicom`` root)."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out: list[Path] = []
    for n, src in enumerate(template):
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def parse_storescu_acks(output: str) -> list[str]:
    """File paths whose C-STORE got a Success response, from ``storescu -v`` output.

    ``storescu`` logs ``Sending file: <path>`` before each request and
    ``Received Store Response (Success)`` after it (PS3.7 9.1.1.1.9 status 0000).
    """
    acked: list[str] = []
    current: str | None = None
    for line in output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response" in line and current is not None:
            if "(Success)" in line:
                acked.append(current)
            current = None
    return acked


@dataclass
class PostgresCluster:
    """A private PostgreSQL cluster (``initdb`` + ``pg_ctl``) run as the ``postgres``
    OS user in a temporary folder, on a free loopback port."""

    port: int = field(default_factory=free_port)
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="chaos-pg-")))

    @staticmethod
    def bindir() -> Path:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        return Path(found[-1]).parent

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str, timeout_s: float = 120.0) -> None:
        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}")

    def init(self) -> PostgresCluster:
        shutil.chown(self.folder, "postgres") if os.geteuid() == 0 else None
        self._as_postgres(
            str(self.bindir() / "initdb"), "-D", str(self.folder / "data"), "-A", "trust",
            "-U", "postgres", "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        self._as_postgres(
            str(self.bindir() / "pg_ctl"), "-D", str(self.folder / "data"), "-l",
            str(self.folder / "pg.log"), "-o", opts, "-w", "start",
        )  # fmt: skip
        wait_for_port(self.port, 30)

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres(
            str(self.bindir() / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w",
            "stop",
        )  # fmt: skip

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except Exception:  # noqa: BLE001 - already stopped
            pass
        shutil.rmtree(self.folder, ignore_errors=True)

"""Receive benchmark: dicom-node against DCMTK storescp and Orthanc, same run.

Generates a 300-instance 512x512 CT series and a 2,000-instance 64x64 series,
sends each with DCMTK ``storescu`` (one association, and four in parallel) to
each receiver, and prints instances/s, MB/s and the ratio to each peer.
Every DCMTK tool and Orthanc run with ``TCP_NODELAY=1``.  Each receiver starts
fresh (empty storage) for every run, after ``sync`` (so that none pays for the
write-back of what ran before it); start-up is not timed; the median of
``--runs`` runs is reported.

Usage::

    python -m bench.receive [--runs 3] [--quick] [--only dicom-node,storescp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench.synthetic import write_ct_series

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def dicom_node(work: Path, fsync: bool = True, receivers: int = 1) -> Iterator[tuple[int, str]]:
    port = free_port()
    cfg = work / "config.toml"
    cfg.write_text(
        f"""[node]
ae_title = "DICOM_NODE"
host = "127.0.0.1"
port = {port}
receivers = {receivers}
[storage]
spool_dir = "{work / "spool"}"
database_url = "sqlite:///{work / "node.db"}"
min_free_disk_mb = 0
fsync = {"true" if fsync else "false"}
[worker]
concurrency = 0
[web]
enabled = false
[log]
level = "WARNING"
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_node.cli", "-c", str(cfg), "serve"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(work / "node.log").open("wb"),
    )
    try:
        wait_port(port)
        time.sleep(0.3)
        yield port, "DICOM_NODE"
    finally:
        stop(proc)


@contextmanager
def storescp(work: Path) -> Iterator[tuple[int, str]]:
    port = free_port()
    out = work / "out"
    out.mkdir()
    proc = subprocess.Popen(
        ["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield port, "STORESCP"
    finally:
        stop(proc)
        subprocess.run(["pkill", "-f", f"storescp --fork -aet STORESCP -od {out}"], check=False)


@contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, str]]:
    dicom_port, http_port = free_port(), free_port()
    cfg = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "UnknownSopClassAccepted": True,
        "Plugins": [],
        "ConcurrentJobs": 2,
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(cfg))
    proc = subprocess.Popen(
        ["Orthanc", str(path)],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=(work / "orthanc.log").open("wb"),
    )
    try:
        wait_port(dicom_port)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        yield dicom_port, "ORTHANC"
    finally:
        stop(proc)


# A sender that leaves Nagle's algorithm on, as many scanners do.
NAGLE_ENV = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}


def send(
    port: int,
    aet: str,
    files: list[Path],
    associations: int,
    env: dict[str, str] = ENV,
    extra_args: tuple[str, ...] = (),
) -> float:
    parts = [files[k::associations] for k in range(associations)]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", *extra_args, "-aec", aet, "127.0.0.1", str(port), *map(str, part)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for part in parts
    ]
    errors = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            errors.append(err.decode(errors="replace")[-500:])
    elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError("storescu failed:\n" + "\n".join(errors))
    return elapsed


def timed_send(
    factory: Callable[[Path], AbstractContextManager[tuple[int, str]]],
    work: Path,
    files: list[Path],
    associations: int,
    env: dict[str, str] = ENV,
) -> float:
    """Start a fresh receiver in *work* (a new folder), send *files* to it, stop it.

    Every run starts with nothing dirty in the page cache (``sync``), so that no
    receiver pays for writing back what the previous one wrote; start-up is not
    timed.  Received data stays: deleting thousands of files between runs would
    make the next receiver wait for the discards.
    """
    work.mkdir(parents=True)
    with factory(work) as (port, aet):
        os.sync()
        return send(port, aet, files, associations, env=env)


@dataclass
class Row:
    receiver: str
    series: str
    associations: int
    seconds: float
    instances: int
    megabytes: float
    fastest: float = 0.0
    slowest: float = 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="smaller series (smoke run)")
    ap.add_argument("--only", default="", help="comma-separated receivers to run")
    ap.add_argument("--series", default="ct,small", help="which series: ct, small or both")
    ap.add_argument(
        "--no-nagle-row", action="store_true", help="skip the sender-without-TCP_NODELAY table"
    )
    ap.add_argument(
        "--receivers",
        type=int,
        default=0,
        help="dicom-node receiver processes (default: config default)",
    )
    args = ap.parse_args(argv)
    for tool in ("storescu", "storescp", "Orthanc"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run scripts/install-system-deps.sh", file=sys.stderr)
            return 2

    console = Console(width=140)
    base = Path(tempfile.mkdtemp(prefix="bench-receive-"))
    n_ct, n_small = (60, 400) if args.quick else (300, 2000)
    wanted_series = {x.strip() for x in args.series.split(",")}
    series = {}
    if "ct" in wanted_series:
        series[f"{n_ct} CT 512x512"] = write_ct_series(base / "ct", n=n_ct, rows=512, cols=512)
    if "small" in wanted_series:
        series[f"{n_small} small 64x64"] = write_ct_series(
            base / "small", n=n_small, rows=64, cols=64
        )
    recv_kw = {"receivers": args.receivers} if args.receivers else {}
    receivers = {
        "dicom-node": lambda w: dicom_node(w, fsync=True, **recv_kw),
        "dicom-node (no fsync)": lambda w: dicom_node(w, fsync=False, **recv_kw),
        "dicom-node (2 processes)": lambda w: dicom_node(w, fsync=True, receivers=2),
        "dicom-node (4 processes)": lambda w: dicom_node(w, fsync=True, receivers=4),
        "storescp": storescp,
        "Orthanc": orthanc,
    }
    if args.only:
        wanted = {x.strip() for x in args.only.split(",")}
        receivers = {k: v for k, v in receivers.items() if k in wanted}
    rows: list[Row] = []
    for sname, files in series.items():
        mb = sum(f.stat().st_size for f in files) / 1e6
        for assoc in (1, 4):
            # One process serves one association.
            case = {k: v for k, v in receivers.items() if assoc > 1 or "processes" not in k}
            times: dict[str, list[float]] = {k: [] for k in case}
            # Runs interleaved (every receiver once, then again): a slower minute on a
            # shared machine slows every receiver, not one, and the ratios hold.
            for run in range(args.runs):
                for rname, factory in case.items():
                    work = base / "run" / f"{rname}-{sname}-{assoc}-{run}".replace(" ", "_")
                    t = timed_send(factory, work, files, assoc)
                    times[rname].append(t)
                    console.print(f"  {rname:24s} {sname:18s} x{assoc} run {run + 1}: {t:6.2f} s")
            for rname, ts in times.items():
                median = statistics.median(ts)
                rows.append(Row(rname, sname, assoc, median, len(files), mb, min(ts), max(ts)))

    table = Table(
        title=f"C-STORE receive, storescu sender, median of {args.runs} interleaved runs"
    )
    for col in (
        "series",
        "assoc",
        "receiver",
        "seconds",
        "spread",
        "inst/s",
        "MB/s",
        "vs storescp",
        "vs Orthanc",
    ):
        table.add_column(col, justify="right" if col not in ("series", "receiver") else "left")
    ref = {(r.receiver, r.series, r.associations): r.seconds for r in rows}
    for r in rows:
        scp = ref.get(("storescp", r.series, r.associations))
        orth = ref.get(("Orthanc", r.series, r.associations))
        table.add_row(
            r.series,
            str(r.associations),
            r.receiver,
            f"{r.seconds:.2f}",
            f"{r.fastest:.2f}-{r.slowest:.2f}",
            f"{r.instances / r.seconds:.0f}",
            f"{r.megabytes / r.seconds:.1f}",
            f"{scp / r.seconds:.2f}x" if scp else "-",
            f"{orth / r.seconds:.2f}x" if orth else "-",
        )
    console.print(table)
    console.print("ratio = peer seconds / receiver seconds (above 1x: faster than the peer)")
    if not args.no_nagle_row:
        nagle_table(console, base, {k: v for k, v in receivers.items() if "(" not in k})
    shutil.rmtree(base, ignore_errors=True)
    return 0


def nagle_table(console: Console, base: Path, receivers: dict[str, object]) -> None:
    """300 small instances from a storescu that leaves Nagle on (no TCP_NODELAY).

    Receivers that wait for the sender's delayed ACK stall on every instance;
    dicom-node re-arms TCP_QUICKACK before each read.
    """
    files = write_ct_series(base / "nagle", n=300, rows=64, cols=64)
    table = Table(title="300 small instances, sender WITHOUT TCP_NODELAY, one association")
    for col in ("receiver", "seconds", "inst/s"):
        table.add_column(col, justify="left" if col == "receiver" else "right")
    for rname, factory in receivers.items():
        work = base / "run" / f"nagle-{rname}".replace(" ", "_")
        seconds = timed_send(factory, work, files, 1, env=NAGLE_ENV)  # type: ignore[arg-type]
        table.add_row(rname, f"{seconds:.2f}", f"{len(files) / seconds:.0f}")
        console.print(f"  {rname:22s} nagle sender: {seconds:6.2f} s")
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())

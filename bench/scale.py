"""Scale-out benchmark: receiver processes and Celery workers, peers in the same run.

1. **Receive.**  A 300-instance 512x512 CT series and a 2,000-instance 64x64
   series are sent by 4 and by 8 parallel DCMTK ``storescu`` processes (each
   one association with its share of the files) to dicom-node with
   ``[node] receivers`` = 1, 2 and 4 (processes accepting from the node's
   listening sockets), to DCMTK ``storescp --fork`` and to Orthanc.  Every DCMTK
   tool and Orthanc run with ``TCP_NODELAY=1``; each run starts a fresh
   receiver after ``sync`` (start-up not timed, helpers of
   :mod:`bench.receive`); the runs of all receivers are interleaved and the
   median of ``--runs`` is reported.  A second table shows how the kernel
   spreads connections over the processes: raw TCP connections are opened to
   a node with ``receivers`` = 2 and 4, and ``ss`` says which process
   accepted each.
2. **Jobs.**  ``serve --role receiver,collector,sender`` with ``[worker]
   executor = "celery"`` (Redis, a queue of the run's own) and 1, then 2
   ``dicom-node worker --pool solo`` processes; a fresh PostgreSQL database
   per measurement (dropped afterwards; SQLite when no server answers).  K
   synthetic 40-slice chest CTs are pushed at once, routed to ``ct-lungs`` on
   the CPU, results to a folder.  Timed from the first push to the last job's
   success; the worker window (first job started to last job finished) is
   shown beside it.  Each worker loads the model once, inside the timed
   window.
3. A sizing paragraph computed from the per-process figures.

Usage::

    python -m bench.scale [--runs 3] [--quick] [--parts receive,spread,jobs]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.receive import (
    ROOT,
    Row,
    dicom_node,
    free_port,
    orthanc,
    send,
    stop,
    storescp,
    timed_send,
    wait_port,
)
from bench.synthetic import write_ct_series

RECEIVER_COUNTS = (1, 2, 4)
ASSOCIATIONS = (4, 8)
WORKER_COUNTS = (1, 2)
BROKER_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
TARGET_INSTANCES_S = 500.0
TARGET_STUDIES_MIN = 10.0
GPU_SPEEDUP = 10.0
"""Assumed speed-up of the network stage on a GPU (not measured here)."""
NETWORK_STAGES = ("infer", "inference")

Factory = Callable[[Path], AbstractContextManager[tuple[int, str]]]


def node_label(n: int) -> str:
    return f"dicom-node, {n} receiver{'s' if n > 1 else ''}"


# -- 1. receive -------------------------------------------------------------------


def receive_rows(
    console: Console, base: Path, series: dict[str, list[Path]], runs: int
) -> list[Row]:
    receivers: dict[str, Factory] = {
        node_label(n): partial(dicom_node, fsync=True, receivers=n) for n in RECEIVER_COUNTS
    }
    receivers["storescp --fork"] = storescp
    receivers["Orthanc"] = orthanc
    rows: list[Row] = []
    for sname, files in series.items():
        mb = sum(f.stat().st_size for f in files) / 1e6
        for assoc in ASSOCIATIONS:
            times: dict[str, list[float]] = {r: [] for r in receivers}
            # Interleaved: a burst of load from elsewhere hits every receiver alike.
            for run in range(runs):
                for rname, factory in receivers.items():
                    slug = re.sub(r"[^A-Za-z0-9]+", "_", f"{rname}-{sname}-{assoc}-{run}")
                    times[rname].append(timed_send(factory, base / "run" / slug, files, assoc))
            for rname, ts in times.items():
                t = statistics.median(ts)
                rows.append(Row(rname, sname, assoc, t, len(files), mb))
                console.print(f"  {rname:26s} {sname:18s} x{assoc}: {t:6.2f} s")
    return rows


def receive_table(rows: list[Row], runs: int) -> Table:
    table = Table(title=f"C-STORE receive, parallel storescu senders, median of {runs} runs")
    cols = ("series", "assoc", "receiver", "seconds", "inst/s", "MB/s", "vs 1 receiver",
            "vs storescp", "vs Orthanc")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="left" if col in ("series", "receiver") else "right")
    ref = {(r.receiver, r.series, r.associations): r.seconds for r in rows}
    for r in rows:
        one = ref.get((node_label(1), r.series, r.associations))
        scp = ref.get(("storescp --fork", r.series, r.associations))
        orth = ref.get(("Orthanc", r.series, r.associations))
        is_node = r.receiver.startswith("dicom-node")
        table.add_row(
            r.series,
            str(r.associations),
            r.receiver,
            f"{r.seconds:.2f}",
            f"{r.instances / r.seconds:.0f}",
            f"{r.megabytes / r.seconds:.1f}",
            f"{one / r.seconds:.2f}x" if one and is_node else "-",
            f"{scp / r.seconds:.2f}x" if scp else "-",
            f"{orth / r.seconds:.2f}x" if orth else "-",
        )
    return table


def accepted_by(port: int) -> Counter[int]:
    """Established server-side sockets on *port*, counted per owning process."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout  # fmt: skip
    pids: Counter[int] = Counter()
    for line in out.splitlines():
        m = re.search(r"pid=(\d+)", line)
        if m:
            pids[int(m.group(1))] += 1
    return pids


def spread(base: Path, receivers: int, connections: int) -> list[int]:
    """Connections each listener accepted, most first (zeros for idle listeners)."""
    work = base / "spread" / str(receivers)
    work.mkdir(parents=True)
    with dicom_node(work, receivers=receivers) as (port, _):
        socks = []
        try:
            for _ in range(connections):
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            deadline = time.monotonic() + 20
            counts = accepted_by(port)
            while sum(counts.values()) < connections and time.monotonic() < deadline:
                time.sleep(0.1)
                counts = accepted_by(port)
        finally:
            for s in socks:
                s.close()
    per = sorted(counts.values(), reverse=True)
    return per + [0] * max(0, receivers - len(per))


# -- 2. jobs ----------------------------------------------------------------------


@dataclass
class JobRun:
    workers: int
    jobs: int
    seconds: float
    """First push to the last job's success."""
    window: float
    """First job started to last job finished."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage, summed over the jobs (``wait``: in the queue)."""
    results: int = 0


@contextmanager
def job_database(kind: str, work: Path) -> Iterator[str]:
    """A fresh database: on the PostgreSQL server when *kind* is postgres, dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{work / 'node.db'}"
        return
    from sqlalchemy import create_engine, text

    admin = create_engine(
        PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://", 1),
        isolation_level="AUTOCOMMIT",
    )
    name = f"dicom_node_bench_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield f"{PG_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            return True
    except OSError:
        return False


def job_config(work: Path, port: int, db_url: str, queue: str, quiet: float) -> Path:
    cfg = work / "config.toml"
    cfg.write_text(
        f"""[node]
ae_title = "DICOM_NODE"
host = "127.0.0.1"
port = {port}
[storage]
spool_dir = "{work / "spool"}"
results_dir = "{work / "results"}"
database_url = "{db_url}"
min_free_disk_mb = 0
[worker]
executor = "celery"
concurrency = 0
device = "cpu"
poll_interval_s = 0.2
[celery]
broker_url = "{BROKER_URL}"
default_queue = "{queue}"
[web]
enabled = false
[log]
level = "INFO"

[[destinations]]
name = "outbox"
type = "folder"
path = "{work / "outbox"}"

[[rules]]
name = "ct-chest"
match = {{ Modality = "CT" }}
pipelines = ["ct-lungs"]
destinations = ["outbox"]
quiet_period_s = {quiet}
outputs = ["seg", "sr"]
"""
    )
    return cfg


def start(cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "-c", str(cfg), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_until(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def delete_queue(cfg: Path) -> None:
    from dicom_node.config import load_settings
    from dicom_node.work.celery_app import make_app

    settings = load_settings(cfg)
    app = make_app(settings)
    with app.connection_for_write() as conn:
        conn.default_channel.queue_delete(settings.celery.default_queue)


def job_throughput(
    base: Path, workers: int, studies: list[list[Path]], db_kind: str, quiet: float
) -> JobRun:
    from sqlalchemy import select

    from storage.db import Database
    from storage.models import Delivery, Job

    work = base / f"jobs-{workers}"
    work.mkdir(parents=True)
    queue = f"bench-{uuid.uuid4().hex[:10]}"
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    db: Database | None = None
    with job_database(db_kind, work) as db_url:
        cfg = job_config(work, port, db_url, queue, quiet)
        try:
            logs.append(work / "serve.log")
            procs.append(start(cfg, logs[-1], "serve", "--role", "receiver,collector,sender"))
            wait_port(port, timeout=120)
            for k in range(workers):
                logs.append(work / f"worker-{k}.log")
                procs.append(start(cfg, logs[-1], "worker", "--pool", "solo"))

            def alive() -> None:
                for p, log in zip(procs, logs, strict=True):
                    if p.poll() is not None:
                        tail = log.read_text(errors="replace")[-3000:]
                        raise RuntimeError(f"{log.name}: exited with {p.returncode}\n{tail}")

            def ready(log: Path) -> bool:
                alive()
                return " ready." in log.read_text(errors="replace")

            for log in logs[1:]:
                wait_until(f"{log.name} ready", partial(ready, log), 180)
            db = Database(db_url)

            def done() -> bool:
                alive()
                with db.engine.connect() as conn:
                    jobs = conn.execute(select(Job.status, Job.error)).all()
                failed = [j.error for j in jobs if j.status == "failed"]
                if failed:
                    raise RuntimeError(f"job failed: {failed[0]}")
                return len(jobs) == len(studies) and all(j.status == "succeeded" for j in jobs)

            t0 = datetime.now(timezone.utc)
            with ThreadPoolExecutor(len(studies)) as pool:
                list(pool.map(lambda files: send(port, "DICOM_NODE", files, 1), studies))
            wait_until(f"{len(studies)} jobs to succeed", done, 120 + 90 * len(studies))
            with db.engine.connect() as conn:
                rows = conn.execute(select(Job.started_at, Job.finished_at, Job.timings)).all()
            started = min(_utc(r.started_at) for r in rows)
            finished = max(_utc(r.finished_at) for r in rows)
            stages: dict[str, list[float]] = {}
            for r in rows:
                for stage, seconds in (r.timings or {}).items():
                    stages.setdefault(stage, []).append(float(seconds))

            def delivered() -> int:
                alive()
                with db.engine.connect() as conn:
                    ds = conn.execute(select(Delivery.status)).scalars().all()
                return len(ds) if ds and all(s == "sent" for s in ds) else 0

            results = wait_until("the results in the folder", delivered, 120)
            return JobRun(
                workers=workers,
                jobs=len(rows),
                seconds=(finished - t0).total_seconds(),
                window=(finished - started).total_seconds(),
                timings={k: sum(v) for k, v in stages.items()},
                results=results,
            )
        finally:
            for p in reversed(procs):
                stop(p)
            if db is not None:
                db.dispose()
            try:
                delete_queue(cfg)
            except Exception:  # noqa: BLE001 - the queue may never have been declared
                pass


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def job_table(runs: list[JobRun], study: str, db_kind: str) -> Table:
    table = Table(
        title=f"Jobs: {runs[0].jobs} x {study} pushed at once, ct-lungs on the CPU, "
        f"Celery on Redis, {db_kind}"
    )
    cols = ("workers", "jobs", "first push -> all succeeded (s)", "jobs/min", "vs 1 worker",
            "worker window (s)", "jobs/min in window", "results sent")  # fmt: skip
    for col in cols:
        table.add_column(col, justify="right")
    one = next((r for r in runs if r.workers == 1), None)
    for r in runs:
        table.add_row(
            str(r.workers),
            str(r.jobs),
            f"{r.seconds:.1f}",
            f"{60 * r.jobs / r.seconds:.1f}",
            f"{one.seconds / r.seconds:.2f}x" if one else "-",
            f"{r.window:.1f}",
            f"{60 * r.jobs / r.window:.1f}",
            str(r.results),
        )
    return table


def stage_table(runs: list[JobRun]) -> Table:
    table = Table(title="Seconds per job and stage (mean over the jobs; wait: in the queue)")
    stages = sorted({s for r in runs for s in r.timings})
    table.add_column("workers", justify="right")
    for s in stages:
        table.add_column(s, justify="right")
    for r in runs:
        table.add_row(str(r.workers), *(f"{r.timings.get(s, 0.0) / r.jobs:.2f}" for s in stages))
    return table


# -- 3. sizing --------------------------------------------------------------------


def sizing(rows: list[Row], jobs: list[JobRun]) -> str:
    parts: list[str] = []
    by = {(r.receiver, r.series, r.associations): r for r in rows}
    series = list(dict.fromkeys(r.series for r in rows))
    if series:
        figures = []
        for s in series:
            one = [by[k] for k in by if k[0] == node_label(1) and k[1] == s]
            best = max(one, key=lambda r: r.instances / r.seconds)
            rate = best.instances / best.seconds
            need = math.ceil(TARGET_INSTANCES_S / rate)
            mb_s = TARGET_INSTANCES_S * best.megabytes / best.instances
            top = max(
                (by[k] for k in by if k[0].startswith("dicom-node") and k[1] == s),
                key=lambda r: r.instances / r.seconds,
            )
            figures.append(
                f"{s}: {rate:.0f} inst/s per receiver process ({best.associations} "
                f"associations), so {need} process(es) for {TARGET_INSTANCES_S:.0f} inst/s "
                f"({mb_s:.0f} MB/s of flushed writes); best here {top.instances / top.seconds:.0f}"
                f" inst/s with {top.receiver.split(', ')[1]}"
            )
        parts.append(
            "Receivers -- "
            + "; ".join(figures)
            + ". Assumes one free core per receiver process, linear scaling and a spool disk"
            " that keeps up with one syncfs per group commit; on this machine the processes"
            " share 2 cores with the senders, so the N-receiver ratios above are a floor."
        )
    one_w = next((j for j in jobs if j.workers == 1), None)
    if one_w is not None:
        # One worker runs its jobs one after the other: its window less the one model
        # load is the warm time per job.
        per_job = (one_w.window - one_w.timings.get("load", 0.0)) / one_w.jobs
        per_min = 60 / per_job
        cpu_need = math.ceil(TARGET_STUDIES_MIN / per_min)
        net = sum(one_w.timings.get(s, 0.0) for s in NETWORK_STAGES) / one_w.jobs
        gpu_job = per_job - net + net / GPU_SPEEDUP
        gpu_need = math.ceil(TARGET_STUDIES_MIN * gpu_job / 60)
        two = next((j for j in jobs if j.workers == 2), None)
        ratio = f"; 2 workers here: {one_w.seconds / two.seconds:.2f}x" if two else ""
        parts.append(
            f"Workers -- one CPU worker process runs a ct-lungs job in {per_job:.1f} s "
            f"once its model is loaded ({per_min:.1f} jobs/min{ratio}), so {cpu_need} CPU "
            f"worker(s) "
            f"with a core each for {TARGET_STUDIES_MIN:.0f} studies/min. Of that, "
            f"{net:.2f} s is the network; assuming a GPU runs it {GPU_SPEEDUP:.0f}x faster "
            f"(not measured here) and the rest (read, pre/postprocess, writing SEG + SR) "
            f"stays on the CPU, a GPU worker takes {gpu_job:.1f} s per job and "
            f"{gpu_need} GPU worker(s) (one per GPU) suffice. These studies are 40 slices of "
            f"256x256; a 300-slice 512x512 CT takes longer in every stage."
        )
    return "\n\n".join(parts)


# -- main -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="receive runs per configuration")
    ap.add_argument("--quick", action="store_true", help="small series and 2 studies (smoke)")
    ap.add_argument("--parts", default="receive,spread,jobs", help="which parts to run")
    ap.add_argument("--studies", type=int, default=0, help="studies per job run (default 6)")
    ap.add_argument(
        "--database", choices=("auto", "postgres", "sqlite"), default="auto",
        help="database of the job runs (auto: PostgreSQL when it answers)",
    )  # fmt: skip
    ap.add_argument("--note", default="", help="printed with the results (e.g. the machine)")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    for tool in ("storescu", "storescp", "Orthanc", "ss"):
        if shutil.which(tool) is None:
            print(f"missing {tool}: run scripts/install-system-deps.sh", file=sys.stderr)
            return 2

    console = Console(width=160)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[Row] = []
    jobs: list[JobRun] = []
    try:
        if "receive" in parts:
            n_ct, n_small = (60, 400) if args.quick else (300, 2000)
            series = {
                f"{n_ct} CT 512x512": write_ct_series(base / "ct", n=n_ct, rows=512, cols=512),
                f"{n_small} small 64x64": write_ct_series(
                    base / "small", n=n_small, rows=64, cols=64
                ),
            }
            rows = receive_rows(console, base, series, args.runs)
            console.print(receive_table(rows, args.runs))
            console.print(
                "ratio = other seconds / this receiver's seconds (above 1x: this one is faster);"
                " dicom-node acknowledges flushed data, storescp and Orthanc do not flush"
            )
        if "spread" in parts:
            table = Table(title="Connections accepted per receiver process (one listen queue)")
            for col in ("receivers", "connections", "per process"):
                table.add_column(col, justify="right")
            for n in RECEIVER_COUNTS[1:]:
                per = spread(base, n, 8 * n)
                table.add_row(str(n), str(8 * n), " / ".join(map(str, per)))
            console.print(table)
        if "jobs" in parts:
            from tests.support.chest_ct import write_chest_ct

            k = args.studies or (2 if args.quick else 6)
            studies = [write_chest_ct(base / f"chest{i}", seed=20260 + i) for i in range(k)]
            db_kind = args.database
            if db_kind == "auto":
                db_kind = "postgres" if postgres_reachable() else "sqlite"
            quiet = 1.0 if args.quick else 2.0
            for w in WORKER_COUNTS:
                run = job_throughput(base, w, studies, db_kind, quiet)
                jobs.append(run)
                console.print(f"  {w} worker(s): {run.jobs} jobs in {run.seconds:.1f} s")
            db_name = "PostgreSQL" if db_kind == "postgres" else "SQLite"
            console.print(job_table(jobs, "40-slice chest CT", db_name))
            console.print(stage_table(jobs))
        if rows or jobs:
            console.print("\n[bold]Sizing[/bold]\n" + sizing(rows, jobs))
        notes = [
            f"date {time.strftime('%Y-%m-%d')}",
            f"{os.cpu_count()} CPU cores",
            f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after",
            f"total {time.monotonic() - started:.0f} s",
            "command: "
            + shlex.join(
                ["python", "-m", "bench.scale", *(sys.argv[1:] if argv is None else argv)]
            ),
        ]
        if args.note:
            notes.insert(0, args.note)
        console.print("\nnotes: " + "; ".join(notes))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

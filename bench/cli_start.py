"""How fast ``dicom-node`` starts: the command a container health check runs every 30 s.

Each row is a fresh process, timed wall clock from start to exit (median,
min and max over ``--runs``, the rows taking turns so that load hits them
alike), against one DCMTK ``storescp`` on loopback:

* ``dicom-node --help``: the interpreter, click and the command table;
* ``dicom-node echo HOST:PORT:AET`` with a minimal configuration (one
  ``[node]`` table), and with ``--config`` (default: the repository's ``config.toml``,
  with its destinations and rules, as the container's health check reads
  its own);
* DCMTK's ``echoscu`` to the same ``storescp``: what a C-ECHO costs a native
  tool, the floor the ``x echoscu`` column compares with.

``imports s`` is the import time ``python -X importtime`` reports for one
more run of the row (the sum of its top-level imports).

Usage::

    python -m bench.cli_start [--runs 10] [--config config.toml] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[1]
AE_TITLE = "BENCH_ARCHIVE"


@dataclass
class Row:
    """One command and its timings."""

    name: str
    argv: list[str]
    python: bool
    """A Python process (``-X importtime`` applies)."""
    seconds: list[float] = field(default_factory=list)
    import_s: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def dcmtk_tool(name: str) -> str:
    """DCMTK's *name* on PATH, not the like-named script pynetdicom puts into the venv."""
    venv_bin = (Path(sys.prefix) / "bin").resolve()
    search = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep)
        if p and Path(p).resolve() != venv_bin
    )  # fmt: skip
    found = shutil.which(name, path=search)
    if found is None:
        sys.exit(f"{name} (DCMTK) not found on PATH")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"storescp exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"storescp does not listen on {port}")


def environment() -> dict[str, str]:
    """Ours without ``DICOM_NODE_*`` settings; ``TCP_NODELAY=1`` for DCMTK."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env["TCP_NODELAY"] = "1"
    return env


def dicom_node() -> list[str]:
    """The ``dicom-node`` script next to this interpreter (as installed), else ``-m``."""
    script = Path(sys.executable).parent / "dicom-node"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dicom_node.cli"]


def run_once(row: Row, env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(row.argv, env=env, cwd=cwd, capture_output=True, timeout=120)
    took = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(
            f"{row.name}: exit {done.returncode}\n{done.stdout.decode(errors='replace')}"
            f"{done.stderr.decode(errors='replace')}"
        )
    return took


def import_seconds(row: Row, env: dict[str, str], cwd: Path) -> float:
    """The sum of the top-level imports ``-X importtime`` reports for one run."""
    args = row.argv[len(dicom_node()) :]
    argv = [sys.executable, "-X", "importtime", "-m", "dicom_node.cli", *args]
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    total_us = 0
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _self, cumulative, name = line[len("import time:") :].split("|")
        if cumulative.strip().isdigit() and not name.startswith("  "):  # top level only
            total_us += int(cumulative)
    return total_us / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs of each row")
    parser.add_argument(
        "--config",
        type=Path,
        default=ROOT / "config.toml",
        help="the configuration of the second echo row",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    storescp, echoscu = dcmtk_tool("storescp"), dcmtk_tool("echoscu")
    env = environment()
    port = free_port()
    peer = f"127.0.0.1:{port}:{AE_TITLE}"
    node = dicom_node()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        plain = work / "plain.toml"
        plain.write_text('[node]\nae_title = "BENCH_SCU"\n')
        rows = [
            Row("dicom-node --help", [*node, "--help"], python=True),
            Row("dicom-node echo (minimal config)", [*node, "-c", str(plain), "echo", peer],
                python=True),
            Row(f"dicom-node echo (-c {args.config.name})",
                [*node, "-c", str(args.config.resolve()), "echo", peer], python=True),
            Row("echoscu (DCMTK)", [echoscu, "-aet", "BENCH_SCU", "-aec", AE_TITLE, "127.0.0.1",
                                    str(port)], python=False),
        ]  # fmt: skip
        with (work / "storescp.log").open("wb") as log:
            scp = subprocess.Popen(
                [storescp, "-aet", AE_TITLE, "-od", str(work), str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(port, scp)
            for row in rows:  # warm the file cache; not timed
                run_once(row, env, work)
            for _ in range(args.runs):
                for row in rows:
                    row.seconds.append(run_once(row, env, work))
            for row in rows:
                if row.python:
                    row.import_s = import_seconds(row, env, work)
        finally:
            scp.terminate()
            scp.wait(10)
    floor = rows[-1].median
    table = Table(title=f"dicom-node start, {args.runs} runs each (wall clock, s)")
    for column in ("command", "median s", "min s", "max s", "imports s", "x echoscu"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for row in rows:
        table.add_row(
            row.name,
            f"{row.median:.3f}",
            f"{min(row.seconds):.3f}",
            f"{max(row.seconds):.3f}",
            "" if row.import_s is None else f"{row.import_s:.3f}",
            f"{row.median / floor:.1f}",
        )
    Console(width=max(100, shutil.get_terminal_size().columns)).print(table)
    if args.json is not None:
        args.json.write_text(
            json.dumps([{**asdict(r), "median": r.median} for r in rows], indent=2) + "\n"
        )


if __name__ == "__main__":
    main()

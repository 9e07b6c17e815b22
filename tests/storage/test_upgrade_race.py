"""Processes that start together upgrade the schema one after the other (PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from storage.db import Database

ROOT = Path(__file__).resolve().parents[2]


def test_simultaneous_upgrades_of_an_empty_database_all_succeed(postgres_url: str) -> None:
    url = postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)
    # Each process connects, then all upgrade at the same moment (without the lock,
    # three of four fail on PostgreSQL's catalog: duplicate key in pg_type).
    code = (
        "import sys, time; from storage.db import Database; db = Database(sys.argv[1]); "
        "db.engine.connect().close(); "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); db.upgrade()"
    )
    start = time.time() + 8
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, url, str(start)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    db = Database(url)
    try:
        assert db.current_revision() == db.head_revision()
    finally:
        db.dispose()

"""A fixed slice of the chaos harness (``python -m bench.chaos``), with real peers.

Three SIGKILL trials at fixed phases (during a storescu send, while the
result files are written, while a result is being sent to Orthanc), each
followed by a restart: no acknowledged instance lost, every result in Orthanc
once.  Then PostgreSQL (a private cluster) stopped for a few seconds: no
C-STORE Success while it is down, Success again by itself after; and the disk
at the watermark: 0xA700 and nothing half-written (PS3.4 B.2.3).
"""

from __future__ import annotations

import glob
import random
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from bench import chaos
from tests.conftest import IN_CI
from tests.support.chest_ct import write_chest_ct
from tests.support.orthanc import OrthancServer

pytestmark = [pytest.mark.network, pytest.mark.timeout(420)]


@pytest.mark.parametrize("phase", ["receive", "results", "sending"])
def test_sigkill_then_restart_loses_nothing(
    phase: str, orthanc_server: OrthancServer, tmp_path: Path
) -> None:
    template = write_chest_ct(tmp_path / "template")
    rng = random.Random(f"chaos-slice-{phase}")
    trial = chaos.kill_trial(0, phase, rng, orthanc_server, template, tmp_path, Console())
    assert not trial.error, trial.error
    assert trial.hit, f"the kill missed the {phase} phase: {trial.state_at_kill}"
    assert trial.acked == len(template)
    assert trial.lost == 0
    # SEG + SR + the secondary captures, each in Orthanc exactly once
    assert trial.results_expected >= 3
    assert trial.results_present == trial.results_expected
    assert trial.duplicates == 0
    assert trial.leftovers == 0, "files in the spool that no database row names"
    assert trial.ok


def _postgres_available() -> bool:
    return (
        bool(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")) and shutil.which("runuser") is not None
    )


def test_database_outage_answers_failure_then_recovers(tmp_path: Path) -> None:
    if not _postgres_available():
        if IN_CI:
            pytest.fail("PostgreSQL server binaries are required under CI")
        pytest.skip("no PostgreSQL server binaries")
    out = chaos.db_outage(tmp_path, outage_s=4.0)
    assert "error" not in out, out
    assert out["during"] >= 3
    assert out["success_during"] == 0, out
    assert out["recovered_after_s"] is not None
    assert out["lost"] == 0 and out["node_alive"]
    assert out["spool_leftovers"] == 0
    assert out["ok"]


def test_disk_at_the_watermark_refuses_with_a700(tmp_path: Path) -> None:
    out = chaos.disk_watermark(tmp_path, instances=3)
    assert "error" not in out, out
    assert out["statuses"] == ["0xA700"]
    assert out["spool_files"] == 0 and out["db_instances"] == 0
    assert out["ok"]

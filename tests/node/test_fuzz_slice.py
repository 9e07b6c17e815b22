"""A fixed slice of the fuzz harness (``bench.fuzz``): 300 malformed cases of each of
its twelve families, seed 20261205, against a live node on loopback, while a
well-behaved pynetdicom sender stores real files of the shared data beside them.

The whole slice runs once (one node, about a minute); each test checks one
promise on its report.  ``python -m bench.fuzz --seed 20261205 --replay FAMILY:N``
replays any single case with the node's log.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from bench.fuzz import Fuzzer, Report
from bench.fuzz_cases import DATASET_FAMILIES, FAMILIES, PDU_FAMILIES, make_case
from bench.live import PostgresCluster
from tests.conftest import IN_CI, require_tool

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

SEED = 20261205
PER_FAMILY = 300


PG_PER_FAMILY = 100


@pytest.fixture(scope="module")
def fuzz_run(
    tmp_path_factory: pytest.TempPathFactory, dicom_data: Path
) -> Iterator[tuple[Fuzzer, Report]]:
    require_tool("echoscu")
    fuzzer = Fuzzer(tmp_path_factory.mktemp("fuzz"), SEED, workers=3, data=dicom_data)
    yield fuzzer, fuzzer.run(PER_FAMILY * len(FAMILIES), FAMILIES, Console(quiet=True))


@pytest.fixture(scope="module")
def report(fuzz_run: tuple[Fuzzer, Report]) -> Report:
    return fuzz_run[1]


@pytest.fixture(scope="module")
def pg_report(tmp_path_factory: pytest.TempPathFactory, dicom_data: Path) -> Iterator[Report]:
    """The data set families again, the node's database on a private PostgreSQL cluster."""
    require_tool("echoscu")
    try:
        PostgresCluster.bindir()
    except RuntimeError as exc:
        if IN_CI:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    cluster = PostgresCluster().init()
    try:
        cluster.start()
        fuzzer = Fuzzer(tmp_path_factory.mktemp("fuzz-pg"), SEED, workers=3, data=dicom_data,
                        database_url=cluster.url)  # fmt: skip
        cases = PG_PER_FAMILY * len(DATASET_FAMILIES)
        yield fuzzer.run(cases, DATASET_FAMILIES, Console(quiet=True))
    finally:
        cluster.destroy()


def test_every_case_was_tried_and_the_node_never_crashed(report: Report) -> None:
    assert report.harness_errors == []
    assert report.cases == PER_FAMILY * len(FAMILIES)
    assert {f: sum(c.values()) for f, c in report.by_family.items()} == {
        f: PER_FAMILY for f in FAMILIES
    }
    assert report.crashes == 0, report.crash_cases
    assert report.alive_and_echo
    assert report.tracebacks == 0
    assert 0 < report.peak_rss_mb < 1024


def test_the_well_behaved_sender_is_stored_byte_for_byte(report: Report) -> None:
    assert report.well_behaved_sent >= 12  # at least one round of the twelve files
    assert report.well_behaved_mismatch == []
    assert report.well_behaved_stored_identical == report.well_behaved_sent
    assert report.well_behaved_refused == 0
    assert report.well_behaved_errors == 0


def test_a_changed_byte_in_the_spool_is_seen(fuzz_run: tuple[Fuzzer, Report]) -> None:
    """The byte-identical count is not blind: one byte changed in one spool file of
    the well-behaved sender, checked again, is one mismatch."""
    fuzzer, report = fuzz_run
    assert fuzzer.well is not None
    sop = next(iter(fuzzer.well.sent))
    path = next(fuzzer.node.spool.rglob(f"{sop}.dcm"))
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 0xFF]))
        again = Report(SEED)
        fuzzer.check(again, fuzzer.well)
    finally:
        path.write_bytes(original)
    assert again.well_behaved_mismatch == [f"{sop}: spool file differs"]
    assert again.well_behaved_stored_identical == report.well_behaved_stored_identical - 1


def test_an_answer_is_the_truth_about_the_database(report: Report) -> None:
    assert report.acked_not_stored == []
    assert report.refused_but_stored == []


def test_hostile_uids_and_broken_streams_leave_nothing_behind(report: Report) -> None:
    assert report.outside_spool == []
    assert report.half_written == []
    # A data set that never finished arriving, or came in a stream the node could not
    # follow, is never stored.
    for family in ("pdu_abort_mid_dataset", "pdu_interleaved_contexts",
                   "pdu_oversized_length", "pdu_wrong_type"):  # fmt: skip
        assert report.by_family[family].get("stored", 0) == 0, (family, report.by_family[family])


def test_refusals_are_dicom_answers(report: Report) -> None:
    """Data set cases get a C-STORE status or, at worst, an abort; never silence."""
    for family in DATASET_FAMILIES:
        outcomes = report.by_family[family]
        assert set(outcomes) <= {"stored", "aborted"} | {
            o for o in outcomes if o.startswith("refused 0x")
        }
        assert "closed" not in outcomes and "no answer" not in outcomes
    for family in PDU_FAMILIES:
        assert "no answer" not in report.by_family[family]


def test_cases_are_reproducible_from_the_seed() -> None:
    for family in FAMILIES:
        for number in (0, 7, 299):
            one, two = make_case(SEED, family, number), make_case(SEED, family, number)
            assert one == two
        assert make_case(SEED, family, 1) != make_case(SEED + 1, family, 1)


def test_no_malformed_data_set_is_a_storage_failure(report: Report) -> None:
    """Malformed input is refused for what it is (0xA9xx/0xCxxx), never as 0xC004."""
    for family, outcomes in report.by_family.items():
        assert "refused 0xc004" not in outcomes, (family, outcomes)


def test_postgresql_stores_what_sqlite_stores(pg_report: Report) -> None:
    """Text with NUL characters once failed on PostgreSQL only (0xC004, a traceback)."""
    assert pg_report.database == "postgresql"
    assert pg_report.harness_errors == []
    assert pg_report.cases == PG_PER_FAMILY * len(DATASET_FAMILIES)
    assert pg_report.crashes == 0 and pg_report.alive_and_echo
    assert pg_report.tracebacks == 0
    assert pg_report.acked_not_stored == [] and pg_report.refused_but_stored == []
    assert pg_report.well_behaved_stored_identical == pg_report.well_behaved_sent > 0
    for family, outcomes in pg_report.by_family.items():
        assert "refused 0xc004" not in outcomes, (family, outcomes)
    assert pg_report.by_family["charset"].get("stored", 0) > PG_PER_FAMILY // 2


def test_the_harness_counts_a_crash_and_loses_nothing_acknowledged(
    tmp_path: Path, dicom_data: Path
) -> None:
    """The crash counter is not blind: SIGKILL the node in the middle of a run; the
    harness names the cases in flight, restarts the node and goes on, and every
    instance acknowledged before the kill is still there, byte for byte."""
    require_tool("echoscu")
    fuzzer = Fuzzer(tmp_path, SEED + 1, workers=3, data=dicom_data)
    killed: list[int] = []

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 120
        while len(fuzzer.outcomes) < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc = fuzzer.node.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed.append(proc.pid)

    killer = threading.Thread(target=kill_when_busy, daemon=True)
    killer.start()
    report = fuzzer.run(100 * len(FAMILIES), FAMILIES, Console(quiet=True))
    killer.join(10)
    assert len(killed) == 1
    assert report.crashes == 1
    assert report.crash_cases[0].startswith("exit -9 during ")
    assert report.alive_and_echo
    assert report.acked_not_stored == [] and report.refused_but_stored == []
    assert report.well_behaved_mismatch == []
    assert report.well_behaved_stored_identical == report.well_behaved_sent > 0
    assert not report.ok()

"""``dicom-node`` starts without importing what the command does not run.

A container health check runs ``dicom-node echo`` every 30 s, so the command
must start fast (``bench.cli_start`` measures it; nothing here asserts a
time).  What is asserted is what makes it fast: each command runs in a fresh
interpreter that calls the CLI's ``main`` and then lists ``sys.modules``, and
the heavy libraries a command does not need must not be among them.  The
``destinations`` and ``rules list`` commands run against real peers: DCMTK's
``storescp`` on loopback, and a port where nothing listens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from dicom_node.cli import LAZY_COMMANDS
from tests.conftest import require_tool
from tests.support.peers import ROOT, dcmtk_env, free_port, wait_for_port

CLI_TIMEOUT_S = 120.0

HEAVY = frozenset(
    {"pydicom", "highdicom", "alembic", "sqlalchemy", "torch", "numpy", "pynetdicom",
     "ai_models", "fastapi"}
)  # fmt: skip
"""Libraries no ``--help`` may import."""

HEAVY_FOR_ECHO = HEAVY - {"pynetdicom", "pydicom", "numpy"}
"""``echo`` needs pynetdicom (and pydicom, numpy under it), nothing else heavy."""

HEAVY_FOR_RULES = HEAVY - {"pydicom", "numpy"}
"""Reading rules checks their keywords against pydicom's data dictionary."""

PROBE = textwrap.dedent(
    """
    import json, os, sys
    from dicom_node.cli import main
    try:
        code = main(sys.argv[1:], prog_name="dicom-node", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    with open(os.environ["CLI_START_PROBE"], "w") as out:
        json.dump({"exit": code or 0, "modules": sorted(sys.modules)}, out)
    """
)


class HeavyImports(AssertionError):
    """A command imported a library it does not need."""


def cli_env(**overrides: str) -> dict[str, str]:
    """None of our variables inherited, wide lines, no colour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update({"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb", "TCP_NODELAY": "1"})
    env.update(overrides)
    return env


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def probe(
    tmp_path: Path, *args: str | Path
) -> tuple[subprocess.CompletedProcess[str], int, set[str]]:
    """Run the CLI's ``main`` with *args* in a fresh interpreter: the process, the
    command's exit status and the modules imported by the end."""
    out = tmp_path / "probe.json"
    out.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)],
        cwd=tmp_path,
        env=cli_env(CLI_START_PROBE=str(out)),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert result.returncode == 0 and out.is_file(), explain(result)
    found = json.loads(out.read_text())
    return result, int(found["exit"]), set(found["modules"])


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *map(str, args)],
        cwd=cwd,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def assert_not_imported(modules: set[str], heavy: frozenset[str]) -> None:
    imported = sorted(heavy & modules)
    if imported:
        raise HeavyImports(f"imported {', '.join(imported)}")


def row(output: str, name: str) -> str:
    """The table line of *name* (its first cell)."""
    lines = [line for line in output.splitlines() if re.search(rf"^\W*{re.escape(name)}\s", line)]
    assert len(lines) == 1, f"no single row {name!r} in\n{output}"
    return lines[0]


def cells(output: str, name: str) -> list[str]:
    """The cells of the table row of *name* (split at the table's own border)."""
    line = row(output, name).strip()
    return [cell.strip() for cell in line.strip(line[0]).split(line[0])]


# -- peers -------------------------------------------------------------------------


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[int]:
    """DCMTK ``storescp`` (AE ``ARCHIVE``) on a free loopback port; yields the port."""
    port = free_port()
    received = tmp_path / "archive"
    received.mkdir()
    with (tmp_path / "storescp.log").open("ab") as log:
        proc = subprocess.Popen(
            [require_tool("storescp"), "-aet", "ARCHIVE", "-od", str(received), str(port)],
            env=dcmtk_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, 30, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def write_config(tmp_path: Path, archive_port: int, closed_port: int) -> Path:
    """Three destinations (the archive, a closed port, a folder) and two rules."""
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            ae_title = "CLI_START"
            [storage]
            spool_dir = "spool"
            results_dir = "results"
            database_url = "sqlite:///node.db"
            fsync = false

            [[destinations]]
            name = "archive"
            type = "dicom"
            ae_title = "ARCHIVE"
            host = "127.0.0.1"
            port = {archive_port}

            [[destinations]]
            name = "closed"
            type = "dicom"
            ae_title = "NOBODY"
            host = "127.0.0.1"
            port = {closed_port}
            outputs = ["sr"]
            max_attempts = 3

            [[destinations]]
            name = "outbox"
            type = "folder"
            path = "outbox"

            [[rules]]
            name = "ct-lungs"
            match = {{ Modality = "CT", SliceThickness = {{ max = 3.0 }}, not = {{ SeriesDescription = {{ regex = "scout|[0-9]loc" }} }} }}
            pipelines = ["ct-lungs"]
            destinations = ["archive", "closed"]
            outputs = ["seg", "sr"]
            priority = 5

            [[rules]]
            name = "pet-study"
            trigger = "study"
            fallback = true
            match = {{ any = [ {{ Modality = "MR" }}, {{ Modality = ["PT", "NM"], BodyPartExamined = {{ present = true }} }} ] }}
            destinations = ["outbox"]
            quiet_period_s = 12.5
            """  # noqa: E501
        )
    )
    return path


# -- start: what each command imports ---------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["destinations", "--help"],
        ["rules", "--help"],
        ["jobs", "--help"],
        ["users", "--help"],
        ["retention", "--help"],
        ["db", "--help"],
    ],
    ids=" ".join,
)
def test_help_imports_nothing_heavy(tmp_path: Path, args: list[str]) -> None:
    result, code, modules = probe(tmp_path, *args)
    assert code == 0, explain(result)
    assert "Usage: dicom-node" in result.stdout
    assert_not_imported(modules, HEAVY)
    assert "dicom_node.config" not in modules  # no settings are read for help


def test_help_lists_every_command_from_the_table(tmp_path: Path) -> None:
    result, code, modules = probe(tmp_path, "--help")
    assert code == 0, explain(result)
    for name, lazy in LAZY_COMMANDS.items():
        assert re.search(rf"^\s+{name}\s+{re.escape(lazy.help[:30])}", result.stdout, re.M), name
        module = lazy.target.partition(":")[0]
        assert module not in modules, f"{module} imported for --help"
    for name in ("serve", "check-config", "echo", "send", "studies", "db"):
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.M), name


def test_the_table_says_what_the_commands_say() -> None:
    """Each entry imports a click command, and its help is the command's own."""
    for name, lazy in LAZY_COMMANDS.items():
        command = lazy.load()
        assert isinstance(command, click.Command), name
        assert command.name == name
        listed = click.Command(name, help=lazy.help).get_short_help_str(200)
        assert listed == command.get_short_help_str(200), name


def test_built_in_result_kinds_are_the_registry_s() -> None:
    """The configuration takes these kinds without importing the registry."""
    from dicom_node.config import _BUILT_IN_RESULT_KINDS
    from dicom_node.results.registry import BUILT_IN_WRITERS

    assert tuple(w.kind for w in BUILT_IN_WRITERS) == _BUILT_IN_RESULT_KINDS


def test_a_choice_loads_its_values_when_parsing(tmp_path: Path) -> None:
    result = run_cli("-c", write_config(tmp_path, 1, 2), "jobs", "list", "--status", "nope",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, explain(result)
    assert "'nope' is not one of" in result.stderr and "'failed'" in result.stderr


def test_rules_list_reads_the_rules_and_nothing_heavy(tmp_path: Path) -> None:
    config = write_config(tmp_path, free_port(), free_port())
    result, code, modules = probe(tmp_path, "-c", config, "rules", "list")
    assert code == 0, explain(result)
    lungs = row(result.stdout, "ct-lungs")
    for cell in ("series", " 5 ", " no ", "ct-lungs", "archive, closed", "30 s"):
        assert cell in lungs, (cell, lungs)
    assert "Modality=CT, SliceThickness<=3, not(SeriesDescription~/scout|[0-9]loc/)" in lungs
    pet = row(result.stdout, "pet-study")
    for cell in ("study", " yes ", "outbox", "12.5 s"):
        assert cell in pet, (cell, pet)
    assert "any(Modality=MR | Modality in (PT, NM), BodyPartExamined present)" in pet
    assert_not_imported(modules, HEAVY_FOR_RULES)


@pytest.mark.network
def test_echo_imports_pynetdicom_and_nothing_heavier(tmp_path: Path, storescp: int) -> None:
    config = tmp_path / "plain.toml"
    config.write_text('[node]\nae_title = "CLI_START"\n')
    result, code, modules = probe(tmp_path, "-c", config, "echo", f"127.0.0.1:{storescp}:ARCHIVE")
    assert code == 0, explain(result)
    assert f"C-ECHO ARCHIVE@127.0.0.1:{storescp}: success" in result.stdout
    assert "pynetdicom" in modules
    assert_not_imported(modules, HEAVY_FOR_ECHO)


# -- destinations list | echo -------------------------------------------------------------


@pytest.mark.network
def test_destinations_echo_names_the_one_that_refused(tmp_path: Path, storescp: int) -> None:
    closed = free_port()  # nothing listens there
    config = write_config(tmp_path, storescp, closed)

    both = run_cli("-c", config, "destinations", "echo", cwd=tmp_path)
    assert both.returncode == 1, explain(both)
    # name, where, result, ms, reason
    name, where, result, ms, reason = cells(both.stdout, "archive")
    assert (where, result, reason) == (f"ARCHIVE@127.0.0.1:{storescp}", "ok", "")
    assert float(ms) > 0
    name, where, result, ms, reason = cells(both.stdout, "closed")
    assert (where, result, ms) == (f"NOBODY@127.0.0.1:{closed}", "failed", "")
    assert f"connection refused by 127.0.0.1:{closed}" in reason
    assert "outbox" not in both.stdout  # by default, the DICOM destinations only

    named = run_cli("-c", config, "destinations", "echo", "archive", "outbox", cwd=tmp_path)
    assert named.returncode == 0, explain(named)
    assert cells(named.stdout, "archive")[2] == cells(named.stdout, "outbox")[2] == "ok"
    assert "closed" not in named.stdout

    unknown = run_cli("-c", config, "destinations", "echo", "nowhere", cwd=tmp_path)
    assert unknown.returncode == 2, explain(unknown)
    assert "unknown destination(s) nowhere" in unknown.stderr
    assert "configured: archive, closed, outbox" in unknown.stderr


def test_destinations_list_without_a_database(tmp_path: Path) -> None:
    archive, closed = free_port(), free_port()
    config = write_config(tmp_path, archive, closed)
    result = run_cli("-c", config, "destinations", "list", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    # name, type, where, TLS, outputs, max attempts, pending, failed
    assert cells(result.stdout, "archive") == [
        "archive", "dicom", f"ARCHIVE@127.0.0.1:{archive}", "no", "all", "12", "", ""
    ]  # fmt: skip
    assert cells(result.stdout, "closed") == [
        "closed", "dicom", f"NOBODY@127.0.0.1:{closed}", "no", "sr", "3", "", ""
    ]  # fmt: skip
    assert cells(result.stdout, "outbox") == [
        "outbox", "folder", str((tmp_path / "outbox").resolve()), "", "all", "12", "", ""
    ]  # fmt: skip
    assert "no database yet" in result.stdout
    assert not (tmp_path / "node.db").exists()  # listing creates no database


def test_destinations_list_counts_pending_and_failed_deliveries(tmp_path: Path) -> None:
    from dicom_node.collect import Collector
    from dicom_node.config import load_settings
    from storage.db import Database
    from storage.jobs import DeliveryOutcome, DeliveryQueue, JobQueue, NewResult
    from storage.received import InstanceRecord, ReceivedStore
    from storage.spool import Spool

    config = write_config(tmp_path, free_port(), free_port())
    settings = load_settings(config)
    db = Database(settings.storage.database_url)
    db.upgrade()
    try:
        study = "1.2.826.0.1.3680043.8.498.77"
        series = f"{study}.1"
        store = ReceivedStore(db, Spool(settings.storage.spool_dir, fsync=False))
        record = InstanceRecord(
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=f"{series}.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            modality="CT",
            attributes={"Modality": "CT", "SliceThickness": "1.0"},
            calling_ae="CT_SCANNER",
        )
        store.store(record, store.spool.write_temp([b"not really DICOM"]))
        (job_id,) = Collector(db, settings).complete(series).job_ids
        queue = JobQueue(db)
        job = queue.claim("test:1:w", job_id=job_id)
        assert job is not None
        results = [
            NewResult(
                kind=kind,
                source_series_uid=series,
                study_instance_uid=study,
                series_instance_uid=f"2.25.77{i}",
                sop_instance_uid=f"2.25.77{i}1",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                path=f"job-{job_id}/{kind}.dcm",
                size_bytes=100,
            )
            for i, kind in enumerate(("seg", "sr"))
        ]
        queue.complete(job, results, {"read": 0.1})
        sender = DeliveryQueue(db)
        # archive: SEG refused for good, SR still pending; closed (SR only): SR pending
        claimed = {d.kind: d for d in sender.claim_batch("test:1:s", destination="archive")}
        sender.record(
            "test:1:s",
            [DeliveryOutcome(claimed["seg"].id, False, 0xA900, "refused", retry=False),
             DeliveryOutcome(claimed["sr"].id, False, None, "peer down", retry=True)],
            max_attempts=5,
            retry_base_s=300,
            retry_max_s=600,
        )  # fmt: skip
    finally:
        db.dispose()

    result = run_cli("-c", config, "destinations", "list", cwd=tmp_path)
    assert result.returncode == 0, explain(result)
    pending_failed = {n: cells(result.stdout, n)[-2:] for n in ("archive", "closed", "outbox")}
    assert pending_failed == {"archive": ["1", "1"], "closed": ["1", "0"], "outbox": ["0", "0"]}
    assert "no database yet" not in result.stdout


def test_the_repository_configuration_lists(tmp_path: Path) -> None:
    """``config.toml`` at the root, as shipped: both lists work on it."""
    for group in ("rules", "destinations"):
        result = run_cli("-c", ROOT / "config.toml", group, "list", cwd=tmp_path)
        assert result.returncode == 0, explain(result)
        assert f"{group} (" in result.stdout

"""The ``dicom-node`` command as an admin runs it: subprocesses against real peers.

Every command runs as ``python -m dicom_node.cli ...`` with a clean environment
(no inherited ``DICOM_NODE_*`` variables) and a time limit.  The peers are
real: the node itself (``dicom-node serve`` in a subprocess) and DCMTK's
``storescp`` as the archive, both on loopback and a free port, both stopped
by the test that started them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.config import load_settings
from storage.db import Database
from tests.conftest import require_tool
from tests.support.peers import (
    ROOT,
    NodeProcess,
    dcmtk_env,
    echoscu,
    free_port,
    storescu,
    wait_for_port,
)

CT_SERIES = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
TS_SERIES = "dcm_qa_ts/siemens_trio_ax_asc_35sl"  # one series in nine transfer syntaxes

CLI_TIMEOUT_S = 120.0


def cli_env(**overrides: str) -> dict[str, str]:
    """The environment for a CLI run: none of ours inherited, wide lines, no colour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env.update({"COLUMNS": "250", "NO_COLOR": "1", "TERM": "dumb", "TCP_NODELAY": "1"})
    env.update(overrides)
    return env


def run_cli(
    *args: str | Path,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout_s: float = CLI_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", *map(str, args)],
        cwd=cwd,
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def sender_config(tmp_path: Path, ae_title: str = "CLI_SENDER", body: str = "") -> Path:
    """A config for the CLI as a sender (its AE title is the calling AE)."""
    path = tmp_path / "sender.toml"
    path.write_text(
        f'[node]\nae_title = "{ae_title}"\n'
        f'[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///sender.db"\n{body}'
    )
    return path


def sop_uids(folder: Path) -> dict[str, str]:
    """SOP Instance UID -> transfer syntax UID of every file in *folder*."""
    out: dict[str, str] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file():
            ds = dcmread(f, stop_before_pixels=True)
            out[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    return out


# -- check-config --------------------------------------------------------------


def test_check_config_on_the_repository_file() -> None:
    config = ROOT / "config.toml"
    expected = load_settings(config)
    result = run_cli("--config", config, "check-config")
    assert result.returncode == 0, explain(result)
    out = result.stdout
    assert f"configuration OK ({config.resolve()})" in out
    n = expected.node
    node_line = rf"^\s*node\s+{re.escape(n.ae_title)} on {re.escape(n.host)}:{n.port}$"
    assert re.search(node_line, out, re.M), out
    assert re.search(rf"^\s*storage\s+{re.escape(str(expected.storage.spool_dir))}\s", out, re.M)
    names = ", ".join(d.name for d in expected.destinations) or "none"
    assert re.search(rf"^\s*destinations {re.escape(names)}$", out, re.M), out
    assert re.search(r"^\s*peers\s+\S", out, re.M)
    assert re.search(r"^\s*rules\s+\S", out, re.M)


def test_check_config_names_the_offending_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nprot = 11112\nae_title = "DICOM_NODE"\n[storage]\nfsink = true\n')
    result = run_cli("--config", bad, "check-config")
    assert result.returncode == 2, explain(result)
    assert "node.prot: unknown key" in result.stderr
    assert "storage.fsink: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert "configuration OK" not in result.stdout


def test_check_config_bad_values_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[node]\nport = 70000\nae_title = "WAY_TOO_LONG_AE_TITLE"\n')
    result = run_cli("--config", bad, "check-config")
    assert result.returncode == 2, explain(result)
    assert "node.port" in result.stderr and "node.ae_title" in result.stderr
    assert "Traceback" not in result.stderr

    missing = run_cli("--config", tmp_path / "nope.toml", "check-config")
    assert missing.returncode == 2, explain(missing)
    assert "not found" in missing.stderr and "nope.toml" in missing.stderr


def test_check_config_environment_overrides_the_file(tmp_path: Path) -> None:
    config = ROOT / "config.toml"
    result = run_cli(
        "--config", config, "check-config",
        env=cli_env(DICOM_NODE_NODE__PORT="11199", DICOM_NODE_NODE__AE_TITLE="FROM_ENV"),
    )
    assert result.returncode == 0, explain(result)
    assert re.search(r"^\s*node\s+FROM_ENV on \S+:11199$", result.stdout, re.M), result.stdout

    # The environment is validated like the file.
    bad = run_cli("--config", config, "check-config", env=cli_env(DICOM_NODE_NODE__PORT="0"))
    assert bad.returncode == 2, explain(bad)
    assert "node.port" in bad.stderr

    # DICOM_NODE_CONFIG names the file like --config does.
    own = tmp_path / "own.toml"
    own.write_text('[node]\nae_title = "OWN_FILE"\nport = 4100\n')
    by_env = run_cli("check-config", env=cli_env(DICOM_NODE_CONFIG=str(own)))
    assert by_env.returncode == 0, explain(by_env)
    assert re.search(r"^\s*node\s+OWN_FILE on \S+:4100$", by_env.stdout, re.M), by_env.stdout


# -- echo ------------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    """The node on a free port, with itself configured as the DICOM destination ``self``."""
    port = free_port()
    n = NodeProcess(
        tmp_path / "node",
        port,
        extra={
            "destinations": [
                {"name": "self", "type": "dicom", "ae_title": "DICOM_NODE",
                 "host": "127.0.0.1", "port": port},
                {"name": "outbox", "type": "folder", "path": str(tmp_path / "outbox")},
            ]
        },
    )
    with n:
        yield n


@pytest.mark.network
def test_echo_by_address_and_by_destination_name(node: NodeProcess, tmp_path: Path) -> None:
    by_address = run_cli("-c", node.config_path, "echo", f"127.0.0.1:{node.port}:DICOM_NODE")
    assert by_address.returncode == 0, explain(by_address)
    assert re.search(
        rf"C-ECHO DICOM_NODE@127\.0\.0\.1:{node.port}: success in [\d.]+ ms", by_address.stdout
    ), by_address.stdout

    by_name = run_cli("-c", node.config_path, "echo", "self")
    assert by_name.returncode == 0, explain(by_name)
    assert f"C-ECHO DICOM_NODE@127.0.0.1:{node.port}: success" in by_name.stdout

    # A folder destination is checked by its own type: a probe file is written there.
    folder = run_cli("-c", node.config_path, "echo", "outbox")
    assert folder.returncode == 0, explain(folder)
    assert re.search(r"folder destination outbox: reachable in [\d.]+ ms", folder.stdout)
    # An unknown name is refused with the known names.
    unknown = run_cli("-c", node.config_path, "echo", "nowhere")
    assert unknown.returncode == 1, explain(unknown)
    assert "unknown destination 'nowhere'" in unknown.stderr and "self" in unknown.stderr

    # The node checks the called AE title: the wrong one is rejected.
    wrong = run_cli("-c", node.config_path, "echo", f"127.0.0.1:{node.port}:NOT_THE_NODE")
    assert wrong.returncode == 1, explain(wrong)
    assert "echo failed" in wrong.stderr and "rejected" in wrong.stderr
    assert "Traceback" not in wrong.stderr + wrong.stdout
    assert node.proc is not None and node.proc.poll() is None, node.log()


@pytest.mark.network
def test_echo_to_a_closed_port_fails_readably(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    result = run_cli(
        "-c", sender_config(tmp_path), "echo", f"127.0.0.1:{port}:NOBODY", "--timeout", "5",
        timeout_s=60,
    )
    assert result.returncode == 1, explain(result)
    assert f"echo failed: connection refused by 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "success" not in result.stdout


# -- send ------------------------------------------------------------------------


class StoreSCP:
    """DCMTK ``storescp`` as the archive: every received file lands in ``out``."""

    def __init__(self, workdir: Path, ae_title: str = "ARCHIVE") -> None:
        self.exe = require_tool("storescp")
        self.out = workdir / "archive"
        self.out.mkdir(parents=True)
        self.log_path = workdir / "storescp.log"
        self.ae_title = ae_title
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}:{self.ae_title}"

    def start(self) -> StoreSCP:
        with self.log_path.open("ab") as log:
            # +xa: accept every transfer syntax DCMTK knows, so files need no transcoding.
            self.proc = subprocess.Popen(
                [self.exe, "-v", "+xa", "-aet", self.ae_title, "-od", str(self.out),
                 str(self.port)],
                env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            wait_for_port(self.port, 30, self.proc)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    try:
        yield scp.start()
    finally:
        scp.stop()


SUMMARY_RE = re.compile(
    r"sent (\d+) of (\d+) file\(s\) to (\S+) \(([\d.]+) MB, ([\d.]+) s, (\d+)/s\)"
)


@pytest.mark.network
def test_send_series_to_storescp(archive: StoreSCP, dicom_data: Path, tmp_path: Path) -> None:
    series = dicom_data / CT_SERIES
    sources = sop_uids(series)
    files = [f for f in series.iterdir() if f.is_file()]
    assert len(sources) == len(files) > 10  # one file per instance

    result = run_cli("-c", sender_config(tmp_path), "send", series, "--to", archive.address)
    assert result.returncode == 0, explain(result) + archive.log()
    summary = SUMMARY_RE.search(result.stdout)
    assert summary, result.stdout
    sent, total, peer, megabytes = summary.group(1, 2, 3, 4)
    assert int(sent) == int(total) == len(files)
    assert peer == f"ARCHIVE@127.0.0.1:{archive.port}"
    assert float(megabytes) == pytest.approx(sum(f.stat().st_size for f in files) / 1e6, abs=0.1)
    assert "failed" not in result.stdout

    received = sop_uids(archive.out)
    assert len(list(archive.out.iterdir())) == len(files)
    assert received == sources  # every instance, each in the syntax it was sent in
    # storescp records the calling AE title (ours, from the config) in the file meta.
    one = dcmread(next(archive.out.iterdir()), stop_before_pixels=True)
    assert one.file_meta.SourceApplicationEntityTitle == "CLI_SENDER"


@pytest.mark.network
def test_send_keeps_every_transfer_syntax(
    archive: StoreSCP, dicom_data: Path, tmp_path: Path
) -> None:
    """Compressed and big-endian files go as they are: no transcoding on the way."""
    series = dicom_data / TS_SERIES
    files = sorted(f for f in series.iterdir() if f.is_file())
    source: dict[str, dict[str, bytes]] = {}  # SOP Instance UID -> syntax -> pixel bytes
    for f in files:
        ds = dcmread(f)
        source.setdefault(str(ds.SOPInstanceUID), {})[str(ds.file_meta.TransferSyntaxUID)] = (
            ds.PixelData
        )
    syntaxes = {ts for by_ts in source.values() for ts in by_ts}
    assert len(syntaxes) >= 5, syntaxes

    result = run_cli("-c", sender_config(tmp_path), "send", series, "--to", archive.address)
    assert result.returncode == 0, explain(result) + archive.log()
    assert f"sent {len(files)} of {len(files)} file(s)" in result.stdout

    # storescp names files by SOP Instance UID: a UID sent in two syntaxes would
    # leave one file, so compare per UID against the syntaxes it was sent in.
    received: dict[str, str] = {}
    for f in sorted(archive.out.iterdir()):
        ds = dcmread(f)
        uid, ts = str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
        assert uid in source, f.name
        assert ts in source[uid], f"{f.name} arrived as {ts}, sent as {sorted(source[uid])}"
        assert ds.PixelData == source[uid][ts], f"{f.name}: pixel data changed on the way"
        received[uid] = ts
    assert set(received) == set(source)
    assert {ts for uid, ts in received.items() if len(source[uid]) == 1} == {
        ts for by_ts in source.values() if len(by_ts) == 1 for ts in by_ts
    }


@pytest.mark.network
def test_send_to_a_closed_port_or_nothing_to_send(tmp_path: Path, dicom_data: Path) -> None:
    port = free_port()
    refused = run_cli(
        "-c", sender_config(tmp_path), "send", dicom_data / TS_SERIES / "1.dcm",
        "--to", f"127.0.0.1:{port}:NOBODY", timeout_s=60,
    )
    assert refused.returncode == 1, explain(refused)
    assert "send failed" in refused.stderr
    assert f"connection refused by 127.0.0.1:{port}" in refused.stderr
    assert "Traceback" not in refused.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not DICOM")
    nothing = run_cli("-c", sender_config(tmp_path), "send", empty, "--to", f"127.0.0.1:{port}:X")
    assert nothing.returncode == 1, explain(nothing)
    assert "no DICOM files found" in nothing.stderr

    bad_dest = run_cli("-c", sender_config(tmp_path), "send", empty, "--to", "nowhere")
    assert bad_dest.returncode == 2, explain(bad_dest)
    assert "unknown destination 'nowhere'" in bad_dest.stderr


def table_rows(text: str) -> list[list[str]]:
    """Cells of each body row of a rich table (box drawing or ASCII)."""
    rows = []
    for line in text.splitlines():
        sep = "│" if "│" in line else "|"
        if line.count(sep) >= 3:
            rows.append([c.strip() for c in line.strip().strip(sep).split(sep)])
    return rows


@pytest.mark.network
def test_send_to_the_node_then_studies_lists_the_series(
    node: NodeProcess, dicom_data: Path, tmp_path: Path
) -> None:
    series = dicom_data / CT_SERIES
    files = [f for f in series.iterdir() if f.is_file()]
    first = dcmread(files[0], stop_before_pixels=True)
    series_uid = str(first.SeriesInstanceUID)

    result = run_cli(
        "-c", sender_config(tmp_path, "CT_SCANNER"), "send", series,
        "--to", f"127.0.0.1:{node.port}:DICOM_NODE",
    )
    assert result.returncode == 0, explain(result) + node.log()
    assert f"sent {len(files)} of {len(files)} file(s) to DICOM_NODE@127.0.0.1:{node.port}" in (
        result.stdout
    )

    listing = run_cli("-c", node.config_path, "studies")
    assert listing.returncode == 0, explain(listing)
    assert "received studies (1)" in listing.stdout, listing.stdout
    short = series_uid if len(series_uid) <= 16 else "…" + series_uid[-15:]
    rows = [r for r in table_rows(listing.stdout) if short in r]
    assert len(rows) == 1, listing.stdout
    row = rows[0]
    assert str(len(files)) in row, row  # the instance count
    assert "CT_SCANNER" in row and "CT" in row, row
    assert node.proc is not None and node.proc.poll() is None


# -- logging -----------------------------------------------------------------------


@pytest.mark.network
def test_serve_with_log_json_logs_json_lines(tmp_path: Path, dicom_data: Path) -> None:
    node = NodeProcess(tmp_path / "node", free_port())
    node.workdir.mkdir(parents=True)
    node.write_config()  # [log] json_format stays false: the flag alone switches
    with node.log_path.open("ab") as log:
        node.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "--log-json", "-c", str(node.config_path),
             "serve"],
            cwd=ROOT, env=cli_env(), stdout=log, stderr=subprocess.STDOUT,
        )
    files = sorted(f for f in (dicom_data / CT_SERIES).iterdir() if f.is_file())[:5]
    try:
        wait_for_port(node.port, 60, node.proc)
        assert echoscu(node.port).returncode == 0
        sent = storescu(node.port, files, calling_ae="JSON_TEST")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert node.terminate(30) == 0, node.log()
    finally:
        node.kill()

    records = []
    for line in node.log().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}\n{node.log()}")
    assert records
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys(), record
    summaries = [r for r in records if r.get("calling_ae") == "JSON_TEST" and "instances" in r]
    assert len(summaries) == 1, records
    summary = summaries[0]
    assert summary["instances"] == len(files)
    assert summary["bytes"] >= sum(f.stat().st_size for f in files) * 0.9
    assert summary["failures"] == 0
    echo_summaries = [r for r in records if r.get("calling_ae") == "ECHOSCU" and "instances" in r]
    assert [r["instances"] for r in echo_summaries] == [0]


def serve_until_listening(
    args: list[str], cwd: Path, env: dict[str, str], port: int, log_path: Path
) -> str:
    """Start ``serve`` with *args*, wait until its DICOM port answers, stop it; its log."""
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", *args, "serve"],
            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log,
        )
    try:
        wait_for_port(port, 60, proc)
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return log_path.read_text()


@pytest.mark.network
def test_serve_outside_the_project_says_it_runs_on_defaults_without_rules(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = cli_env(
        DICOM_NODE_NODE__HOST="127.0.0.1",
        DICOM_NODE_NODE__PORT=str(port),
        DICOM_NODE_WEB__ENABLED="false",
        DICOM_NODE_WORKER__CONCURRENCY="0",
        DICOM_NODE_STORAGE__MIN_FREE_DISK_MB="0",
    )
    assert not (tmp_path / "config.toml").exists()
    stderr = serve_until_listening([], tmp_path, env, port, tmp_path / "defaults.log")
    warnings = [line for line in stderr.splitlines() if " WARNING " in line]
    assert any(
        "no configuration file" in w and f"config.toml in {tmp_path}" in w
        and "built-in defaults" in w
        for w in warnings
    ), stderr
    assert any("no routing rules: nothing will be analysed" in w for w in warnings), stderr
    assert (tmp_path / "var").is_dir()  # the defaults' relative folders: under the cwd


@pytest.mark.network
def test_serve_names_its_configuration_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nhost = "127.0.0.1"\nport = {port}\n'
        '[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///node.db"\n'
        "min_free_disk_mb = 0\n[worker]\nconcurrency = 0\n[web]\nenabled = false\n"
    )
    stderr = serve_until_listening(
        ["-c", str(config)], ROOT, cli_env(), port, tmp_path / "file.log"
    )
    assert f"configuration: {config.resolve()}" in stderr, stderr
    assert "no configuration file" not in stderr, stderr
    rules_lines = [line for line in stderr.splitlines() if "no routing rules" in line]
    assert len(rules_lines) == 1 and " WARNING " in rules_lines[0], stderr
    assert f"add [[rules]] to {config.resolve()}" in rules_lines[0]

    with_rules = ROOT / "config.toml"  # the shipped file has rules: no warning about them
    shipped = serve_until_listening(
        ["-c", str(with_rules)],
        ROOT,
        cli_env(
            DICOM_NODE_NODE__HOST="127.0.0.1",
            DICOM_NODE_NODE__PORT=str(port),
            DICOM_NODE_WEB__ENABLED="false",
            DICOM_NODE_WORKER__CONCURRENCY="0",
            DICOM_NODE_STORAGE__SPOOL_DIR=str(tmp_path / "spool2"),
            DICOM_NODE_STORAGE__RESULTS_DIR=str(tmp_path / "results2"),
            DICOM_NODE_STORAGE__DATABASE_URL=f"sqlite:///{tmp_path / 'node2.db'}",
            DICOM_NODE_STORAGE__MIN_FREE_DISK_MB="0",
        ),
        port,
        tmp_path / "shipped.log",
    )
    assert f"configuration: {with_rules.resolve()}" in shipped, shipped
    assert "no routing rules" not in shipped, shipped


# -- jobs ------------------------------------------------------------------------------


def finished_job_with_deliveries(tmp_path: Path) -> tuple[Path, int, dict[str, str]]:
    """A config, and a job whose SEG went to a folder and failed to reach a DICOM peer.

    Made through the same storage calls and sender function the node uses
    (collector, job queue, :func:`dicom_node.deliver.deliver_batch`).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from dicom_node.collect import Collector
    from dicom_node.deliver import deliver_batch
    from storage.jobs import DeliveryQueue, JobQueue, NewResult
    from storage.received import InstanceRecord, ReceivedStore
    from storage.spool import Spool

    closed = free_port()  # nothing listens there: the DICOM delivery fails
    config = tmp_path / "node.toml"
    config.write_text(
        '[storage]\nspool_dir = "spool"\nresults_dir = "results"\n'
        'database_url = "sqlite:///node.db"\n'
        '[[destinations]]\nname = "outbox"\ntype = "folder"\npath = "outbox"\n'
        '[[destinations]]\nname = "pacs"\ntype = "dicom"\nae_title = "PACS"\n'
        f'host = "127.0.0.1"\nport = {closed}\ntimeout_s = 5\n'
        '[[rules]]\nname = "ct"\npipelines = ["ct-lungs"]\ndestinations = ["outbox", "pacs"]\n'
        'outputs = ["seg"]\n[rules.match]\nModality = "CT"\n'
    )
    settings = load_settings(config)
    database = Database(settings.storage.database_url)
    database.upgrade()
    try:
        store = ReceivedStore(database, Spool(settings.storage.spool_dir))
        study, series = generate_uid(), generate_uid()
        store.store(
            InstanceRecord(
                study_instance_uid=study,
                series_instance_uid=series,
                sop_instance_uid=generate_uid(),
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid=ExplicitVRLittleEndian,
                modality="CT",
                attributes={"Modality": "CT"},
            ),
            store.spool.write_temp([b"not used"]),
        )
        (job_id,) = Collector(database, settings).complete(series).job_ids
        queue = JobQueue(database)
        job = queue.claim("host:1:test", job_id=job_id)
        assert job is not None
        seg = Dataset()
        seg.file_meta = FileMetaDataset()
        seg.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
        seg.SOPInstanceUID = seg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        seg.StudyInstanceUID, seg.SeriesInstanceUID = study, generate_uid()
        seg.Modality = "SEG"
        relative = f"job-{job_id}/seg.dcm"
        path = settings.storage.results_dir / relative
        path.parent.mkdir(parents=True)
        seg.save_as(path, enforce_file_format=True)
        queue.complete(
            job,
            [
                NewResult(
                    kind="seg",
                    source_series_uid=series,
                    study_instance_uid=study,
                    series_instance_uid=str(seg.SeriesInstanceUID),
                    sop_instance_uid=str(seg.SOPInstanceUID),
                    sop_class_uid=str(seg.SOPClassUID),
                    path=relative,
                    size_bytes=path.stat().st_size,
                )
            ],
            {"infer": 1.0},
        )
        deliveries = DeliveryQueue(database)
        while batch := deliveries.claim_batch("host:1:sender"):
            deliveries.record(
                "host:1:sender",
                deliver_batch(settings, batch),
                max_attempts=3,
                retry_base_s=60,
                retry_max_s=60,
            )
    finally:
        database.dispose()
    return config, job_id, {
        "result": str(path),
        "sop": str(seg.SOPInstanceUID),
        "outbox": str(settings.storage.results_dir.parent / "outbox"),
    }


def test_jobs_show_prints_the_result_files_and_where_they_went(tmp_path: Path) -> None:
    config, job_id, made = finished_job_with_deliveries(tmp_path)
    written = [p for p in Path(made["outbox"]).rglob("*.dcm")]
    assert len(written) == 1  # what the sender wrote

    shown = run_cli("-c", config, "jobs", "show", str(job_id))
    assert shown.returncode == 0, explain(shown)
    lines = shown.stdout.splitlines()
    assert f"seg {made['sop']}: {made['result']}" in lines, shown.stdout
    outbox = [line for line in lines if line.startswith("  -> outbox")]
    assert outbox == [
        f"  -> outbox (folder): sent, 1 attempt(s), DIMSE status 0x0000, written to {written[0]}"
    ], shown.stdout
    pacs = [line for line in lines if line.startswith("  -> pacs")]
    assert len(pacs) == 1 and pacs[0].startswith("  -> pacs (dicom): pending, 1 attempt(s)")
    assert "last error: pacs: " in pacs[0], pacs

    as_json = run_cli("-c", config, "jobs", "show", str(job_id), "--json")
    assert as_json.returncode == 0, explain(as_json)
    record = json.loads(as_json.stdout)
    assert record["id"] == job_id and record["status"] == "succeeded"
    (obj,) = record["objects"]
    assert (obj["kind"], obj["sop_instance_uid"], obj["path"]) == (
        "seg",
        made["sop"],
        made["result"],
    )
    by_dest = {d["destination"]: d for d in obj["deliveries"]}
    assert by_dest["outbox"]["status"] == "sent"
    assert by_dest["outbox"]["written_to"] == str(written[0])
    assert by_dest["outbox"]["destination_type"] == "folder"
    assert by_dest["pacs"]["status"] == "pending" and by_dest["pacs"]["attempts"] == 1
    assert by_dest["pacs"]["written_to"] is None and by_dest["pacs"]["error"]

    missing = run_cli("-c", config, "jobs", "show", str(job_id + 1))
    assert missing.returncode == 1 and f"no job {job_id + 1}" in missing.stderr


# -- database ------------------------------------------------------------------------


def test_db_upgrade_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    db_file = tmp_path / "fresh.db"
    config = tmp_path / "config.toml"
    config.write_text(f'[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///{db_file}"\n')
    database = Database(f"sqlite:///{db_file}")
    head = database.head_revision()
    database.dispose()
    assert not db_file.exists() or db_file.stat().st_size == 0
    assert head

    first = run_cli("-c", config, "db", "upgrade")
    assert first.returncode == 0, explain(first)
    assert f"database at revision {head} (was empty)" in first.stdout
    assert db_file.is_file()

    again = run_cli("-c", config, "db", "upgrade")
    assert again.returncode == 0, explain(again)
    assert f"database at revision {head} (was {head})" in again.stdout

"""The audit trail: the auditor's sinks (database, JSON lines, syslog), its waiting
while a sink is down, and ``dicom-node audit``."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from dicom_node import audit
from dicom_node.cli import main as cli_main
from dicom_node.cli_audit import parse_when
from dicom_node.config import AuditSettings
from storage.audit import AuditEntry, AuditFilter, AuditStore
from storage.db import Database
from tests.support.peers import render_config


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade()
    yield database
    database.dispose()


def test_events_reach_the_database_and_the_json_lines_file(tmp_path: Path, db: Database) -> None:
    lines = tmp_path / "audit" / "trail.jsonl"
    auditor = audit.auditor_from_settings(AuditSettings(jsonl_file=lines), db)
    assert [s.name for s in auditor.sinks] == ["database", "jsonl"]
    for n in range(300):
        auditor.record(
            audit.AuditEvent.ASSOCIATION_ACCEPTED,
            actor="CT_SCANNER_1",
            actor_kind="ae",
            address="127.0.0.1",
            called_ae="DICOM_NODE",
            n=n,
        )
    auditor.record(
        audit.AuditEvent.LOGIN_FAILED,
        outcome=audit.Outcome.MINOR_FAILURE,
        actor="alice",
        actor_kind="user",
        reason="wrong password",
        unset=None,
    )
    assert auditor.flush(10)
    auditor.close()

    store = AuditStore(db)
    assert store.count() == 301
    (failed,) = store.query(AuditFilter(failures_only=True))
    assert (failed.event, failed.action, failed.outcome) == ("login-failed", "E", 4)
    assert failed.detail == {"reason": "wrong password"}  # None values are left out
    newest_first = store.query(AuditFilter(events=["association-accepted"]), limit=3)
    assert [e.detail["n"] for e in newest_first] == [299, 298, 297]

    written = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(written) == 301
    assert written[0]["dicom_event_id"] == {
        "code": "110114",
        "scheme": "DCM",
        "meaning": "User Authentication",
    }
    assert written[-1]["event"] == "login-failed" and written[-1]["actor"] == "alice"
    assert datetime.fromisoformat(written[0]["at"]).tzinfo is not None


def test_syslog_gets_rfc5424_messages_with_a_json_body(db: Database) -> None:
    """A UDP syslog collector on loopback receives one datagram per event."""
    collector = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    collector.bind(("127.0.0.1", 0))
    collector.settimeout(10)
    port = collector.getsockname()[1]
    try:
        settings = AuditSettings(database=False, syslog=f"udp://127.0.0.1:{port}")
        auditor = audit.auditor_from_settings(settings, db)
        auditor.record(
            audit.AuditEvent.RESULT_SENT,
            actor="pacs",
            actor_kind="destination",
            study_instance_uid="1.2.3",
            sop_instance_uids=["1.2.3.4.5"],
        )
        auditor.record(
            audit.AuditEvent.ACCESS_DENIED,
            outcome=audit.Outcome.MINOR_FAILURE,
            actor="bob",
            actor_kind="user",
        )
        assert auditor.flush(10)
        messages = [collector.recv(65536).decode() for _ in range(2)]
        auditor.close()
    finally:
        collector.close()
    # <PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG (RFC 5424 6); authpriv = 10.
    first = re.match(r"^<(\d+)>1 - (\S+) dicom-node (\d+) audit - (\{.*\})$", messages[0])
    assert first, messages[0]
    assert int(first.group(1)) == 10 * 8 + 6  # facility authpriv, severity info
    body = json.loads(first.group(4))
    assert (body["event"], body["study_instance_uid"]) == ("result-sent", "1.2.3")
    assert body["detail"]["sop_instance_uids"] == ["1.2.3.4.5"]
    second = re.match(r"^<(\d+)>", messages[1])
    assert second and int(second.group(1)) == 10 * 8 + 4  # a failure: severity warning
    assert AuditStore(db).count() == 0  # database = false


class _FlakySink:
    """Fails its first *failures* writes, as a database being restarted does."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[AuditEntry] = []
        self.lock = threading.Lock()

    def write(self, entries: Sequence[AuditEntry]) -> None:
        with self.lock:
            if self.failures > 0:
                self.failures -= 1
                raise OSError("connection refused")
            self.written.extend(entries)

    def close(self) -> None:
        pass


def test_events_wait_while_a_sink_is_down_and_nothing_is_written_twice(db: Database) -> None:
    flaky = _FlakySink(failures=3)
    steady = audit.DatabaseSink(db)
    auditor = audit.Auditor([flaky, steady])
    for n in range(50):
        auditor.record(audit.AuditEvent.INSTANCES_STORED, study_instance_uid=f"1.2.{n}", count=n)
    assert auditor.flush(30)
    auditor.close()
    assert [e.detail["count"] for e in flaky.written] == list(range(50))
    # The sink that worked all along got each event once.
    assert AuditStore(db).count() == 50


def test_recording_never_raises() -> None:
    auditor = audit.Auditor([_FlakySink(failures=10**9)])
    auditor.record("not-an-event")  # type: ignore[arg-type]
    auditor.record(audit.AuditEvent.NODE_STARTED)
    assert not auditor.flush(0.5)  # the sink stays down: flush says so
    auditor.close(timeout_s=0.5)


def test_the_process_auditor_records_nothing_until_one_is_installed(db: Database) -> None:
    assert audit.auditor().sinks == []
    audit.auditor().record(audit.AuditEvent.NODE_STARTED)
    mine = audit.Auditor([audit.DatabaseSink(db)])
    old = audit.install(mine)
    try:
        audit.auditor().record(audit.AuditEvent.NODE_STARTED, roles=["receiver"])
        assert audit.auditor().flush(10)
    finally:
        audit.install(old)
        mine.close()
    (entry,) = AuditStore(db).query()
    assert entry.detail == {"roles": ["receiver"]} and entry.node


def test_every_event_maps_to_a_dicom_audit_message() -> None:
    for event in audit.AuditEvent:
        code, meaning = event.dicom_event
        assert code.startswith("110") and meaning
        assert event.action in "CRUDE"


def test_audit_settings_check_the_syslog_address() -> None:
    assert AuditSettings(syslog="tcp://logs.example.org:601").syslog
    assert AuditSettings(syslog="/dev/log").syslog == "/dev/log"
    for bad in ("logs.example.org", "http://x:1", "udp://:514", "udp://host:port"):
        with pytest.raises(ValueError, match="syslog"):
            AuditSettings(syslog=bad)


def test_parse_when() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)
    assert parse_when("30m", now) == now - timedelta(minutes=30)
    assert parse_when("7d", now) == now - timedelta(days=7)
    assert parse_when("2026-12-01") == datetime(2026, 12, 1, tzinfo=timezone.utc)
    assert parse_when("2026-12-01T10:00:00+01:00").utcoffset() == timedelta(hours=1)
    with pytest.raises(ValueError, match="neither"):
        parse_when("yesterday")


def test_audit_command_filters_and_is_itself_audited(tmp_path: Path, db: Database) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        render_config({"storage": {"database_url": db.url, "spool_dir": str(tmp_path / "s")}})
    )
    old = datetime.now(timezone.utc) - timedelta(days=3)
    AuditStore(db).append(
        [
            AuditEntry("association-accepted", "E", actor="CT1", actor_kind="ae", at=old),
            AuditEntry("association-rejected", "E", outcome=4, actor="EVIL", actor_kind="ae"),
            AuditEntry("job-run", "E", study_instance_uid="1.2.3", detail={"job_id": 7}),
            AuditEntry("job-run", "E", study_instance_uid="1.2.4", detail={"job_id": 8}),
        ]
    )
    runner = CliRunner()

    def listed(*args: str) -> list[dict[str, object]]:
        result = runner.invoke(cli_main, ["-c", str(config), "audit", "--json", *args])
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in result.output.splitlines()]

    assert {e["event"] for e in listed()} == {"association-rejected", "job-run"}  # last 24 h
    assert len(listed("--since", "7d", "--event", "association-accepted")) == 1
    assert [e["actor"] for e in listed("--failures")] == ["EVIL"]
    (job,) = listed("--study", "1.2.4")
    assert job["detail"] == {"job_id": 8}
    table = runner.invoke(cli_main, ["-c", str(config), "audit", "--event", "job-run"])
    assert table.exit_code == 0, table.output
    assert "2 of 2 event(s)" in table.output and "job_id=7" in table.output
    bad = runner.invoke(cli_main, ["-c", str(config), "audit", "--since", "yesterday"])
    assert bad.exit_code == 2 and "neither a duration" in bad.output
    # Each listing was recorded as the audit log being used.
    reads = AuditStore(db).query(AuditFilter(events=["audit-read"]))
    assert len(reads) == 5
    assert all(r.actor_kind == "user" and r.detail["via"] == "cli" for r in reads)

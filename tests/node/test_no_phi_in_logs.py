"""No patient data in the node's logs or /metrics, in text and in JSON log format.

A real node (``dicom-node serve`` with the web server on) receives the
shared real DICOM data with DCMTK ``storescu`` (broken and edge files
included, so that error paths log) and two synthetic chest CTs carrying
distinctive patient attributes: one valid, one whose birth date and
accession number break their VRs (PS3.5 6.2), so that pydicom's warnings and
errors, which quote values, are provoked wherever the node reads or copies
them.  Rules send every CT to ct-lungs and radiographs to cxr-findings; the
results go to a DICOM archive (DCMTK ``storescp``) and to a DICOM
destination on a closed port (so the sender's retry and failure paths log).
When every job and delivery has ended, the PatientName, PatientID,
PatientBirthDate and AccessionNumber of every file sent are looked for in
every log line at INFO and above (and in every line that is no log record:
tracebacks and warnings a library prints) and in every line of ``/metrics``.

Which values are looked for (the rule): a value counts when it is
identifying, not when any log could hold it by chance:

* at least 5 characters (``^`` separators of a PersonName aside), and at
  least 6 when it is all digits (shorter numbers are counts, sizes, ports);
* not also the value of a non-patient attribute of the data sent (e.g.
  PatientName ``HEAD`` is BodyPartExamined too, a birth date can be a
  StudyDate: the node may log those);
* not a word of the node's own source code (``REMOVED``, ``Anonymous``:
  the node can print them unprompted).

UIDs are allowed in logs, so a value is matched as a whole token, after
every UID-like token (digits and dots) has been taken out of the line.
PersonName values are looked for whole, as shown (``^`` as spaces) and by
components (family, given) that pass the same rule.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config as pydicom_config
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Delivery, Instance, Job, Series
from tests.conftest import require_tool
from tests.support.chest_ct import write_chest_ct
from tests.support.peers import NodeProcess, dcmtk_env, free_port, storescu, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber")
PATIENT_TAGS = {0x00100010, 0x00100020, 0x00100030, 0x00080050}
NOT_DICOM = {".md", ".csv", ".txt", ".nrrd", ".json", ".py"}
LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL)\s"
)
UID_TOKEN = re.compile(r"(?<![\w.])\d+(?:\.\d+)+(?![\w.])")
SYNTHETIC = {
    "PatientName": "Phiwatch^Rosalind",
    "PatientID": "PHI-7734021",
    "PatientBirthDate": "19620417",
    "AccessionNumber": "ACC55102938",
}
"""The patient of the valid synthetic chest CT (its job succeeds and its results are sent)."""
BROKEN = {
    "PatientName": "Quaestor^Philomena",
    "PatientID": "PHI-5519-QX",
    "PatientBirthDate": "1961-02-03",
    "AccessionNumber": "ACC-5519-QX-TOO-LONG",
}
"""The patient of the second chest CT: the birth date is no DA (``YYYYMMDD``) and the
accession number is longer than SH allows (16), values pydicom quotes in its messages."""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = pytest.mark.timeout(600)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def shared_files(dicom_data: Path) -> list[Path]:
    """Every file of the shared data set that is meant as DICOM (broken ones included)."""
    return sorted(
        p
        for p in dicom_data.rglob("*")
        if p.is_file() and p.suffix.lower() not in NOT_DICOM and "LICENSES" not in p.parts
    )


def chest_ct_with_patient(folder: Path, patient: dict[str, str]) -> list[Path]:
    """The synthetic chest CT (new UIDs) with *patient*'s attributes, valid or not."""
    files = write_chest_ct(folder)
    with pydicom_config.disable_value_validation():
        for path in files:
            ds = pydicom.dcmread(path)
            for keyword, value in patient.items():
                setattr(ds, keyword, value)
            ds.save_as(path)
    return files


def _words_of_source() -> set[str]:
    words: set[str] = set()
    for pkg in ("dicom_node", "storage", "ai_models"):
        for path in (ROOT / pkg).rglob("*.py"):
            words.update(w.lower() for w in re.findall(r"[A-Za-z][A-Za-z0-9_-]+", path.read_text()))
    return words


def _meaningful(value: str, others: set[str], source_words: set[str]) -> bool:
    value = value.strip()
    if len(value.replace("^", "")) < 5:
        return False
    if value.isdigit() and len(value) < 6:
        return False
    return value not in others and value.lower() not in source_words


def patient_values(files: list[Path]) -> set[str]:
    """The identifying patient values of *files*, by the rule of this module's docstring."""
    found: set[str] = set()
    others: set[str] = set()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - unreadable files carry nothing we can look for
            continue
        for elem in list(ds):
            try:
                value = elem.value
            except Exception:  # noqa: BLE001 - a broken element
                continue
            if elem.VR == "SQ" or isinstance(value, bytes):
                continue
            text = str(value).strip()
            if int(elem.tag) in PATIENT_TAGS:
                if text:
                    found.add(text)
                    if elem.keyword == "PatientName":
                        found.add(" ".join(c.strip() for c in text.split("^") if c.strip()))
                        found.update(c.strip() for c in text.split("^") if c.strip())
            elif elem.tag.group != 0x0010:
                others.add(text)
    source_words = _words_of_source()
    return {v for v in found if _meaningful(v, others, source_words)}


def log_records(text: str, json_format: bool) -> list[tuple[int, str]]:
    """(level, text) of every record of a node log; lines that are no record (a library
    writing to stderr) count as WARNING: anyone reading the log sees them."""
    out: list[tuple[int, str]] = []
    for line in text.splitlines():
        if json_format:
            try:
                record = json.loads(line)
            except ValueError:
                out.append((LEVELS["WARNING"], line))
                continue
            out.append((LEVELS.get(record.get("level", ""), 30), json.dumps(record)))
            continue
        match = TEXT_LINE.match(line)
        if match:
            out.append((LEVELS[match.group(1)], line))
        elif out:  # a traceback's or a message's continuation
            out[-1] = (out[-1][0], out[-1][1] + "\n" + line)
        else:
            out.append((LEVELS["WARNING"], line))
    return out


def leaks(lines: list[str], values: set[str]) -> list[tuple[str, str]]:
    patterns = {v: re.compile(r"(?<![\w])" + re.escape(v) + r"(?![\w])") for v in values}
    found = []
    for line in lines:
        cleaned = UID_TOKEN.sub(" ", line)
        for value, pattern in patterns.items():
            if pattern.search(cleaned):
                found.append((value, line[:400]))
    return found


class StoreSCP:
    """DCMTK ``storescp``: the archive the node sends results to."""

    def __init__(self, folder: Path) -> None:
        exe = require_tool("storescp")
        folder.mkdir(parents=True)
        self.folder = folder
        self.port = free_port()
        with (folder / "storescp.log").open("wb") as log:
            self.proc = subprocess.Popen(
                [exe, "+xa", "-aet", "ARCHIVE", "-od", str(folder), str(self.port)],
                env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for_port(self.port, 30, self.proc)

    def received(self) -> list[Path]:
        return [p for p in self.folder.iterdir() if p.name != "storescp.log"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "archive")
    yield scp
    scp.stop()


@pytest.mark.parametrize("json_format", [False, True], ids=["text", "json"])
def test_no_patient_data_in_logs_or_metrics(
    dicom_data: Path, tmp_path: Path, archive: StoreSCP, json_format: bool
) -> None:
    workdir = tmp_path
    sent = shared_files(dicom_data)
    chest = chest_ct_with_patient(workdir / "chest", SYNTHETIC)
    broken = chest_ct_with_patient(workdir / "chest-broken", BROKEN)
    broken_series = str(pydicom.dcmread(broken[0], stop_before_pixels=True).SeriesInstanceUID)
    values = patient_values(sent + chest + broken)
    # The rule keeps real identifiers of the shared data and the synthetic patients.
    assert {"Doe^Archibald", "77654033", "19800707", "QIN-PROSTATE-01-0001"} <= values
    assert set(SYNTHETIC.values()) | set(BROKEN.values()) <= values
    assert {"Phiwatch Rosalind", "Rosalind", "Philomena"} <= values
    assert not {"HEAD", "REMOVED", "Anonymous"} & values

    port, web_port, closed = free_port(), free_port(), free_port()
    node = NodeProcess(
        workdir / "node",
        port,
        extra={
            "storage": {"results_dir": str(workdir / "results")},
            "log": {"json_format": json_format, "level": "INFO"},
            "web": {"enabled": True, "port": web_port},
            "worker": {
                "concurrency": 1,
                "device": "cpu",
                "lease_s": 10,
                "poll_interval_s": 0.2,
                "max_attempts": 2,
                "retry_base_s": 0.5,
            },
            "destinations": [
                {
                    "name": "archive",
                    "type": "dicom",
                    "ae_title": "ARCHIVE",
                    "host": "127.0.0.1",
                    "port": archive.port,
                    "max_attempts": 3,
                    "retry_base_s": 0.5,
                    "retry_max_s": 1.0,
                    "timeout_s": 10,
                },
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": "CLOSED",
                    "host": "127.0.0.1",
                    "port": closed,
                    "max_attempts": 2,
                    "retry_base_s": 0.5,
                    "retry_max_s": 0.5,
                    "timeout_s": 5,
                },
            ],
            "rules": [
                {
                    "name": "ct",
                    "match": {"Modality": "CT"},
                    "pipelines": ["ct-lungs"],
                    "destinations": ["archive", "pacs"],
                    "quiet_period_s": 2.0,
                    "outputs": ["seg", "sr", "sc"],
                },
                {
                    "name": "radiographs",
                    "match": {"Modality": {"any_of": ["CR", "DX", "RG"]}},
                    "pipelines": ["cxr-findings"],
                    "destinations": ["archive", "pacs"],
                    "quiet_period_s": 2.0,
                },
            ],
        },
    )
    node.start()
    db = Database(node.db_url)
    metrics = ""
    try:
        for group in (sent, chest, broken):
            storescu(port, group, calling_ae="PHI_TEST", timeout_s=300)
        wait_for(
            "every series collected, every job and delivery ended",
            lambda: (
                rows(db, select(Job.id))
                and not rows(
                    db,
                    select(Series.id).where(
                        (Series.collected_at.is_(None))
                        | (Series.last_received_at > Series.collected_at)
                    ),
                )
                and not rows(db, select(Job.id).where(Job.status.in_(["queued", "running"])))
                and rows(db, select(Delivery.id))
                and not rows(db, select(Delivery.id).where(Delivery.status == "pending"))
            ),
        )
        # The broken patient reached the node (its values are in its database).
        assert rows(
            db,
            select(func.count())
            .select_from(Instance)
            .join(Series, Series.id == Instance.series_id)
            .where(Series.series_instance_uid == broken_series)
            .having(func.count() == len(broken)),
        )
        statuses = {r.status for r in rows(db, select(Job.status))}
        assert "succeeded" in statuses  # the chest CT: results were written and sent
        assert {r.status for r in rows(db, select(Delivery.status))} == {"sent", "failed"}
        assert archive.received()
        base = f"http://127.0.0.1:{web_port}"
        for path in ("/", "/api/jobs", "/api/series", "/api/studies"):
            try:
                _NO_PROXY.open(base + path, timeout=30).read()
            except Exception:  # noqa: BLE001 - the page may not exist or need a login
                pass
        with _NO_PROXY.open(base + "/metrics", timeout=30) as response:
            metrics = response.read().decode()
    finally:
        db.dispose()
        node.terminate()
    assert "dicom_node" in metrics
    log = node.log()
    records = log_records(log, json_format)
    assert len(records) > 20, log[-2000:]
    if json_format:  # every line is a JSON record, library warnings included
        not_json = [line for line in log.splitlines() if not line.startswith("{")]
        assert not not_json, not_json[:10]
    shown = [line for level, line in records if level >= LEVELS["INFO"]]
    found = leaks(shown, values) + leaks(metrics.splitlines(), values)
    assert not found, "patient data in the log or /metrics:\n" + "\n".join(
        f"{value!r}: {line}" for value, line in found[:30]
    )


@pytest.mark.parametrize("phi", [False, True], ids=["phi-off", "phi-on"])
def test_phi_switch_names_the_patient_in_debug_lines_only(tmp_path: Path, phi: bool) -> None:
    """``[log] level = "DEBUG"``: with ``phi`` the stored-instance lines name the patient,
    without it no line does; lines at INFO and above never do."""
    chest = chest_ct_with_patient(tmp_path / "chest", SYNTHETIC)
    node = NodeProcess(
        tmp_path / "node",
        free_port(),
        extra={"log": {"json_format": True, "level": "DEBUG", "phi": phi}},
    )
    with node:
        result = storescu(node.port, chest, calling_ae="PHI_TEST", timeout_s=300)
        assert result.returncode == 0, result.stderr[-2000:]
    records = [json.loads(line) for line in node.log().splitlines() if line.startswith("{")]
    stored = [r for r in records if str(r["message"]).startswith("stored ")]
    assert len(stored) == len(chest)
    assert all(r["level"] == "DEBUG" for r in stored)
    named = [r for r in records if SYNTHETIC["PatientID"] in json.dumps(r)]
    if phi:
        assert {id(r) for r in named} == {id(r) for r in stored}
        assert all(SYNTHETIC["PatientName"] in r["message"] for r in stored)
        assert all(SYNTHETIC["AccessionNumber"] in r["message"] for r in stored)
    else:
        assert not named
        assert all("patient [hidden], patient id [hidden]" in r["message"] for r in stored)
    assert not [
        r
        for r in records
        if r["level"] != "DEBUG" and any(v in json.dumps(r) for v in SYNTHETIC.values())
    ]


def rows(db: Database, query: Any) -> list[Any]:
    with db.engine.connect() as conn:
        return list(conn.execute(query).all())

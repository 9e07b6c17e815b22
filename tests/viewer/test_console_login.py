"""The web console in a real browser: logins, roles, and markup from DICOM headers shown as text.

A real node (``dicom-node serve`` with the web server on, users made with
``dicom-node users add``) receives, from DCMTK ``storescu``, a copy of the
shared chest radiograph (NEMA WG04 RG1) whose PatientName and
SeriesDescription carry HTML and JavaScript (cxr-findings finds it out of its
training distribution and skips it), and a synthetic chest radiograph on
which cxr-findings runs; its results go to a DICOM destination on a closed
port that allows one attempt, so a delivery fails.  In headless Chromium
(Playwright):

* the operator logs in, sees the study with the markup as text (no dialog,
  no script ran, no image element was made), and retries the failed
  delivery with the dashboard's button;
* the viewer logs in, sees the patient name masked and no retry button, and
  is refused (403) when its browser posts the retry form anyway.

Both are in the audit trail.  Screenshots go to ``$DICOM_NODE_TEST_ARTIFACTS/viewer``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from storage.audit import AuditFilter, AuditStore
from storage.db import Database
from storage.models import Delivery
from tests.support.ohif import chromium_page
from tests.support.peers import NodeProcess, free_port, storescu, wait_for_port
from tests.support.radiographs import write_cxr

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_SERIES = "<script>window.__xss=1</script>"
USERS = {"olga": ("operator", "operator-password-1"), "victor": ("viewer", "viewer-password-22")}


def hostile_copy(dicom_data: Path, folder: Path) -> tuple[Path, str]:
    """The shared chest CR with markup in PatientName and SeriesDescription (new UIDs)."""
    ds = pydicom.dcmread(dicom_data / SOURCE)
    ds.PatientName = HOSTILE_NAME
    ds.SeriesDescription = HOSTILE_SERIES
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hostile.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def add_user(node: NodeProcess, name: str, role: str, password: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "-c", str(node.config_path),
         "users", "add", name, "--role", role, "--password-stdin"],
        cwd=ROOT, input=password + "\n", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout + result.stderr


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def deliveries(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return [row.status for row in conn.execute(select(Delivery.status))]


def log_in(page: Any, base: str, name: str) -> None:
    page.goto(base + "/")
    page.wait_for_url("**/login?next=*")
    page.fill("#username", name)
    page.fill("#password", USERS[name][1])
    page.click("button[type=submit]")
    page.wait_for_selector("#who")
    assert page.inner_text("#who") == f"{name} ({USERS[name][0]})"


def test_console_login_roles_and_hostile_headers(
    dicom_data: Path, tmp_path: Path, artifacts: Callable[[str, bytes], Path]
) -> None:
    storescu_path, study_uid = hostile_copy(dicom_data, tmp_path / "in")
    port, web_port, closed = free_port(), free_port(), free_port()
    node = NodeProcess(
        tmp_path / "node",
        port,
        extra={
            "storage": {"results_dir": str(tmp_path / "results")},
            "web": {"enabled": True, "port": web_port},
            "worker": {"concurrency": 1, "device": "cpu", "poll_interval_s": 0.2},
            "destinations": [
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": "CLOSED",
                    "host": "127.0.0.1",
                    "port": closed,
                    "max_attempts": 1,
                    "retry_base_s": 0.5,
                    "retry_max_s": 0.5,
                    "timeout_s": 5,
                }
            ],
            "rules": [
                {
                    "name": "chest",
                    "match": {"Modality": "CR"},
                    "pipelines": ["cxr-findings"],
                    "destinations": ["pacs"],
                    "quiet_period_s": 1.0,
                }
            ],
        },
    )
    node.workdir.mkdir(parents=True)
    node.write_config()
    for name, (role, password) in USERS.items():
        add_user(node, name, role, password)
    node.start()
    db = Database(node.db_url)
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_for_port(web_port, 30)
        phantom = write_cxr(tmp_path / "phantom")
        phantom_study = str(pydicom.dcmread(phantom, stop_before_pixels=True).StudyInstanceUID)
        sent = storescu(port, [storescu_path, phantom], calling_ae="XSS_TEST")
        assert sent.returncode == 0, sent.stderr
        try:
            wait_for("a failed delivery", lambda: "failed" in deliveries(db), 240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the node's log:\n{node.log()[-4000:]}") from None

        with chromium_page(tmp_path / "profile") as page:
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

            # -- the operator ---------------------------------------------------------------
            log_in(page, base, "olga")
            row = page.locator(f'#studies tr:has(td[title="{study_uid}"])')
            assert row.locator("td.patient-name").inner_text() == HOSTILE_NAME
            assert row.locator("td.series-description").inner_text() == HOSTILE_SERIES
            assert page.locator("#studies img, #studies script").count() == 0
            assert page.evaluate("typeof window.__xss") == "undefined"
            artifacts("console-operator.png", page.screenshot(full_page=True))
            retry = page.locator("#failed button", has_text="retry").first
            retry.click()
            page.wait_for_url("**/?retried=*&outcome=deliveries")
            assert "failed deliveries set to pending" in page.inner_text(".notice")
            artifacts("console-operator-retried.png", page.screenshot(full_page=True))
            wait_for("the retried delivery to be tried again and fail",
                     lambda: deliveries(db) and "pending" not in deliveries(db), 120)
            page.click("#logout")
            page.wait_for_url("**/login")

            # -- the viewer -----------------------------------------------------------------
            log_in(page, base, "victor")
            assert HOSTILE_NAME not in page.content()
            row = page.locator(f'#studies tr:has(td[title="{study_uid}"])')
            assert row.locator("td.patient-name .masked").count() == 1
            assert row.locator("td.series-description").inner_text() == HOSTILE_SERIES
            assert page.locator("#failed button", has_text="retry").count() == 0
            artifacts("console-viewer.png", page.screenshot(full_page=True))
            job_id = page.locator("#failed td a").first.inner_text()
            # The browser posts the operator's form anyway (with the viewer's CSRF token).
            page.evaluate(
                """([jobId]) => {
                    const form = document.createElement('form');
                    form.method = 'post';
                    form.action = `/api/jobs/${jobId}/retry?then=dashboard`;
                    const token = document.querySelector('input[name=csrf_token]').cloneNode();
                    form.appendChild(token);
                    document.body.appendChild(form);
                    form.submit();
                }""",
                [job_id],
            )
            page.wait_for_url("**/retry?then=dashboard")
            assert "this needs the operator role" in page.content()
            artifacts("console-viewer-refused.png", page.screenshot(full_page=True))
            assert dialogs == []
            assert page.evaluate("typeof window.__xss") == "undefined"

        store = AuditStore(db)
        wait_for("the audit events", lambda: store.count(AuditFilter(actor="victor")) >= 2, 30)
        actions = store.query(AuditFilter(events=["admin-action"]))
        assert [(e.actor, e.detail.get("action"), e.outcome) for e in actions] == [
            ("olga", "retry", 0)
        ]
        assert actions[0].study_instance_uid == phantom_study  # the job with the failed delivery
        assert actions[0].address == "127.0.0.1"
        denied = store.query(AuditFilter(events=["access-denied"]))
        assert [(e.actor, e.detail.get("path")) for e in denied] == [
            ("victor", f"/api/jobs/{job_id}/retry")
        ]
        logins = store.query(AuditFilter(events=["login"]))
        assert sorted(e.actor or "" for e in logins) == ["olga", "victor"]
        assert [e.actor for e in store.query(AuditFilter(events=["logout"]))] == ["olga"]
        changed = store.query(AuditFilter(events=["user-changed"]))
        assert sorted(e.detail.get("target_user") for e in changed) == ["olga", "victor"]
        for entry in store.query(limit=1000):
            text = str(entry.as_dict())
            assert HOSTILE_NAME not in text
            assert all(pw not in text for _role, pw in USERS.values())
    finally:
        db.dispose()
        node.terminate()

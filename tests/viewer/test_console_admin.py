"""The admin's console in a real browser: find a study, open its job and preview, see
why a series was not routed, retry a failed delivery, dry-run the rules.

A real node (``dicom-node serve``, web on, an operator made with
``dicom-node users add``) receives from DCMTK ``storescu`` a synthetic chest
radiograph (which the rule ``chest`` sends through cxr-findings) and, in the
same study, a real MR slice of the shared data (QIN prostate ADC) that no
rule matches.  Results go to a DICOM destination on a closed port that
allows one attempt, so their delivery fails.  In headless Chromium
(Playwright) the operator:

* logs in and searches the studies by patient ID;
* opens the study: the CR series names the rule it matched, the MR series
  says that no rule matched and why (``Modality = 'MR', wanted CR``);
* opens the job: its timeline, the delivery error with its root cause
  (``connection refused by 127.0.0.1:<port>``) and the preview image
  rendered by the node;
* retries the failed delivery through the confirmation page;
* dry-runs the rules on the MR series from the rules page.

Screenshots go to ``$DICOM_NODE_TEST_ARTIFACTS/viewer``; one of them is the
README's picture of the console (``docs/console-job.png``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from dicom_node.results.common import DEVICE_UID_PREFIX
from storage.audit import AuditFilter, AuditStore
from storage.db import Database
from tests.support.ohif import chromium_page
from tests.support.peers import NodeProcess, free_port, storescu, wait_for_port
from tests.support.radiographs import write_cxr
from tests.viewer.test_console_login import USERS, add_user, deliveries, wait_for

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
MR_FILE = "dcmqi/qin-prostate-01-0001_adc/000010.dcm"
OPERATOR = ("olga", USERS["olga"][1])


def mr_in_study(dicom_data: Path, cxr: Path, folder: Path) -> tuple[Path, str]:
    """The shared MR slice, moved into the radiograph's study (same patient)."""
    source = pydicom.dcmread(cxr, stop_before_pixels=True)
    ds = pydicom.dcmread(dicom_data / MR_FILE)
    ds.StudyInstanceUID = source.StudyInstanceUID
    ds.PatientID = source.PatientID
    ds.PatientName = source.PatientName
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SeriesInstanceUID)


def test_console_find_explain_preview_retry_dry_run(
    dicom_data: Path, tmp_path: Path, artifacts: Callable[[str, bytes], Path]
) -> None:
    port, web_port, closed = free_port(), free_port(), free_port()
    node = NodeProcess(
        tmp_path / "node",
        port,
        extra={
            "storage": {"results_dir": str(tmp_path / "results")},
            "web": {"enabled": True, "port": web_port,
                    "viewer_url": "http://127.0.0.1:3000/viewer?StudyInstanceUIDs={study}"},
            "worker": {"concurrency": 1, "device": "cpu", "poll_interval_s": 0.2},
            "destinations": [
                {"name": "pacs", "type": "dicom", "ae_title": "CLOSED", "host": "127.0.0.1",
                 "port": closed, "max_attempts": 1, "retry_base_s": 0.5, "retry_max_s": 0.5,
                 "timeout_s": 5},
            ],
            "rules": [
                {"name": "chest", "match": {"Modality": "CR"}, "pipelines": ["cxr-findings"],
                 "destinations": ["pacs"], "quiet_period_s": 1.0},
            ],
        },
    )
    node.workdir.mkdir(parents=True)
    node.write_config()
    add_user(node, OPERATOR[0], "operator", OPERATOR[1])
    node.start()
    db = Database(node.db_url)
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_for_port(web_port, 30)
        cxr = write_cxr(tmp_path / "cxr")
        header = pydicom.dcmread(cxr, stop_before_pixels=True)
        study_uid, patient_id = str(header.StudyInstanceUID), str(header.PatientID)
        mr, mr_series = mr_in_study(dicom_data, cxr, tmp_path / "mr")
        sent = storescu(port, [cxr, mr], calling_ae="MODALITY")
        assert sent.returncode == 0, sent.stderr
        try:
            wait_for("a failed delivery", lambda: "failed" in deliveries(db), 240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the node's log:\n{node.log()[-4000:]}") from None

        with chromium_page(tmp_path / "profile") as page:
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.set_viewport_size({"width": 1400, "height": 1000})
            page.goto(base + "/studies")
            page.wait_for_url("**/login?next=*")
            page.fill("#username", OPERATOR[0])
            page.fill("#password", OPERATOR[1])
            page.click("button[type=submit]")
            page.wait_for_selector("#study-search")

            # -- find the study -----------------------------------------------------------
            page.fill("input[name=text]", patient_id)
            page.click("#study-search button[type=submit]")
            page.wait_for_selector("#study-list")
            rows = page.locator("#study-list tbody tr")
            assert rows.count() == 1
            assert "CR, MR" in rows.first.inner_text()
            artifacts("console-studies.png", page.screenshot(full_page=True))
            rows.first.locator("a").first.click()
            page.wait_for_selector("#study-uid")
            assert page.inner_text("#study-uid") == study_uid

            # -- why the MR was not routed ------------------------------------------------------
            mr_section = page.locator(f'section.series[data-uid="{mr_series}"]')
            wait_for("the MR judged by the collector",
                     lambda: (page.reload(), mr_section.locator(".routing").count())[1], 30)
            assert "no rule matched" in mr_section.locator(".routing-summary").inner_text()
            assert "Modality = 'MR', wanted CR" in mr_section.locator(".routing").inner_text()
            cr_section = page.locator("section.series", has_text="matched chest")
            assert cr_section.count() == 1
            artifacts("console-study.png", page.screenshot(full_page=True))

            # -- the job: timeline, root cause, preview -----------------------------------------
            cr_section.locator("a", has_text="job").first.click()
            page.wait_for_selector("#timeline")
            steps = page.inner_text("#timeline")
            for step in ("last instance received", "complete", "queued", "started",
                         "results written", "finished: succeeded"):
                assert step in steps, steps
            errors = page.locator("td.delivery-error").all_inner_texts()
            assert errors and all(f"connection refused by 127.0.0.1:{closed}" in e for e in errors)
            page.wait_for_function(
                "() => { const i = document.querySelector('#preview');"
                " return i && i.complete && i.naturalWidth > 0; }", timeout=60_000)
            assert page.locator("#open-viewer").get_attribute("href") == (
                f"http://127.0.0.1:3000/viewer?StudyInstanceUIDs={study_uid}")
            shot = page.screenshot(full_page=True)
            artifacts("console-job.png", shot)
            if os.environ.get("DICOM_NODE_UPDATE_DOCS"):
                (ROOT / "docs" / "console-job.png").write_bytes(shot)

            # -- retry the failed delivery, confirmed ---------------------------------------------
            page.click("#action-retry")
            page.wait_for_selector("#confirm")
            artifacts("console-confirm.png", page.screenshot(full_page=True))
            page.click("#confirm-button")
            page.wait_for_selector("#notice")
            assert "failed deliverie(s) set to pending" in page.inner_text("#notice")
            wait_for("the retried deliveries to be tried again",
                     lambda: deliveries(db) and "pending" not in deliveries(db), 120)

            # -- dry-run on the MR series -----------------------------------------------------
            page.click("#nav a:text('rules')")
            page.wait_for_selector("#rules")
            page.fill("#dry-run-series input[name=series]", mr_series)
            page.click("#dry-run-series button[type=submit]")
            page.wait_for_selector("#dry-run")
            assert "no rule matches" in page.inner_text("#dry-run-title")
            assert "wanted CR" in page.inner_text("#dry-run")
            artifacts("console-dry-run.png", page.screenshot(full_page=True))

            # -- pipelines and the live overview -------------------------------------------------
            page.click("#nav a:text('pipelines')")
            row = page.locator('#pipelines tr[data-pipeline="cxr-findings"]')
            cells = row.locator("td").all_inner_texts()
            assert cells[4].startswith(DEVICE_UID_PREFIX), cells  # read from its SR
            assert "succeeded" in cells[7] and ("warm" in cells[8] or "cold" in cells[8])
            page.click("#nav a:text('live overview')")
            page.wait_for_selector("#live")
            assert page.inner_text("#kpi-associations b") == "0"  # this process receives
            assert "GiB" in page.inner_text("#kpi-disk")
            artifacts("console-overview.png", page.screenshot(full_page=True))
            assert dialogs == []

        store = AuditStore(db)
        wait_for("the retry's audit event",
                 lambda: store.count(AuditFilter(events=["admin-action"])) >= 1, 30)
        (retry,) = store.query(AuditFilter(events=["admin-action"]))
        assert (retry.actor, retry.detail.get("action")) == ("olga", "retry")
        assert retry.study_instance_uid == study_uid
    finally:
        db.dispose()
        node.terminate()
        shutil.rmtree(tmp_path / "profile", ignore_errors=True)

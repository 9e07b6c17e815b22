"""The console's pages and actions over HTTP, on a real SQLite database.

The application is driven in-process (Starlette's TestClient); the echo test
talks to a real DCMTK ``storescp`` and a closed port.  What a browser does
with the pages is in ``tests/viewer/test_console_admin.py``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from dicom_node import audit
from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.web import create_app
from storage.audit import AuditFilter, AuditStore
from storage.db import Database
from storage.jobs import DeliveryQueue
from storage.models import Job, Series
from storage.received import ReceivedStore
from storage.spool import Spool
from storage.users import UserStore
from tests.node.test_delivery_peers import start_storescp, stop_later  # noqa: F401,F811
from tests.node.test_web import CT, MR, STUDY, fill, node_settings
from tests.node.test_web_users import login_form, post_login
from tests.support.peers import free_port

PASSWORD = "a long enough passphrase"
CT_FILE = "dcm_qa_ct/GE_HiSpeedDual_head_tilted/01.dcm"


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Settings, Database, int, int]]:
    """A filled node (see :func:`tests.node.test_web.fill`) with its auditor installed."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    settings = node_settings(tmp_path, url, free_port())
    db = Database(url)
    db.upgrade()
    store = ReceivedStore(db, Spool(settings.storage.spool_dir, fsync=False))
    succeeded, failed = fill(settings, db, store)
    auditor = audit.Auditor([audit.DatabaseSink(db)])
    old = audit.install(auditor)
    try:
        yield settings, db, succeeded, failed
    finally:
        auditor.close()
        audit.install(old)
        db.dispose()


def client(settings: Settings, db: Database) -> TestClient:
    return TestClient(create_app(settings, db), base_url="http://localhost",
                      follow_redirects=False)


def text_of(page: str) -> str:
    """What a reader sees: tags dropped, entities decoded, spaces collapsed."""
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


def admin_events(db: Database) -> list[Any]:
    assert audit.auditor().flush(10)
    return AuditStore(db).query(AuditFilter(events=("admin-action",)), limit=100)


def test_every_page_renders_escaped_under_the_strict_csp(node: Any) -> None:
    settings, db, succeeded, failed = node
    web = client(settings, db)
    pages = ["/", "/studies", f"/studies/{STUDY}", f"/jobs/{succeeded}", f"/jobs/{failed}",
             "/rules", f"/rules?series={CT}", "/destinations", "/pipelines", "/config",
             "/overview"]
    for path in pages:
        page = web.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert "script-src 'none'" in page.headers["content-security-policy"]
        assert "<script>" not in page.text, path
        assert 'id="nav"' in page.text
    study = web.get(f"/studies/{STUDY}").text
    assert "&lt;script&gt;alert(" in study  # the hostile SeriesDescription, as text
    job = web.get(f"/jobs/{failed}").text
    assert "<img src=x" not in job  # the job's error, escaped: shown as text
    assert "RuntimeError: <img src=x onerror=alert(1)>" in text_of(job)
    assert web.get("/studies/1.2.3").status_code == 404
    assert web.get("/jobs/9999").status_code == 404


def test_study_search_and_paging(node: Any) -> None:
    settings, db, _, _ = node
    web = client(settings, db)
    found = web.get("/studies", params={"text": "PAT-1"}).text  # open node: PHI searchable
    assert STUDY in found and "1 study" in text_of(found)
    assert "No study matches" in web.get("/studies", params={"text": "nobody"}).text
    assert STUDY in web.get("/studies", params={"state": "failed", "modality": "mr"}).text
    assert STUDY not in web.get("/studies", params={"date_from": "2025-01-01"}).text
    bad = text_of(web.get("/studies", params={"date_to": "May", "state": "sideways"}).text)
    assert "to: a date as YYYY-MM-DD" in bad and "state: one of unrouted" in bad


def test_the_study_page_says_why_the_mr_was_not_routed(node: Any) -> None:
    settings, db, _, _ = node
    Collector(db, settings).complete(MR)  # judged (forced), matching no rule
    web = client(settings, db)
    page = web.get(f"/studies/{STUDY}").text
    section = page[page.index(f'data-uid="{MR}"'):]
    section = section[: section.find("</section>")]
    words = text_of(section)
    assert "no rule matched" in words
    assert "Modality = 'MR', wanted CT" in words
    with db.engine.connect() as conn:
        kept = conn.execute(select(Series.routing).where(Series.series_instance_uid == MR))
        assert kept.scalar_one()["rules"][0]["matched"] is False
    unrouted = web.get("/studies", params={"state": "unrouted"}).text
    assert STUDY in unrouted


def test_actions_are_confirmed_done_and_audited(node: Any) -> None:
    settings, db, succeeded, failed = node
    web = client(settings, db)
    confirm = web.get("/actions/cancel", params={"target": succeeded})
    assert confirm.status_code == 200 and 'action="/actions/cancel"' in confirm.text
    done = web.post("/actions/cancel", data={"target": str(succeeded)})
    assert done.status_code == 303
    back = f"/jobs/{succeeded}?done=cancel%3Adeliveries&target={succeeded}&n=1"
    assert done.headers["location"] == back
    shown = text_of(web.get(done.headers["location"]).text)
    assert f"job {succeeded}: 1 pending deliverie(s) cancelled" in shown
    # A crafted link shows only the fixed sentences, never its own text.
    crafted = web.get(f"/jobs/{succeeded}", params={"done": "call 555-0100", "target": "x"})
    assert "555-0100" not in crafted.text
    # retry the failed job, then re-run is refused while a job of the series is queued
    retried = web.post("/actions/retry", data={"target": str(failed)})
    assert retried.headers["location"].startswith(f"/jobs/{failed}?done=retry%3Ajob")
    busy = web.post("/actions/rerun", data={"target": str(succeeded), "pipeline": "ct-lungs"})
    assert "done=rerun%3Abusy" in busy.headers["location"]
    # pause a destination: its deliveries wait; resume
    paused = web.post("/actions/pause", data={"target": "archive", "kind": "destination"})
    back = "/destinations?done=pause%3Adone&target=destination+archive"
    assert paused.headers["location"] == back
    assert "paused" in web.get("/destinations").text
    assert web.post("/actions/pause", data={"target": "nope", "kind": "destination"}
                    ).status_code == 404
    web.post("/actions/resume", data={"target": "archive", "kind": "destination"})
    # pause a rule, then force completion of the MR: "paused" is not said, nothing matched
    web.post("/actions/pause", data={"target": "ct-chest", "kind": "rule"})
    forced = web.post("/actions/complete", data={"target": CT})
    assert forced.status_code == 303 and "complete%3Apaused" in forced.headers["location"]
    assert forced.headers["location"].startswith(f"/studies/{STUDY}?")
    with db.engine.connect() as conn:
        statuses = dict(conn.execute(select(Job.id, Job.status)).all())
    assert statuses[failed] == "queued" and len(statuses) == 2
    actions = [(e.detail["action"], e.outcome) for e in admin_events(db)]
    assert ("cancel", 0) in actions and ("retry", 0) in actions and ("pause", 0) in actions
    assert ("rerun", 4) in actions  # refusals are audited too
    assert ("pause", 4) not in actions  # the unknown name was refused before any change


def test_a_viewer_sees_the_pages_but_cannot_act(node: Any) -> None:
    settings, db, succeeded, _ = node
    UserStore(db).add("victor", PASSWORD, "viewer")
    web = client(settings, db)
    logged = post_login(web, "victor", PASSWORD, login_form(web))
    assert logged.status_code == 303
    assert web.get("/studies").status_code == 200
    listing = web.get("/studies", params={"text": "PAT-1"}).text
    assert "No study matches" in listing  # patient IDs are not searched for this role
    assert "PAT-1" not in web.get(f"/studies/{STUDY}").text
    assert 'id="job-actions"' not in web.get(f"/jobs/{succeeded}").text
    assert web.get("/actions/cancel", params={"target": succeeded}).status_code == 403
    token = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/").text)
    assert token is not None
    refused = web.post("/actions/cancel", data={"target": str(succeeded),
                                                 "csrf_token": token.group(1)})
    assert refused.status_code == 403


def test_dry_run_on_an_uploaded_file(node: Any, dicom_data: Path) -> None:
    settings, db, _, _ = node
    web = client(settings, db)
    with (dicom_data / CT_FILE).open("rb") as f:
        page = web.post("/rules/dry-run", files={"file": ("ct.dcm", f, "application/dicom")},
                        data={"calling_ae": "CT_SCANNER"})
    assert page.status_code == 200, page.text[:400]
    words = text_of(page.text)
    assert "Dry-run of uploaded file ct.dcm: ct-chest" in words
    assert "match.Modality: Modality = 'CT', wanted CT" in words
    bad = web.post("/rules/dry-run", files={"file": ("x.dcm", b"not dicom", "application/dicom")})
    assert bad.status_code == 400 and "not a DICOM file" in bad.text


def test_configuration_page_masks_secrets(tmp_path: Path, node: Any) -> None:
    settings, db, _, _ = node
    secret = settings.model_copy(update={
        "web": settings.web.model_copy(update={"token": SecretStr("s3cret-token-value")}),
        "storage": settings.storage.model_copy(
            update={"database_url": "postgresql://node:pg-password@db.example/node"}),
    })
    page = client(secret, db).get("/config", headers={"Authorization": "Bearer s3cret-token-value"})
    assert page.status_code == 200
    assert "s3cret-token-value" not in page.text and "pg-password" not in page.text
    assert "postgresql://node:***@db.example/node" in page.text
    assert 'id="config-ok"' in page.text or 'id="config-problems"' in page.text


def test_echo_names_the_root_cause(
    tmp_path: Path, node: Any, stop_later: list[Any]  # noqa: F811
) -> None:
    settings, db, _, _ = node
    proc, port = start_storescp(tmp_path / "archive")
    stop_later.append(proc)
    closed = free_port()
    dests = [
        {"name": "pacs", "type": "dicom", "ae_title": "ARCHIVE", "host": "127.0.0.1",
         "port": port},
        {"name": "gone", "type": "dicom", "ae_title": "GONE", "host": "127.0.0.1",
         "port": closed, "timeout_s": 5},
    ]
    configured = Settings.model_validate({**settings.model_dump(), "destinations": dests,
                                          "rules": []})
    web = client(configured, db)
    ok = text_of(web.post("/destinations/echo", data={"target": "pacs"}).text)
    assert re.search(r"echo: success in [\d.]+ ms", ok)
    down = text_of(web.post("/destinations/echo", data={"target": "gone"}).text)
    assert f"echo: failed: connection refused by 127.0.0.1:{closed}" in down
    assert DeliveryQueue(db).claim_batch("host:1:s", destination="gone") == []


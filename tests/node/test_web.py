"""The web surface served by :class:`WebServer` on a free loopback port, queried with urllib.

The database (SQLite, and PostgreSQL when one is reachable) is filled through
the real code paths: received instances, a forced completion, jobs claimed and
finished with result rows, deliveries recorded as the sender records them.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy import select

from dicom_node.collect import Collector
from dicom_node.config import Settings
from dicom_node.web import WebServer, WebServerError, create_app
from storage.db import Database
from storage.jobs import DeliveryOutcome, DeliveryQueue, JobQueue, NewResult
from storage.models import Delivery, Job
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool
from tests.storage.conftest import postgres_url  # noqa: F401  (fixture)

STUDY = "1.2.826.0.1.3680043.8.498.7"
CT = f"{STUDY}.1"
MR = f"{STUDY}.2"
CT_LATE = f"{STUDY}.3"
HOSTILE = '<script>alert("x")</script>&<b>'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node_settings(tmp_path: Path, url: str, port: int) -> Settings:
    return Settings.model_validate(
        {
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": url,
                "fsync": False,
            },
            "web": {"host": "127.0.0.1", "port": port},
            "destinations": [
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 4242,
                },
                {"name": "archive", "type": "folder", "path": str(tmp_path / "out")},
            ],
            "rules": [
                {
                    "name": "ct-chest",
                    "match": {"Modality": "CT"},
                    "pipelines": ["ct-lungs", "ct-other"],
                    "destinations": ["pacs"],
                    "outputs": ["seg", "sr", "sc"],
                }
            ],
        }
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    return str(request.getfixturevalue("postgres_url"))


@dataclass
class Node:
    settings: Settings
    db: Database
    store: ReceivedStore
    web: WebServer
    succeeded: int
    failed: int

    def url(self, path: str) -> str:
        return self.web.url + path


def receive(store: ReceivedStore, sop: str, series: str, modality: str, desc: str) -> None:
    record = InstanceRecord(
        study_instance_uid=STUDY,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality=modality,
        series_description=desc,
        study_description="CHEST",
        study_date="20240101",
        patient_id="PAT-1",
        attributes={"Modality": modality},
        calling_ae="CT_SCANNER",
    )
    store.store(record, store.spool.write_temp([sop.encode()]))


def new_result(job_id: int, kind: str) -> NewResult:
    return NewResult(
        kind=kind,
        source_series_uid=CT,
        study_instance_uid=STUDY,
        series_instance_uid=f"2.25.{job_id}9{len(kind)}",
        sop_instance_uid=f"2.25.{job_id}1{('seg', 'sr', 'sc').index(kind)}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
        path=f"job-{job_id}/{kind}.dcm",
        size_bytes=100,
    )


def fill(settings: Settings, db: Database, store: ReceivedStore) -> tuple[int, int]:
    """Three CT instances (one re-sent) and one MR; two jobs: one succeeded, one failed.

    The succeeded job's deliveries to ``pacs``: SEG sent, SR refused (0xA900,
    failed for good), SC pending after a retryable failure.
    """
    for i in range(3):
        receive(store, f"{CT}.{i}", CT, "CT", HOSTILE)
    receive(store, f"{CT}.0", CT, "CT", HOSTILE)  # the same bytes again
    receive(store, f"{MR}.0", MR, "MR", "T1")
    job_ids = Collector(db, settings).complete(CT).job_ids
    queue = JobQueue(db)
    ok = queue.claim("host:1:w", job_id=job_ids[0])
    assert ok is not None and ok.pipeline == "ct-lungs"
    queue.complete(
        ok,
        [new_result(ok.id, "seg"), new_result(ok.id, "sr"), new_result(ok.id, "sc")],
        {"read": 0.5, "infer": 2.0, "write": 0.25},
    )
    bad = queue.claim("host:1:w", job_id=job_ids[1])
    assert bad is not None
    queue.fail(bad, "RuntimeError: <img src=x onerror=alert(1)>", {"read": 0.1}, retryable=False)
    sender = DeliveryQueue(db)
    batch = {d.kind: d for d in sender.claim_batch("host:1:s")}
    assert set(batch) == {"seg", "sr", "sc"}
    sender.record(
        "host:1:s",
        [
            DeliveryOutcome(batch["seg"].id, True, 0x0000),
            DeliveryOutcome(batch["sr"].id, False, 0xA900, "refused: <bad>", retry=False),
            DeliveryOutcome(batch["sc"].id, False, None, "peer down", retry=True),
        ],
        max_attempts=5,
        retry_base_s=300,
        retry_max_s=600,
    )
    return ok.id, bad.id


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    settings = node_settings(tmp_path, database_url, free_port())
    db = Database(database_url)
    db.upgrade()
    store = ReceivedStore(db, Spool(settings.storage.spool_dir, fsync=False))
    succeeded, failed = fill(settings, db, store)
    web = WebServer(settings, db, store=store)
    web.start()
    try:
        yield Node(settings, db, store, web, succeeded, failed)
    finally:
        web.stop()
        db.dispose()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def call(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, Any, str]:
    """(status, headers, body text) of one request; errors are answers too."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def get_json(url: str, method: str = "GET", **kw: Any) -> tuple[int, Any]:
    status, headers, body = call(url, method, **kw)
    assert headers["content-type"].startswith("application/json"), body
    return status, json.loads(body)


# -- API ----------------------------------------------------------------------------------
def test_health(node: Node) -> None:
    status, body = get_json(node.url("/api/health"))
    assert status == 200
    assert body["status"] == "ok" and body["database"] is True
    assert body["schema_revision"] == node.db.head_revision() == body["schema_head"]


def test_studies(node: Node) -> None:
    status, body = get_json(node.url("/api/studies?limit=10"))
    assert status == 200
    (study,) = body
    assert study["study_instance_uid"] == STUDY and study["study_description"] == "CHEST"
    series = {s["series_instance_uid"]: s for s in study["series"]}
    assert series[CT]["instances"] == 3 and series[CT]["series_description"] == HOSTILE
    assert series[MR]["instances"] == 1 and series[MR]["modality"] == "MR"
    assert series[CT]["bytes"] == sum(len(f"{CT}.{i}") for i in range(3))
    status, body = get_json(node.url("/api/studies?limit=0"))
    assert status == 422 and isinstance(body["detail"], str) and "limit" in body["detail"]


def test_jobs_list_filter_and_detail(node: Node) -> None:
    status, body = get_json(node.url("/api/jobs"))
    assert status == 200
    assert [j["id"] for j in body] == [node.failed, node.succeeded]  # newest first
    ok = body[1]
    assert ok["status"] == "succeeded" and ok["pipeline"] == "ct-lungs"
    assert ok["series_instance_uids"] == [CT] and ok["study_instance_uid"] == STUDY
    assert ok["results"] == 3
    assert ok["deliveries"] == {"sent": 1, "failed": 1, "pending": 1}
    assert ok["timings"] == {"read": 0.5, "infer": 2.0, "write": 0.25}

    status, body = get_json(node.url("/api/jobs?status=failed&limit=5"))
    assert status == 200 and [j["id"] for j in body] == [node.failed]
    assert body[0]["error"].startswith("RuntimeError: <img")
    status, body = get_json(node.url("/api/jobs?status=bogus"))
    assert status == 422 and "status" in body["detail"]

    status, job = get_json(node.url(f"/api/jobs/{node.succeeded}"))
    assert status == 200
    assert job["status"] == "succeeded" and job["attempts"] == 1
    by_kind = {r["kind"]: r for r in job["result_objects"]}
    assert set(by_kind) == {"seg", "sr", "sc"}
    (seg,) = by_kind["seg"]["deliveries"]
    assert (seg["destination"], seg["status"], seg["attempts"]) == ("pacs", "sent", 1)
    assert seg["last_status"] == 0 and seg["sent_at"] is not None
    (sr,) = by_kind["sr"]["deliveries"]
    assert (sr["status"], sr["last_status"], sr["last_status_hex"]) == ("failed", 0xA900, "0xA900")
    assert sr["error"] == "refused: <bad>"
    (sc,) = by_kind["sc"]["deliveries"]
    assert (sc["status"], sc["last_status"], sc["error"]) == ("pending", None, "peer down")

    status, body = get_json(node.url("/api/jobs/999999"))
    assert (status, body) == (404, {"detail": "no job 999999"})
    status, body = get_json(node.url("/api/nothing-here"))
    assert status == 404 and "detail" in body


def test_retry_semantics(node: Node) -> None:
    retry = node.url("/api/jobs/{}/retry")
    status, body = get_json(retry.format(node.failed), "POST")
    assert (status, body) == (200, {"job_id": node.failed, "retried": "job", "count": 1})
    status, body = get_json(retry.format(node.failed), "POST")
    assert status == 409 and "queued" in body["detail"]  # nothing to retry now

    status, body = get_json(retry.format(node.succeeded), "POST")
    assert (status, body) == (200, {"job_id": node.succeeded, "retried": "deliveries", "count": 1})
    status, body = get_json(retry.format(node.succeeded), "POST")
    assert status == 409 and "no failed delivery" in body["detail"]

    status, body = get_json(retry.format(999999), "POST")
    assert (status, body) == (404, {"detail": "no job 999999"})
    status, _body = get_json(node.url(f"/api/jobs/{node.failed}/retry"), "GET")
    assert status == 405

    with node.db.engine.connect() as conn:
        job = conn.execute(select(Job.status, Job.attempts).where(Job.id == node.failed)).one()
        statuses = sorted(conn.execute(select(Delivery.status)).scalars())
    assert tuple(job) == ("queued", 0)
    assert statuses == ["pending", "pending", "sent"]


def test_cross_site_post_is_refused(node: Node) -> None:
    url = node.url(f"/api/jobs/{node.failed}/retry")
    status, body = get_json(url, "POST", headers={"Origin": "http://evil.example"})
    assert (status, body) == (403, {"detail": "cross-site request refused"})
    status, body = get_json(node.url(f"/api/complete/{CT}"), "POST", headers={"Origin": "null"})
    assert status == 403
    status, body = get_json(url, "POST", headers={"Origin": node.web.url})
    assert status == 200 and body["retried"] == "job"


def test_retry_form_redirects_to_the_dashboard(node: Node) -> None:
    url = node.url(f"/api/jobs/{node.succeeded}/retry?then=dashboard")
    status, headers, _ = call(url, "POST", headers={"Origin": node.web.url})
    assert status == 303
    location = headers["location"]
    assert location == f"/?retried={node.succeeded}&outcome=deliveries"
    status, _, page = call(node.url(location))
    assert status == 200 and f"job {node.succeeded}: failed deliveries set to pending" in page
    status, headers, _ = call(url, "POST")
    assert status == 303 and headers["location"].endswith("outcome=nothing")


def test_complete(node: Node) -> None:
    status, body = get_json(node.url(f"/api/complete/{CT}"), "POST")
    assert status == 200
    assert body["job_ids"] == [] and body["completed"] == []
    assert body["unchanged"] == [f"series {CT} rule ct-chest"]

    receive(node.store, f"{CT_LATE}.0", CT_LATE, "CT", "late")
    status, body = get_json(node.url(f"/api/complete/{CT_LATE}"), "POST")
    assert status == 200 and len(body["job_ids"]) == 2
    assert body["completed"] == [f"series {CT_LATE} rule ct-chest rev 0"]
    with node.db.engine.connect() as conn:
        queued = conn.execute(
            select(Job.pipeline).where(Job.id.in_(body["job_ids"]), Job.status == "queued")
        ).scalars()
        assert sorted(queued) == ["ct-lungs", "ct-other"]

    status, body = get_json(node.url(f"/api/complete/{STUDY}"), "POST")  # a study UID
    assert status == 200 and body["job_ids"] == []
    status, body = get_json(node.url("/api/complete/1.2.3.999"), "POST")
    assert status == 404 and "1.2.3.999" in body["detail"]


# -- metrics ------------------------------------------------------------------------------
def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_hold_the_database_numbers(node: Node) -> None:
    status, headers, text = call(node.url("/metrics"))
    assert status == 200 and headers["content-type"].startswith("text/plain")
    m = samples(text)

    def v(name: str, **labels: str) -> float:
        return m[("dicom_node_" + name, tuple(sorted(labels.items())))]

    assert v("database_up") == 1
    assert v("studies_received_total") == 1
    assert v("series_received_total") == 2
    assert v("instances_received_total") == 4
    assert v("instance_receptions_total") == 5  # one instance arrived twice
    assert v("received_bytes_total") == sum(len(f"{CT}.{i}") for i in range(3)) + len(f"{MR}.0")
    assert v("results_written_total", kind="seg") == 1
    assert v("jobs", status="succeeded") == 1 and v("jobs", status="failed") == 1
    assert v("jobs", status="queued") == 0 and v("jobs", status="running") == 0
    assert v("deliveries", destination="pacs", status="sent") == 1
    assert v("deliveries", destination="pacs", status="failed") == 1
    assert v("deliveries", destination="pacs", status="pending") == 1
    assert v("deliveries", destination="archive", status="pending") == 0  # configured, unused
    assert v("queue_depth", queue="jobs") == 0
    assert v("queue_depth", queue="deliveries") == 0  # the pending one backs off 300 s
    assert 0 <= v("oldest_pending_delivery_age_seconds", destination="pacs") < 600
    assert v("oldest_pending_delivery_age_seconds", destination="archive") == 0
    assert v("recent_jobs", pipeline="ct-lungs", status="succeeded") == 1
    assert v("recent_jobs", pipeline="ct-other", status="failed") == 1
    for q in ("0.5", "0.95", "1"):
        assert v("recent_job_stage_seconds", pipeline="ct-lungs", stage="infer", quantile=q) == 2
    assert v("recent_job_stage_seconds", pipeline="ct-other", stage="read", quantile="1") == 0.1
    assert v("recent_job_stage_seconds", pipeline="ct-lungs", stage="run", quantile="1") >= 0

    # Read at scrape time: a retry shows at once.
    call(node.url(f"/api/jobs/{node.failed}/retry"), "POST")
    m = samples(call(node.url("/metrics"))[2])
    assert v("jobs", status="failed") == 0 and v("jobs", status="queued") == 1
    assert v("queue_depth", queue="jobs") == 1
    assert v("oldest_queued_job_age_seconds") >= 0


# -- dashboard ----------------------------------------------------------------------------
def test_dashboard_escapes_what_it_shows(node: Node) -> None:
    status, headers, page = call(node.url("/"))
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in headers["content-security-policy"]
    # With "no-referrer" browsers send "Origin: null" on the retry form, which is refused.
    assert headers["referrer-policy"] == "same-origin"
    assert HOSTILE not in page and "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;&lt;b&gt;" in page
    assert "RuntimeError: &lt;img src=x onerror=alert(1)&gt;" in page
    assert "refused: &lt;bad&gt;" in page and "0xA900" in page
    assert 'http-equiv="refresh"' in page
    for job_id in (node.succeeded, node.failed):  # failed job, and failed delivery
        assert f'action="/api/jobs/{job_id}/retry?then=dashboard"' in page
    assert "PAT-1" not in page  # no patient identifiers on the page
    assert "http://" not in page and "https://" not in page  # no external assets
    status, _, _ = call(node.url("/?retried=1&outcome=<x>"))
    assert status == 422
    assert call(node.url("/favicon.ico"))[0] == 204


# -- the server ---------------------------------------------------------------------------
@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[tuple[Settings, Database]]:
    settings = node_settings(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", free_port())
    db = Database(settings.storage.database_url)
    db.upgrade()
    try:
        yield settings, db
    finally:
        db.dispose()


def test_stop_frees_the_port_in_bounded_time(sqlite_db: tuple[Settings, Database]) -> None:
    settings, db = sqlite_db
    web = WebServer(settings, db)
    web.start()
    assert web.running and web.port == settings.web.port
    idle = http.client.HTTPConnection("127.0.0.1", web.port, timeout=5)  # kept alive
    idle.request("GET", "/api/health")
    assert idle.getresponse().read()
    t0 = time.monotonic()
    web.stop()
    assert time.monotonic() - t0 < 5
    assert not web.running
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", web.port), timeout=1).close()
    with socket.socket() as sock:  # free again for a listener (as any server binds it)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", web.port))
        sock.listen(1)
    web.stop()  # idempotent
    again = WebServer(settings, db)
    again.start()
    assert call(again.url + "/api/health")[0] == 200
    again.stop()


def test_port_in_use_fails_at_start(sqlite_db: tuple[Settings, Database]) -> None:
    settings, db = sqlite_db
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", settings.web.port))
        busy.listen(1)
        web = WebServer(settings, db)
        with pytest.raises(WebServerError, match="cannot listen"):
            web.start()
        assert not web.running


def test_unmigrated_database_is_unhealthy_and_metrics_say_down(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, f"sqlite:///{tmp_path / 'empty.db'}", free_port())
    db = Database(settings.storage.database_url)
    web = WebServer(settings, db, app=create_app(settings, db))
    web.start()
    try:
        status, body = get_json(web.url + "/api/health")
        assert status == 503 and body["status"] == "error" and body["schema_revision"] is None
        assert "schema" in body["problem"]
        m = samples(call(web.url + "/metrics")[2])
        assert m[("dicom_node_database_up", ())] == 0
        status, body = get_json(web.url + "/api/jobs")
        assert status == 503 and body == {"detail": "database unavailable; try again"}
    finally:
        web.stop()
        db.dispose()


# -- access: [web] token ----------------------------------------------------------------
TOKEN = "s3cret-token-for-the-web-0123"


def test_token_guards_everything_but_health(
    sqlite_db: tuple[Settings, Database], caplog: pytest.LogCaptureFixture
) -> None:
    import base64

    settings, db = sqlite_db
    guarded = settings.model_copy(
        update={"web": settings.web.model_copy(update={"token": SecretStr(TOKEN)})}
    )
    web = WebServer(guarded, db)
    with caplog.at_level("INFO", logger="dicom_node.web.server"):
        web.start()
    try:
        assert "token required" in caplog.text
        basic = base64.b64encode(f"admin:{TOKEN}".encode()).decode()
        wrong = base64.b64encode(b"admin:not-the-token").decode()
        for path, method in (
            ("/", "GET"),
            ("/api/jobs", "GET"),
            ("/api/studies", "GET"),
            ("/metrics", "GET"),
            ("/api/openapi.json", "GET"),
            ("/api/jobs/1/retry", "POST"),
            ("/api/complete/1.2.3", "POST"),
            ("/api/health", "POST"),
        ):
            status, headers, body = call(web.url + path, method)
            assert status == 401, (path, status, body)
            assert headers["www-authenticate"].startswith("Basic"), path
            for bad in (f"Bearer {TOKEN[:-1]}", f"Basic {wrong}", "Bearer", TOKEN, "Basic !!"):
                assert call(web.url + path, method, {"Authorization": bad})[0] == 401, (path, bad)
        assert call(web.url + "/api/health")[0] == 200  # liveness probes stay open
        for auth in (f"Bearer {TOKEN}", f"Basic {basic}", f"bearer  {TOKEN}"):
            for path in ("/", "/api/jobs", "/metrics"):
                status, _, body = call(web.url + path, headers={"Authorization": auth})
                assert status == 200, (path, auth, body)
        status, _, page = call(web.url + "/", headers={"Authorization": f"Bearer {TOKEN}"})
        assert "token required" in page
    finally:
        web.stop()


def test_token_settings(tmp_path: Path) -> None:
    base = node_settings(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", free_port())
    raw = base.model_dump(mode="json")
    with pytest.raises(ValueError, match="at least 16 characters"):
        Settings.model_validate({**raw, "web": {**raw["web"], "token": "short"}})
    ok = Settings.model_validate({**raw, "web": {**raw["web"], "token": TOKEN}})
    assert ok.web.token is not None and TOKEN not in repr(ok.web)  # kept out of logs
    # Beyond loopback without a token, the node refuses to serve (tests/node/test_web_hosts.py).
    open_wide = base.model_copy(
        update={"web": base.web.model_copy(update={"host": "0.0.0.0"})}
    )
    db = Database(base.storage.database_url)
    db.upgrade()
    web = WebServer(open_wide, db)
    try:
        with pytest.raises(WebServerError, match=r"\[web\] token"):
            web.start()
        assert not web.running
    finally:
        web.stop()
        db.dispose()

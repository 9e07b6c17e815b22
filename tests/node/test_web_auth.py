"""Users, roles, sessions, CSRF, single sign-on and their audit trail, over HTTP.

The application runs in-process (Starlette's TestClient, real HTTP semantics
through httpx) over a real SQLite database filled through the real code paths
(:func:`tests.node.test_web.fill`); the auditor writes to the same database.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import select

from dicom_node import audit
from dicom_node.config import Settings
from dicom_node.web import WebServer, WebServerError, create_app
from dicom_node.web.login import LoginThrottle
from dicom_node.web.server import refuse_open_listener
from storage.audit import AuditEntry, AuditFilter, AuditStore
from storage.db import Database
from storage.models import WebSession, WebUser
from storage.received import InstanceRecord, ReceivedStore
from storage.spool import Spool
from storage.users import (
    DuplicateUser,
    PasswordTooShort,
    UnknownUser,
    UserStore,
    hash_password,
    token_sha256,
    verify_password,
)
from tests.node.test_web import STUDY, fill, free_port, node_settings

OPERATOR, VIEWER = "olga", "victor"
OPERATOR_PW, VIEWER_PW = "operator-password-1", "viewer-password-22"
TOKEN = "machine-token-0123456789abcdef"
NAME_STUDY = "1.2.826.0.1.3680043.8.498.99"
HOSTILE_NAME = "<img src=x onerror=alert(1)>^Doe"
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Web:
    settings: Settings
    db: Database
    succeeded: int
    failed: int

    def client(self, settings: Settings | None = None, *,
               address: str = "127.0.0.1") -> TestClient:
        app = create_app(settings or self.settings, self.db)
        return TestClient(app, base_url="http://localhost", follow_redirects=False,
                          client=(address, 50000))

    def events(self, *names: audit.AuditEvent) -> list[AuditEntry]:
        assert audit.auditor().flush(10)
        return AuditStore(self.db).query(AuditFilter(events=[n.value for n in names]), limit=500)


def with_web(settings: Settings, **web: Any) -> Settings:
    return settings.model_copy(update={"web": settings.web.model_copy(update=web)})


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    settings = node_settings(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", free_port())
    db = Database(settings.storage.database_url)
    db.upgrade()
    store = ReceivedStore(db, Spool(settings.storage.spool_dir, fsync=False))
    succeeded, failed = fill(settings, db, store)
    record = InstanceRecord(
        study_instance_uid=NAME_STUDY,
        series_instance_uid=f"{NAME_STUDY}.1",
        sop_instance_uid=f"{NAME_STUDY}.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        patient_id="PID-77",
        patient_name=HOSTILE_NAME,
        accession_number="ACC-9",
        calling_ae="CT_SCANNER",
    )
    store.store(record, store.spool.write_temp([b"x"]))
    users = UserStore(db)
    users.add(OPERATOR, OPERATOR_PW, "operator")
    users.add(VIEWER, VIEWER_PW, "viewer")
    auditor = audit.auditor_from_settings(settings.audit, db)
    previous = audit.install(auditor)
    try:
        yield Web(settings, db, succeeded, failed)
    finally:
        auditor.close()
        audit.install(previous)
        db.dispose()


def log_in(client: TestClient, name: str, password: str, next_: str = "/") -> httpx.Response:
    page = client.get("/login")
    assert page.status_code == 200, page.text
    token = CSRF_FIELD.search(page.text)
    assert token is not None
    return client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": token.group(1), "next": next_})


def csrf_of(client: TestClient) -> str:
    """The session's CSRF token, as the dashboard's forms carry it."""
    page = client.get("/")
    assert page.status_code == 200, page.text
    found = CSRF_FIELD.search(page.text)
    assert found is not None
    return found.group(1)


def set_cookies(response: httpx.Response) -> list[str]:
    return response.headers.get_list("set-cookie")


# -- storage: hashing, users, sessions ---------------------------------------------------
def test_passwords_are_argon2id_hashes_and_sessions_sha256(web: Web) -> None:
    hashed = hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$") and "correct horse" not in hashed
    assert hashed != hash_password("correct horse battery")  # salted
    assert verify_password(hashed, "correct horse battery")
    assert not verify_password(hashed, "correct horse batterY")
    assert not verify_password("not a hash", "correct horse battery")
    with pytest.raises(PasswordTooShort):
        hash_password("short")
    users = UserStore(web.db)
    with pytest.raises(DuplicateUser):
        users.add(OPERATOR, "another-password-1", "viewer")
    with pytest.raises(UnknownUser):
        users.set_role("nobody", "operator")
    with pytest.raises(ValueError, match="role"):
        users.add("newone", "another-password-1", "admin")
    with web.db.sessions() as session:
        stored = session.scalar(select(WebUser.password_hash).where(WebUser.username == OPERATOR))
    assert stored is not None and stored.startswith("$argon2id$") and OPERATOR_PW not in stored
    with web.client() as client:
        response = log_in(client, OPERATOR, OPERATOR_PW)
        assert response.status_code == 303
        token = client.cookies["dicom_node_session"]
    with web.db.sessions() as session:
        digests = list(session.scalars(select(WebSession.token_sha256)))
    assert digests == [token_sha256(token)] and token not in digests


# -- open, or closed -----------------------------------------------------------------------
def test_with_users_nothing_is_open_but_health_and_login(web: Web) -> None:
    with web.client() as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/login").status_code == 200
        page = client.get("/?x=1")
        assert page.status_code == 303 and page.headers["location"] == "/login?next=%2F%3Fx%3D1"
        for path in ("/api/jobs", "/api/studies", "/metrics", "/api/audit", "/api/openapi.json"):
            assert client.get(path).status_code == 401, path
        assert client.post(f"/api/jobs/{web.failed}/retry").status_code == 401


def test_without_users_loopback_stays_open_and_beyond_needs_a_user(tmp_path: Path) -> None:
    settings = node_settings(tmp_path, f"sqlite:///{tmp_path / 'open.db'}", free_port())
    db = Database(settings.storage.database_url)
    db.upgrade()
    try:
        client = TestClient(create_app(settings, db), base_url="http://localhost",
                            follow_redirects=False)
        assert client.get("/api/jobs").status_code == 200  # open, as before users
        wide = with_web(settings, host="0.0.0.0")
        with pytest.raises(WebServerError, match="users add"):
            refuse_open_listener(wide.web, 0)
        with pytest.raises(WebServerError):
            WebServer(wide, db).start()
        UserStore(db).add(OPERATOR, OPERATOR_PW, "operator")
        refuse_open_listener(wide.web, 1)  # a user closes it
        assert client.get("/api/jobs").status_code == 401  # at once, no restart
        server = WebServer(wide, db)
        server.start()
        try:
            assert httpx.get(f"http://127.0.0.1:{server.port}/api/jobs").status_code == 401
        finally:
            server.stop()
    finally:
        db.dispose()


# -- login, logout, cookies ------------------------------------------------------------------
def test_login_sets_a_strict_http_only_cookie_and_logout_ends_the_session(web: Web) -> None:
    with web.client() as client:
        response = log_in(client, OPERATOR, OPERATOR_PW, next_="/audit")
        assert response.status_code == 303 and response.headers["location"] == "/audit"
        session = [c for c in set_cookies(response) if c.startswith("dicom_node_session=")]
        assert len(session) == 1
        attributes = [a.strip().lower() for a in session[0].split(";")]
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert "secure" not in attributes and "path=/" in attributes  # plain HTTP on loopback
        page = client.get("/")
        assert page.status_code == 200 and f"{OPERATOR} (operator)" in page.text
        csrf = csrf_of(client)
        assert client.post("/logout", data={}).status_code == 403  # CSRF needed to log out
        out = client.post("/logout", data={"csrf_token": csrf})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert client.get("/").status_code == 303
    # An old cookie is worth nothing after the logout.
    with web.client() as client:
        log_in(client, OPERATOR, OPERATOR_PW)
        stolen = client.cookies["dicom_node_session"]
        client.post("/logout", data={"csrf_token": csrf_of(client)})
    with web.client() as other:
        other.cookies.set("dicom_node_session", stolen)
        assert other.get("/api/jobs").status_code == 401
    logins = web.events(audit.AuditEvent.LOGIN)
    logouts = web.events(audit.AuditEvent.LOGOUT)
    assert len(logins) == 2 and {e.actor for e in logins} == {OPERATOR}
    assert logins[0].address == "127.0.0.1" and logins[0].detail["role"] == "operator"
    assert len(logouts) == 2 and logouts[0].actor == OPERATOR


def test_offsite_next_is_not_followed(web: Web) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        with web.client() as client:
            response = log_in(client, OPERATOR, OPERATOR_PW, next_=target)
            assert response.status_code == 303 and response.headers["location"] == "/", target


@pytest.mark.parametrize(
    ("update", "headers", "address", "secure"),
    [
        ({"cookie_secure": True}, {}, "127.0.0.1", True),
        ({"trusted_proxies": ["10.0.0.5"]}, {"X-Forwarded-Proto": "https"}, "10.0.0.5", True),
        ({"trusted_proxies": ["10.0.0.5"]}, {"X-Forwarded-Proto": "https"}, "10.0.0.6", False),
    ],
)
def test_secure_cookie_over_https_or_when_configured(
    web: Web, update: dict[str, Any], headers: dict[str, str], address: str, secure: bool
) -> None:
    settings = with_web(web.settings, **update)
    with web.client(settings, address=address) as client:
        page = client.get("/login", headers=headers)
        login_cookie = [c for c in set_cookies(page) if c.startswith("dicom_node_login=")]
        assert login_cookie and ("Secure" in login_cookie[0]) is secure
        token = CSRF_FIELD.search(page.text)
        assert token is not None
        # httpx keeps Secure cookies for https only: repeat the login cookie by hand.
        response = client.post(
            "/login",
            data={"username": OPERATOR, "password": OPERATOR_PW, "csrf_token": token.group(1)},
            headers={**headers, "Cookie": f"dicom_node_login={token.group(1)}"},
        )
        assert response.status_code == 303, response.text
        cookie = [c for c in set_cookies(response) if c.startswith("dicom_node_session=")][0]
        assert ("; Secure" in cookie) is secure, cookie


def test_wrong_password_is_refused_audited_and_throttled(web: Web) -> None:
    settings = with_web(web.settings, login_max_failures=4, login_failure_delay_s=0)
    with web.client(settings) as client:
        for _ in range(3):
            response = log_in(client, OPERATOR, "not-the-password")
            assert response.status_code == 401
            assert "Wrong user name or password" in response.text
            assert "dicom_node_session" not in client.cookies
        assert log_in(client, "nobody-here", "not-the-password").status_code == 401
        # The address is blocked now (4 failures), even with the right password.
        blocked = log_in(client, OPERATOR, OPERATOR_PW)
        assert blocked.status_code == 429 and "dicom_node_session" not in client.cookies
        # Without the form's token, no login at all.
        forged = client.post("/login", data={"username": VIEWER, "password": VIEWER_PW})
        assert forged.status_code == 403
    failures = web.events(audit.AuditEvent.LOGIN_FAILED)
    assert len(failures) == 6
    assert all(e.outcome == audit.Outcome.MINOR_FAILURE for e in failures)
    reasons = [e.detail["reason"] for e in reversed(failures)]
    assert reasons[:3] == ["wrong password"] * 3 and reasons[3] == "unknown user"
    assert "too many" in reasons[4] and "token" in reasons[5]
    for entry in failures:
        assert "not-the-password" not in str(entry.as_dict())
        assert OPERATOR_PW not in str(entry.as_dict())


def test_throttle_window() -> None:
    throttle = LoginThrottle(2, 0.5)
    throttle.failed("user:a", "address:x")
    assert throttle.blocked_for("user:a") == 0
    throttle.failed("user:a", "address:x")
    assert 0 < throttle.blocked_for("user:a") <= 0.5
    assert throttle.blocked_for("address:x") > 0 and throttle.blocked_for("user:b") == 0
    time.sleep(0.6)
    assert throttle.blocked_for("user:a", "address:x") == 0


def test_sessions_expire_when_idle_and_at_their_end(web: Web) -> None:
    idle = with_web(web.settings, session_idle_minutes=1.0 / 60)  # one second
    with web.client(idle) as client:
        log_in(client, VIEWER, VIEWER_PW)
        assert client.get("/api/jobs").status_code == 200
        time.sleep(1.3)
        assert client.get("/api/jobs").status_code == 401
    short = with_web(web.settings, session_max_hours=1.5 / 3600)  # 1.5 seconds
    with web.client(short) as client:
        log_in(client, VIEWER, VIEWER_PW)
        for _ in range(3):  # in use all the time, and still it ends
            assert client.get("/api/jobs").status_code == 200
            time.sleep(0.3)
        time.sleep(0.8)
        assert client.get("/api/jobs").status_code == 401
    with web.db.sessions() as session:  # expired sessions are deleted
        assert list(session.scalars(select(WebSession.id))) == []


def test_retry_of_a_purged_job_is_409_with_its_reason(web: Web) -> None:
    from sqlalchemy import update

    from storage.models import Job, utcnow

    with web.db.session() as session:  # as storage.retention marks a job whose files it deleted
        session.execute(update(Job).where(Job.id == web.failed).values(purged_at=utcnow()))
    with web.client() as client:
        log_in(client, OPERATOR, OPERATOR_PW)
        csrf = csrf_of(client)
        retry = f"/api/jobs/{web.failed}/retry"
        refused = client.post(retry, headers={"X-CSRF-Token": csrf})
        assert refused.status_code == 409, refused.text
        assert "retention deleted" in refused.json()["detail"]
        form = client.post(f"{retry}?then=dashboard", data={"csrf_token": csrf})
        assert form.status_code == 303 and "outcome=purged" in form.headers["location"]
        assert "files were purged" in client.get(form.headers["location"]).text
    actions = web.events(audit.AuditEvent.ADMIN_ACTION)
    assert [(e.detail["refused"], e.outcome) for e in actions] == [("purged", 4)] * 2


# -- CSRF and roles ---------------------------------------------------------------------------
def test_changes_need_the_csrf_token(web: Web) -> None:
    with web.client() as client:
        log_in(client, OPERATOR, OPERATOR_PW)
        csrf = csrf_of(client)
        retry = f"/api/jobs/{web.failed}/retry"
        assert client.post(retry).status_code == 403
        assert client.post(retry, headers={"X-CSRF-Token": csrf[:-1] + "x"}).status_code == 403
        assert client.post(retry, data={"csrf_token": "wrong"}).status_code == 403
        assert client.post(f"/api/complete/{STUDY}").status_code == 403
        ok = client.post(retry, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200 and ok.json()["retried"] == "job"
        again = client.post(retry, headers={"X-CSRF-Token": csrf})
        assert again.status_code == 409  # queued now: nothing to retry
        form = client.post(f"{retry}?then=dashboard", data={"csrf_token": csrf})
        assert form.status_code == 303 and "outcome=nothing" in form.headers["location"]
    denied = web.events(audit.AuditEvent.ACCESS_DENIED)
    assert len(denied) == 4 and all("CSRF" in e.detail["reason"] for e in denied)
    actions = web.events(audit.AuditEvent.ADMIN_ACTION)
    assert [(e.detail["action"], e.outcome) for e in reversed(actions)] == [
        ("retry", 0), ("retry", 4), ("retry", 4)
    ]
    first = actions[-1]
    assert first.actor == OPERATOR and first.actor_kind == "user" and first.address == "127.0.0.1"
    assert first.detail["job_id"] == web.failed and first.study_instance_uid == STUDY


def test_viewer_reads_but_may_not_change(web: Web) -> None:
    with web.client() as client:
        log_in(client, VIEWER, VIEWER_PW)
        assert client.get("/api/jobs").status_code == 200
        assert client.get(f"/api/jobs/{web.failed}").status_code == 200
        page = client.get("/")
        assert page.status_code == 200 and "/retry" not in page.text  # no retry buttons
        assert 'href="/audit"' not in page.text
        csrf = csrf_of(client)
        for path in (f"/api/jobs/{web.failed}/retry", f"/api/complete/{STUDY}"):
            response = client.post(path, headers={"X-CSRF-Token": csrf})
            assert response.status_code == 403 and "operator" in response.json()["detail"]
        assert client.get("/api/audit").status_code == 403
        assert client.get("/audit").status_code == 403
    denied = web.events(audit.AuditEvent.ACCESS_DENIED)
    assert len(denied) == 4 and {e.actor for e in denied} == {VIEWER}
    assert {e.detail["path"] for e in denied} == {
        f"/api/jobs/{web.failed}/retry", f"/api/complete/{STUDY}", "/api/audit", "/audit"
    }
    assert web.events(audit.AuditEvent.ADMIN_ACTION) == []
    with web.client() as client:  # the job was not retried
        log_in(client, OPERATOR, OPERATOR_PW)
        assert client.get(f"/api/jobs/{web.failed}").json()["status"] == "failed"


def test_role_change_counts_at_the_next_request(web: Web) -> None:
    with web.client() as client:
        log_in(client, VIEWER, VIEWER_PW)
        csrf = csrf_of(client)
        retry = f"/api/jobs/{web.failed}/retry"
        assert client.post(retry, headers={"X-CSRF-Token": csrf}).status_code == 403
        UserStore(web.db).set_role(VIEWER, "operator")
        assert client.post(retry, headers={"X-CSRF-Token": csrf}).status_code == 200
        UserStore(web.db).set_disabled(VIEWER, True)
        assert client.get("/api/jobs").status_code == 401


# -- PHI ----------------------------------------------------------------------------------------
def test_patient_identifiers_are_masked_outside_phi_roles(web: Web) -> None:
    with web.client() as client:
        log_in(client, VIEWER, VIEWER_PW)
        studies = {s["study_instance_uid"]: s for s in client.get("/api/studies").json()}
        assert studies[NAME_STUDY]["patient_id"] == "***" and studies[STUDY]["patient_id"] == "***"
        page = client.get("/").text
        for secret in ("PID-77", "PAT-1", "ACC-9", "Doe"):
            assert secret not in page, secret
        assert "hidden for this role" in page
    with web.client() as client:
        log_in(client, OPERATOR, OPERATOR_PW)
        studies = {s["study_instance_uid"]: s for s in client.get("/api/studies").json()}
        assert studies[NAME_STUDY]["patient_id"] == "PID-77"
        page = client.get("/").text
        assert "PID-77" in page and "ACC-9" in page
        assert "&lt;img src=x onerror=alert(1)&gt;^Doe" in page and "<img" not in page
    everyone = with_web(web.settings, phi_roles=["viewer", "operator"])
    with web.client(everyone) as client:
        log_in(client, VIEWER, VIEWER_PW)
        assert "PID-77" in client.get("/").text


def test_pages_carry_a_strict_csp(web: Web) -> None:
    with web.client() as client:
        login_page = client.get("/login")
        log_in(client, OPERATOR, OPERATOR_PW)
        for response in (login_page, client.get("/"), client.get("/audit")):
            csp = response.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src 'none'" in csp
            nonce = re.search(r"'nonce-([^']+)'", csp)
            assert nonce is not None and f'<style nonce="{nonce.group(1)}">' in response.text
            assert "<script" not in response.text
            assert "frame-ancestors 'none'" in csp and response.headers["x-frame-options"] == "DENY"


# -- machines, single sign-on ----------------------------------------------------------------
def test_bearer_token_is_an_operator_without_csrf(web: Web) -> None:
    settings = with_web(web.settings, token=SecretStr(TOKEN))
    with web.client(settings) as client:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/api/audit", headers=bearer).status_code == 200
        response = client.post(f"/api/jobs/{web.failed}/retry", headers=bearer)
        assert response.status_code == 200 and response.json()["retried"] == "job"
        wrong = {"Authorization": f"Bearer {TOKEN[:-1]}"}
        assert client.post(f"/api/jobs/{web.succeeded}/retry", headers=wrong).status_code == 401
        assert client.get("/").status_code == 303  # people still log in
    actions = web.events(audit.AuditEvent.ADMIN_ACTION)
    assert len(actions) == 1 and actions[0].actor == "token" and actions[0].actor_kind == "node"


def test_token_as_basic_password_needs_the_csrf_token_for_changes(web: Web) -> None:
    """Browsers resend Basic credentials to forged requests too; Bearer they never add."""
    settings = with_web(web.settings, token=SecretStr(TOKEN))
    basic = {"Authorization": "Basic " + base64.b64encode(f"any:{TOKEN}".encode()).decode()}
    with web.client(settings) as client:
        page = client.get("/", headers=basic)
        assert page.status_code == 200 and "token required" in page.text
        csrf = CSRF_FIELD.search(page.text)
        assert csrf is not None
        retry = f"/api/jobs/{web.failed}/retry?then=dashboard"
        assert client.post(retry, headers=basic).status_code == 403
        done = client.post(retry, headers=basic, data={"csrf_token": csrf.group(1)})
        assert done.status_code == 303 and "outcome=job" in done.headers["location"]


def test_proxy_header_is_believed_only_from_trusted_addresses(web: Web) -> None:
    settings = with_web(
        web.settings, trusted_proxy_header="X-Remote-User", trusted_proxies=["10.0.0.0/24"]
    )
    as_operator = {"X-Remote-User": OPERATOR}
    with web.client(settings, address="10.0.0.9") as client:
        page = client.get("/", headers=as_operator)
        assert page.status_code == 200 and f"{OPERATOR} (operator)" in page.text
        csrf = CSRF_FIELD.search(page.text)
        assert csrf is not None
        retry = f"/api/jobs/{web.failed}/retry"
        assert client.post(retry, headers=as_operator).status_code == 403  # CSRF still needed
        ok = client.post(retry, headers={**as_operator, "X-CSRF-Token": csrf.group(1)})
        assert ok.status_code == 200
        assert client.get("/api/jobs", headers={"X-Remote-User": VIEWER}).status_code == 200
        refused = client.get("/api/jobs", headers={"X-Remote-User": "stranger"})
        assert refused.status_code == 403  # no local user, no default role
    with web.client(settings, address="10.0.1.9") as client:  # not a trusted proxy
        assert client.get("/api/jobs", headers=as_operator).status_code == 401
        assert client.get("/", headers=as_operator).status_code == 303
    with web.client(settings, address="127.0.0.1") as client:
        assert client.get("/api/jobs", headers=as_operator).status_code == 401
    default = with_web(settings, proxy_default_role="viewer")
    with web.client(default, address="10.0.0.9") as client:
        stranger = {"X-Remote-User": "stranger"}
        assert client.get("/api/jobs", headers=stranger).status_code == 200
        page = client.get("/", headers=stranger)
        assert "stranger (viewer)" in page.text and "/retry" not in page.text
    logins = web.events(audit.AuditEvent.LOGIN)
    assert {(e.actor, e.detail["via"]) for e in logins} >= {
        (OPERATOR, "proxy"), (VIEWER, "proxy"), ("stranger", "proxy")
    }
    action = web.events(audit.AuditEvent.ADMIN_ACTION)[0]
    assert action.actor == OPERATOR and action.detail["via"] == "proxy"


# -- the audit trail ------------------------------------------------------------------------------
def test_operators_read_the_audit_trail_and_reading_is_audited(web: Web) -> None:
    with web.client() as client:
        log_in(client, OPERATOR, OPERATOR_PW)
        csrf = csrf_of(client)
        client.post(f"/api/jobs/{web.failed}/retry", headers={"X-CSRF-Token": csrf})
        assert audit.auditor().flush(10)
        body = client.get("/api/audit", params={"event": "admin-action"}).json()
        assert body["total"] == 1 and body["events"][0]["detail"]["job_id"] == web.failed
        assert body["events"][0]["study_instance_uid"] == STUDY
        everything = client.get("/api/audit", params={"limit": 2}).json()
        assert len(everything["events"]) == 2 and everything["total"] >= 3
        times = [e["at"] for e in everything["events"]]
        assert times == sorted(times, reverse=True)  # newest first
        page = client.get("/audit", params={"study": STUDY})
        assert page.status_code == 200 and "admin-action" in page.text and "login" not in [
            cell for cell in re.findall(r"<td>([^<]*)</td>", page.text)
        ]
        by_actor = client.get("/audit", params={"actor": "nobody"})
        assert "No event." in by_actor.text
    reads = web.events(audit.AuditEvent.AUDIT_READ)
    assert len(reads) == 4 and {e.actor for e in reads} == {OPERATOR}
    assert {e.detail["via_page"] for e in reads} == {"api", "dashboard"}


def test_audit_page_is_paged(web: Web) -> None:
    auditor = audit.auditor()
    for i in range(120):
        auditor.record(audit.AuditEvent.ADMIN_ACTION, actor=f"seed-{i:03d}", actor_kind="user")
    assert auditor.flush(10)
    with web.client() as client:
        log_in(client, OPERATOR, OPERATOR_PW)
        first = client.get("/audit", params={"event": "admin-action"}).text
        assert "page 1 of 3" in first and "seed-119" in first and "seed-069" not in first
        assert 'href="/audit?event=admin-action&amp;page=2"' in first
        third = client.get("/audit", params={"event": "admin-action", "page": 3}).text
        assert "seed-000" in third and "seed-119" not in third

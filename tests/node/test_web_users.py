"""Local web users: storage.users (argon2id, sessions), the users CLI, and the login page.

Everything runs against a real SQLite database (and the login page against
the real application, through FastAPI's TestClient); audit rows are read
back from the ``audit_event`` table.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from dicom_node import audit
from dicom_node.cli import main
from dicom_node.config import Settings
from dicom_node.web import create_app
from dicom_node.web.login import LoginThrottle, safe_next
from storage.audit import AuditFilter, AuditStore
from storage.db import Database
from storage.jobs import as_utc
from storage.models import WebSession, WebUser, utcnow
from storage.users import (
    MIN_PASSWORD_LENGTH,
    DuplicateUser,
    PasswordTooShort,
    UnknownUser,
    UserError,
    UserStore,
    token_sha256,
    verify_password,
)
from tests.storage.conftest import postgres_url  # noqa: F401  (fixture)

PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another long passphrase"
HOUR = timedelta(hours=1)


@pytest.fixture()
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'node.db'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'users.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    database = Database(url)
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture()
def trail(db: Database) -> Iterator[audit.Auditor]:
    """An auditor writing to the test database, installed for the test."""
    auditor = audit.Auditor([audit.DatabaseSink(db)])
    old = audit.install(auditor)
    yield auditor
    auditor.close()
    audit.install(old)


def events(db: Database, auditor: audit.Auditor, *names: str) -> list[Any]:
    assert auditor.flush(10)
    return AuditStore(db).query(AuditFilter(events=names), limit=100)


# -- storage.users -------------------------------------------------------------------------
def test_passwords_are_kept_as_argon2id_hashes(any_db: Database) -> None:
    db = any_db
    users = UserStore(db)
    info = users.add("alice", PASSWORD, "operator")
    assert (info.username, info.role, info.disabled) == ("alice", "operator", False)
    with db.sessions() as session:
        stored = session.scalar(select(WebUser.password_hash).where(WebUser.username == "alice"))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored
    assert verify_password(stored, PASSWORD) and not verify_password(stored, OTHER_PASSWORD)
    assert users.authenticate("alice", PASSWORD) == users.get("alice")
    assert users.check_login("alice", OTHER_PASSWORD) == (None, "wrong password")
    assert users.check_login("nobody", PASSWORD) == (None, "unknown user")


def test_user_changes_and_their_errors(any_db: Database) -> None:
    db = any_db
    users = UserStore(db)
    users.add("alice", PASSWORD, "operator")
    with pytest.raises(DuplicateUser, match="exists"):
        users.add("alice", PASSWORD, "viewer")
    with pytest.raises(PasswordTooShort, match=str(MIN_PASSWORD_LENGTH)):
        users.add("bob", "x" * (MIN_PASSWORD_LENGTH - 1), "viewer")
    with pytest.raises(PasswordTooShort):
        users.add("bob", "", "viewer")
    with pytest.raises(UserError, match="role"):
        users.add("bob", PASSWORD, "admin")
    with pytest.raises(UserError, match="not a user name"):
        users.add("<b>", PASSWORD, "viewer")
    for change in (
        lambda: users.remove("nobody"),
        lambda: users.set_role("nobody", "viewer"),
        lambda: users.set_password("nobody", PASSWORD),
        lambda: users.set_disabled("nobody", True),
    ):
        with pytest.raises(UnknownUser, match="nobody"):
            change()
    users.add("bob", PASSWORD, "viewer")
    assert [u.username for u in users.list()] == ["alice", "bob"]
    assert users.set_role("bob", "operator") == "viewer"
    assert users.get("bob") is not None and users.get("bob").role == "operator"  # type: ignore[union-attr]
    users.set_disabled("bob", True)
    assert users.count() == 1 and users.count(enabled_only=False) == 2
    assert users.authenticate("bob", PASSWORD) is None
    assert users.check_login("bob", PASSWORD) == (None, "user disabled")
    users.remove("bob")
    assert users.get("bob") is None


def test_sessions_keep_only_the_hash_and_expire(any_db: Database) -> None:
    db = any_db
    users = UserStore(db)
    users.add("alice", PASSWORD, "viewer")
    token, info = users.create_session("alice", lifetime=HOUR, address="10.0.0.9")
    with db.sessions() as session:
        row = session.scalars(select(WebSession)).one()
    assert row.token_sha256 == token_sha256(token) and token not in row.token_sha256
    assert info.csrf_token == row.csrf_token and len(info.csrf_token) >= 32
    assert users.get("alice").last_login_at is not None  # type: ignore[union-attr]
    found = users.session(token, idle=HOUR)
    assert found is not None and (found.username, found.role) == ("alice", "viewer")
    assert users.session("not-a-token", idle=HOUR) is None
    # Idle: last seen two hours ago, idle limit one hour -> gone (and deleted).
    with db.session() as session:
        session.execute(update(WebSession).values(last_seen_at=utcnow() - 2 * HOUR))
    assert users.session(token, idle=HOUR) is None
    with db.sessions() as session:
        assert session.scalars(select(WebSession)).first() is None
    # Absolute: past expires_at, however recently used.
    token, _ = users.create_session("alice", lifetime=timedelta(seconds=-1))
    assert users.session(token, idle=HOUR) is None
    # A request that does not touch (the page's own reload) does not extend the idle time.
    token, _ = users.create_session("alice", lifetime=HOUR)
    old = utcnow() - timedelta(minutes=50)
    with db.session() as session:
        session.execute(update(WebSession).values(last_seen_at=old))
    assert users.session(token, idle=HOUR, touch=False) is not None
    with db.sessions() as session:
        seen = session.scalars(select(WebSession.last_seen_at)).one()
    assert abs((as_utc(seen) - old).total_seconds()) < 1  # type: ignore[operator]
    assert users.session(token, idle=HOUR) is not None  # touched now
    # A new password, a disabled or removed user: sessions end.
    users.set_password("alice", OTHER_PASSWORD)
    assert users.session(token, idle=HOUR) is None
    token, _ = users.create_session("alice", lifetime=HOUR)
    users.set_disabled("alice", True)
    assert users.session(token, idle=HOUR) is None
    with pytest.raises(UnknownUser):
        users.create_session("alice", lifetime=HOUR)
    users.set_disabled("alice", False)
    token, _ = users.create_session("alice", lifetime=HOUR)
    assert users.end_session(token) and not users.end_session(token)
    users.create_session("alice", lifetime=timedelta(seconds=-1))
    users.create_session("alice", lifetime=HOUR)
    assert users.expire_sessions(idle=HOUR) == 1


def test_the_same_name_added_at_once_is_made_once(any_db: Database) -> None:
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def add(role: str) -> None:
        barrier.wait()
        try:
            UserStore(any_db).add("alice", PASSWORD, role)
            outcomes.append("added")
        except DuplicateUser:
            outcomes.append("duplicate")

    threads = [threading.Thread(target=add, args=(r,)) for r in ("viewer", "operator") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["added", "duplicate", "duplicate", "duplicate"]
    assert UserStore(any_db).count() == 1


# -- the CLI -----------------------------------------------------------------------------
def cli(config: Path, *args: str, stdin: str | None = None) -> Any:
    return CliRunner().invoke(main, ["-c", str(config), "users", *args], input=stdin)


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(
        '[storage]\nspool_dir = "spool"\nresults_dir = "results"\n'
        'database_url = "sqlite:///node.db"\n'
    )
    return path


def test_users_cli(config: Path, tmp_path: Path) -> None:
    added = cli(config, "add", "alice", "--role", "operator", "--password-stdin",
                stdin=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    assert "user alice added (operator)" in added.output
    prompted = cli(config, "add", "bob", "--role", "viewer",
                   stdin=f"{OTHER_PASSWORD}\n{OTHER_PASSWORD}\n")
    assert prompted.exit_code == 0, prompted.output
    assert OTHER_PASSWORD not in prompted.output
    again = cli(config, "add", "alice", "--role", "viewer", "--password-stdin", stdin=PASSWORD)
    assert again.exit_code == 1 and "exists" in again.output
    short = cli(config, "add", "carol", "--role", "viewer", "--password-stdin", stdin="short\n")
    assert short.exit_code == 1 and f"at least {MIN_PASSWORD_LENGTH}" in short.output
    on_line = cli(config, "add", "dave", "--role", "viewer", "--password", PASSWORD)
    assert on_line.exit_code == 2  # no such option: never on the command line
    assert cli(config, "set-role", "bob", "--role", "operator").exit_code == 0
    changed = cli(config, "set-password", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    assert changed.exit_code == 0, changed.output
    assert cli(config, "disable", "alice").exit_code == 0
    listed = cli(config, "list")
    assert listed.exit_code == 0, listed.output
    rows = {line.split()[1]: line for line in listed.output.splitlines() if "│" in line
            and line.split()[1] in ("alice", "bob")}
    assert re.search(r"alice\s+│\s+operator\s+│\s+yes", rows["alice"])
    assert re.search(r"bob\s+│\s+operator\s+│\s+no\s+│.*never", rows["bob"])
    unknown = cli(config, "remove", "nobody")
    assert unknown.exit_code == 1 and "no user 'nobody'" in unknown.output
    assert cli(config, "remove", "bob").exit_code == 0
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    try:
        users = UserStore(db)
        assert [u.username for u in users.list()] == ["alice"]
        assert users.authenticate("alice", PASSWORD) is None  # disabled
        trail = AuditStore(db).query(AuditFilter(events=["user-changed"]), limit=50)
    finally:
        db.dispose()
    changes = [(e.detail["target_user"], e.detail["change"]) for e in reversed(trail)]
    assert changes == [
        ("alice", "created"), ("bob", "created"), ("bob", "role"), ("bob", "password"),
        ("alice", "disabled"), ("bob", "removed"),
    ]
    assert all(e.actor_kind == "user" and e.actor for e in trail)
    role_change = next(e for e in trail if e.detail["change"] == "role")
    assert role_change.detail["old_role"] == "viewer" and role_change.detail["role"] == "operator"
    text = repr([e.as_dict() for e in trail])
    assert PASSWORD not in text and OTHER_PASSWORD not in text and "argon2" not in text


# -- the login page ----------------------------------------------------------------------
def web_settings(tmp_path: Path, **web: Any) -> Settings:
    return Settings.model_validate(
        {
            "storage": {
                "spool_dir": str(tmp_path / "spool"),
                "results_dir": str(tmp_path / "results"),
                "database_url": f"sqlite:///{tmp_path / 'node.db'}",
                "fsync": False,
            },
            "web": {"login_failure_delay_s": 0, **web},
        }
    )


def client_for(settings: Settings, db: Database) -> TestClient:
    return TestClient(create_app(settings, db), base_url="http://localhost",
                      follow_redirects=False)


def login_form(client: TestClient, next_path: str = "/") -> str:
    """Fetch the login page (which sets the form cookie); its hidden token."""
    page = client.get("/login", params={"next": next_path})
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def post_login(client: TestClient, user: str, password: str, token: str, nxt: str = "/") -> Any:
    return client.post(
        "/login",
        data={"username": user, "password": password, "csrf_token": token, "next": nxt},
    )


def test_login_sets_a_strict_cookie_and_audits(
    tmp_path: Path, db: Database, trail: audit.Auditor
) -> None:
    UserStore(db).add("alice", PASSWORD, "operator")
    client = client_for(web_settings(tmp_path), db)
    assert client.get("/").status_code == 303  # a user exists: no longer open
    token = login_form(client)
    wrong = post_login(client, "alice", OTHER_PASSWORD, token)
    assert wrong.status_code == 401 and "Wrong user name or password" in wrong.text
    nobody = post_login(client, "mallory", PASSWORD, login_form(client))
    assert nobody.status_code == 401 and "Wrong user name or password" in nobody.text
    done = post_login(client, "alice", PASSWORD, login_form(client), nxt="/audit")
    assert done.status_code == 303 and done.headers["location"] == "/audit"
    cookies = done.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("dicom_node_session="))
    attributes = {a.strip().lower() for a in session.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain HTTP, no trusted proxy, no cookie_secure
    value = session.split(";")[0].split("=", 1)[1]
    with db.sessions() as s:
        assert s.scalars(select(WebSession.token_sha256)).one() == token_sha256(value)
    client.cookies.set("dicom_node_session", value)
    page = client.get("/")
    assert page.status_code == 200 and "alice" in page.text
    failed = events(db, trail, "login-failed")
    assert sorted(e.detail["reason"] for e in failed) == ["unknown user", "wrong password"]
    assert all(e.outcome == audit.Outcome.MINOR_FAILURE for e in failed)
    assert PASSWORD not in repr(failed) and OTHER_PASSWORD not in repr(failed)
    (login,) = events(db, trail, "login")
    assert (login.actor, login.detail["role"]) == ("alice", "operator")
    assert login.address == "testclient"


def test_login_form_needs_its_token(tmp_path: Path, db: Database, trail: audit.Auditor) -> None:
    UserStore(db).add("alice", PASSWORD, "operator")
    client = client_for(web_settings(tmp_path), db)
    login_form(client)
    forged = post_login(client, "alice", PASSWORD, "not-the-token")
    assert forged.status_code == 403 and "dicom_node_session=" not in str(forged.headers)
    client.cookies.clear()
    missing = post_login(client, "alice", PASSWORD, "")
    assert missing.status_code == 403
    reasons = [e.detail["reason"] for e in events(db, trail, "login-failed")]
    assert reasons == ["missing or wrong login form token"] * 2


def test_secure_cookie_over_https(tmp_path: Path, db: Database) -> None:
    UserStore(db).add("alice", PASSWORD, "operator")

    def session_cookie(settings: Settings, base: str, **headers: str) -> str:
        client = TestClient(create_app(settings, db), base_url=base, follow_redirects=False)
        page = client.get("/login", headers=headers)
        form = next(c for c in page.headers.get_list("set-cookie")
                    if c.startswith("dicom_node_login="))
        token = form.split(";")[0].split("=", 1)[1]
        client.cookies.clear()  # sent by hand: httpx keeps Secure cookies off plain HTTP
        done = client.post(
            "/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": token},
            headers={"Cookie": f"dicom_node_login={token}", **headers},
        )
        assert done.status_code == 303, done.text
        return next(c for c in done.headers.get_list("set-cookie")
                    if c.startswith("dicom_node_session="))

    def secure(cookie: str) -> bool:
        return "secure" in [a.strip().lower() for a in cookie.split(";")]

    assert secure(session_cookie(web_settings(tmp_path, cookie_secure=True), "http://localhost"))
    assert secure(session_cookie(web_settings(tmp_path), "https://localhost"))
    # A forwarded protocol from a peer that is not a trusted proxy is not believed.
    assert not secure(session_cookie(web_settings(tmp_path), "http://localhost",
                                     **{"X-Forwarded-Proto": "https"}))


def test_failed_logins_are_throttled(tmp_path: Path, db: Database, trail: audit.Auditor) -> None:
    UserStore(db).add("alice", PASSWORD, "operator")
    client = client_for(web_settings(tmp_path, login_max_failures=3), db)
    for _ in range(3):
        wrong = post_login(client, "alice", "wrong password!!", login_form(client))
        assert wrong.status_code == 401
    blocked = post_login(client, "alice", PASSWORD, login_form(client))  # even the right one
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
    assert "dicom_node_session=" not in str(blocked.headers)
    reasons = [e.detail["reason"] for e in events(db, trail, "login-failed")]
    assert reasons.count("too many failed logins") == 1 and reasons.count("wrong password") == 3


def test_throttle_window_and_keys() -> None:
    throttle = LoginThrottle(max_failures=2, window_s=0.3)
    throttle.failed("user:a", "address:x")
    assert throttle.blocked_for("user:a", "address:x") == 0
    throttle.failed("user:a", "address:x")
    assert throttle.blocked_for("user:a") > 0 and throttle.blocked_for("address:x") > 0
    assert throttle.blocked_for("user:b", "address:y") == 0
    throttle.succeeded("a")
    assert throttle.blocked_for("user:a") == 0 and throttle.blocked_for("address:x") > 0
    time.sleep(0.35)
    assert throttle.blocked_for("address:x") == 0


def test_next_stays_on_this_site() -> None:
    assert safe_next("/audit?event=login") == "/audit?event=login"
    for hostile in ("//evil.example/", "https://evil.example/", "/\\evil.example", "",
                    None, "javascript:alert(1)", "/login", "/x\r\nSet-Cookie: a=b"):
        assert safe_next(hostile) == "/", hostile


def test_logout_needs_the_csrf_token_and_ends_the_session(
    tmp_path: Path, db: Database, trail: audit.Auditor
) -> None:
    UserStore(db).add("bob", PASSWORD, "viewer")
    client = client_for(web_settings(tmp_path), db)
    done = post_login(client, "bob", PASSWORD, login_form(client))
    assert done.status_code == 303
    page = client.get("/")
    assert page.status_code == 200
    csrf = re.search(r'action="/logout"><input type="hidden" name="csrf_token" value="([^"]+)"',
                     page.text)
    assert csrf is not None, page.text
    assert client.post("/logout").status_code == 403
    assert client.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    assert client.get("/").status_code == 200  # still logged in
    out = client.post("/logout", data={"csrf_token": csrf.group(1)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    with db.sessions() as s:
        assert s.scalars(select(WebSession)).first() is None
    assert client.get("/").status_code == 303
    (logout,) = events(db, trail, "logout")
    assert logout.actor == "bob"


def test_idle_session_goes_back_to_the_login_page(tmp_path: Path, db: Database) -> None:
    UserStore(db).add("bob", PASSWORD, "viewer")
    client = client_for(web_settings(tmp_path, session_idle_minutes=5), db)
    assert post_login(client, "bob", PASSWORD, login_form(client)).status_code == 303
    assert client.get("/").status_code == 200
    with db.session() as session:
        session.execute(update(WebSession).values(last_seen_at=utcnow() - timedelta(minutes=6)))
    gone = client.get("/api/jobs")
    assert gone.status_code == 401
    assert client.get("/").headers["location"].startswith("/login")


def test_removing_the_last_user_never_opens_a_node_beyond_loopback(
    tmp_path: Path, db: Database
) -> None:
    users = UserStore(db)
    users.add("alice", PASSWORD, "operator")
    wide = client_for(web_settings(tmp_path, host="0.0.0.0"), db)
    local = client_for(web_settings(tmp_path), db)
    assert wide.get("/api/jobs").status_code == 401
    users.remove("alice")
    assert wide.get("/api/jobs").status_code == 401  # beyond loopback: closed, whatever happens
    assert wide.post("/api/jobs/1/retry").status_code == 401
    assert wide.get("/").headers["location"].startswith("/login")
    assert local.get("/api/jobs").status_code == 200  # loopback without any user: open

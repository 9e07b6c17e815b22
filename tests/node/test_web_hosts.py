"""The ``Host`` allowlist and the origin check of the web surface (DNS rebinding, CSRF).

A page whose own name resolves to 127.0.0.1 makes an operator's browser send
requests to the node with that name in ``Host`` and ``Origin``.  The server
runs on a free loopback port and is queried over real HTTP, with the headers
such a browser would send.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from dicom_node.config import Settings
from dicom_node.errors import ConfigError
from dicom_node.web import WebServer, WebServerError
from dicom_node.web.hosts import HostAllowlist, split_host
from storage.db import Database
from storage.models import Job
from storage.received import ReceivedStore
from storage.spool import Spool
from tests.node.test_web import STUDY, call, fill, free_port, node_settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-the-web-0123"
REBINDING = "rebind.attacker.example"


@dataclass
class Served:
    """A running web server over a filled SQLite database."""

    web: WebServer
    db: Database
    failed_job: int

    def url(self, path: str) -> str:
        return self.web.url + path

    def job_status(self) -> str:
        with self.db.engine.connect() as conn:
            return str(conn.execute(select(Job.status).where(Job.id == self.failed_job)).scalar())


def with_web(settings: Settings, **web: Any) -> Settings:
    """*settings* with some ``[web]`` values replaced (validated)."""
    raw = settings.model_dump(mode="json")
    raw["web"].update(web)
    if settings.web.token is not None and "token" not in web:
        raw["web"]["token"] = settings.web.token.get_secret_value()
    return Settings.model_validate(raw)


@pytest.fixture
def base_settings(tmp_path: Path) -> Settings:
    return node_settings(tmp_path, f"sqlite:///{tmp_path / 'node.db'}", free_port())


@pytest.fixture
def db(base_settings: Settings) -> Iterator[Database]:
    database = Database(base_settings.storage.database_url)
    database.upgrade()
    try:
        yield database
    finally:
        database.dispose()


@contextmanager
def serve(settings: Settings, db: Database) -> Iterator[Served]:
    store = ReceivedStore(db, Spool(settings.storage.spool_dir, fsync=False))
    _succeeded, failed = fill(settings, db, store)
    web = WebServer(settings, db, store=store)
    web.start()
    try:
        yield Served(web, db, failed)
    finally:
        web.stop()


@pytest.fixture
def served(base_settings: Settings, db: Database) -> Iterator[Served]:
    with serve(base_settings, db) as served:
        yield served


@pytest.fixture
def served_named(base_settings: Settings, db: Database) -> Iterator[Served]:
    """Allowed besides loopback: ``node.example.org`` (any port), ``other.example:8443``."""
    settings = with_web(base_settings, allowed_hosts=["Node.Example.org", "other.example:8443"])
    with serve(settings, db) as served:
        yield served


def host_of(served: Served, name: str) -> str:
    return f"{name}:{served.web.port}"


# -- Host ----------------------------------------------------------------------------------
def test_foreign_host_is_refused_before_any_handler(served: Served) -> None:
    rebinding = {"Host": host_of(served, REBINDING)}
    status, headers, body = call(served.url("/api/studies"), headers=rebinding)
    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert "allowed_hosts" in body and "PAT-1" not in body and STUDY not in body
    for path in ("/", "/api/jobs", "/metrics", "/api/openapi.json", "/api/health"):
        assert call(served.url(path), headers=rebinding)[0] == 400, path

    status, _, _ = call(served.url(f"/api/jobs/{served.failed_job}/retry"), "POST", rebinding)
    assert status == 400
    assert served.job_status() == "failed"  # not retried
    status, _, _ = call(served.url("/api/complete/1.2.3"), "POST", rebinding)
    assert status == 400


@pytest.mark.parametrize(
    "host",
    ["evil.example", "127.0.0.1.evil.example", "localhost.evil.example:80", "user@127.0.0.1",
     "127.1", "", "[::2]"],
)
def test_other_foreign_hosts_are_refused(served: Served, host: str) -> None:
    assert call(served.url("/api/studies"), headers={"Host": host})[0] == 400


def test_loopback_hosts_are_accepted(served: Served) -> None:
    for name in ("127.0.0.1", "localhost", "LOCALHOST.", "[::1]"):
        for host in (name, host_of(served, name), f"{name}:1"):
            status, _, body = call(served.url("/api/studies"), headers={"Host": host})
            assert status == 200, (host, body)
            assert "PAT-1" in body


def test_health_is_reachable_from_loopback(served: Served) -> None:
    for host in ("127.0.0.1", host_of(served, "localhost"), host_of(served, "[::1]")):
        status, _, body = call(served.url("/api/health"), headers={"Host": host})
        assert status == 200 and '"status":"ok"' in body.replace(" ", ""), (host, body)
    assert call(served.url("/api/health"))[0] == 200  # urllib sends the URL's host


def test_configured_names_are_accepted(served_named: Served) -> None:
    served = served_named
    for host in ("node.example.org", host_of(served, "node.example.org"), "NODE.example.org.:443",
                 "other.example:8443", host_of(served, "localhost")):
        status, _, body = call(served.url("/api/studies"), headers={"Host": host})
        assert status == 200 and "PAT-1" in body, (host, body)
    for host in ("other.example", "other.example:8080", "example.org", "x.node.example.org"):
        assert call(served.url("/api/studies"), headers={"Host": host})[0] == 400, host


def test_the_bind_address_is_allowed(base_settings: Settings, db: Database) -> None:
    assert HostAllowlist.from_settings(base_settings.web).allows_host("127.0.0.1:8080")
    wide = with_web(base_settings, host="10.1.2.3", token=TOKEN)
    allowlist = HostAllowlist.from_settings(wide.web)
    assert allowlist.allows_host("10.1.2.3:8080") and allowlist.allows_host("localhost")
    assert not allowlist.allows_host("10.1.2.4:8080")
    for wildcard in ("0.0.0.0", "::"):
        hosts = HostAllowlist.from_settings(with_web(base_settings, host=wildcard, token=TOKEN).web)
        assert not hosts.allows_host(wildcard) and not hosts.allows_host(f"[{wildcard}]")
        assert hosts.describe() == "localhost, 127.0.0.1, [::1]"


# -- Origin of changes ---------------------------------------------------------------------
def test_rebinding_origin_is_refused_even_when_host_matches_it(served: Served) -> None:
    url = served.url(f"/api/jobs/{served.failed_job}/retry")
    rebinding = host_of(served, REBINDING)
    # The browser of a rebinding page: Host and Origin both name the page; Host is refused first.
    status, headers, body = call(url, "POST", {"Host": rebinding, "Origin": f"http://{rebinding}"})
    assert status == 400 and headers["content-type"].startswith("text/plain"), body
    # A cross-site form (Host is the node, Origin the other site), by Origin or by Referer.
    loopback = host_of(served, "127.0.0.1")
    for header in ({"Origin": f"http://{rebinding}"}, {"Origin": "null"},
                   {"Referer": f"http://{rebinding}/page"}, {"Origin": "http://127.0.0.1.evil.example"},
                   {"Origin": f"ftp://{loopback}"}):
        status, _, body = call(url, "POST", {"Host": loopback, **header})
        assert (status, body) == (403, '{"detail":"cross-site request refused"}'), header
    assert served.job_status() == "failed"

    for origin in (f"http://{loopback}", f"http://{host_of(served, 'localhost')}"):
        status, _, body = call(url, "POST", {"Host": loopback, "Origin": origin})
        assert status in (200, 409), (origin, body)  # retried, then nothing left to retry
    assert served.job_status() == "queued"


def test_referer_counts_without_origin(served: Served) -> None:
    loopback = host_of(served, "localhost")
    status, _, _ = call(served.url("/api/complete/1.2.3"), "POST",
                        {"Host": loopback, "Referer": f"http://{loopback}/"})
    assert status != 403
    status, _, _ = call(served.url("/api/complete/1.2.3"), "POST", {"Host": loopback})
    assert status != 403  # curl and scripts send neither


def test_configured_name_may_post(served_named: Served) -> None:
    served = served_named
    url = served.url(f"/api/jobs/{served.failed_job}/retry")
    status, _, body = call(url, "POST", {"Host": "node.example.org",
                                         "Origin": "https://node.example.org"})
    assert status == 200, body
    status, _, _ = call(url, "POST", {"Host": "node.example.org",
                                      "Origin": "https://other.example:9999"})
    assert status == 403


def test_star_allows_any_host_but_origins_must_name_it(base_settings: Settings,
                                                       db: Database) -> None:
    settings = with_web(base_settings, allowed_hosts=["*"], token=TOKEN)
    with serve(settings, db) as served:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert call(served.url("/api/jobs"), headers={"Host": "proxy.example", **auth})[0] == 200
        url = served.url(f"/api/jobs/{served.failed_job}/retry")
        refused = {"Host": "proxy.example", "Origin": "http://evil.example", **auth}
        assert call(url, "POST", refused)[0] == 403
        own = {"Host": "proxy.example", "Origin": "https://proxy.example", **auth}
        assert call(url, "POST", own)[0] == 200


def test_host_is_checked_before_the_token(base_settings: Settings, db: Database) -> None:
    with serve(with_web(base_settings, token=TOKEN), db) as served:
        status, headers, _ = call(served.url("/api/jobs"), headers={"Host": REBINDING})
        assert status == 400 and "www-authenticate" not in headers
        assert call(served.url("/api/jobs"))[0] == 401
        assert call(served.url("/api/health"))[0] == 200


# -- start-up: beyond loopback only with a token ----------------------------------------------
def test_beyond_loopback_without_token_refuses_to_start(base_settings: Settings,
                                                         db: Database) -> None:
    for host in ("0.0.0.0", "::", "10.1.2.3", "node.example.org"):
        web = WebServer(with_web(base_settings, host=host), db)
        with pytest.raises(WebServerError, match=r"\[web\] token.*DICOM_NODE_WEB__TOKEN"):
            web.start()
        assert not web.running
    for host in ("127.0.0.1", "localhost", "::1"):
        WebServer(with_web(base_settings, host=host), db)  # loopback: no token needed


def test_beyond_loopback_with_token_starts(base_settings: Settings, db: Database) -> None:
    web = WebServer(with_web(base_settings, host="0.0.0.0", token=TOKEN), db)
    web.start()
    try:
        url = f"http://127.0.0.1:{web.port}"
        assert call(url + "/api/health")[0] == 200
        assert call(url + "/api/studies")[0] == 401
        assert call(url + "/api/studies", headers={"Host": "10.9.9.9"})[0] == 400
    finally:
        web.stop()


def test_serve_refuses_beyond_loopback_without_token(tmp_path: Path) -> None:
    dicom_port = free_port()
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nhost = "127.0.0.1"\nport = {dicom_port}\n'
        '[storage]\nspool_dir = "spool"\ndatabase_url = "sqlite:///node.db"\n'
        "min_free_disk_mb = 0\n[worker]\nconcurrency = 0\n"
        f'[web]\nhost = "0.0.0.0"\nport = {free_port()}\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "-c", str(config), "serve"],
        cwd=ROOT, env={**env, "COLUMNS": "250"}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "[web] token" in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- settings ----------------------------------------------------------------------------------
def test_allowed_hosts_setting(base_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    assert base_settings.web.allowed_hosts == []
    monkeypatch.setenv("DICOM_NODE_WEB__ALLOWED_HOSTS", "node.example.org, 10.0.0.5:8080 [fd00::5]")
    assert Settings().web.allowed_hosts == ["node.example.org", "10.0.0.5:8080", "[fd00::5]"]
    monkeypatch.setenv("DICOM_NODE_WEB__ALLOWED_HOSTS", '["a.example", "[fd00::5]:8080"]')
    assert Settings().web.allowed_hosts == ["a.example", "[fd00::5]:8080"]
    monkeypatch.setenv("DICOM_NODE_WEB__ALLOWED_HOSTS", "[fd00::5]")
    assert Settings().web.allowed_hosts == ["[fd00::5]"]
    for bad in ("http://node.example.org", "node.example.org/path", "a b", "user@host", ""):
        with pytest.raises(ValueError, match="not a host name"):
            with_web(base_settings, allowed_hosts=[bad])


def test_placeholder_token_is_refused(tmp_path: Path) -> None:
    from dicom_node.config import load_settings

    path = tmp_path / "node.toml"
    for placeholder in ("change-me", "CHANGE_ME-0123456789abcdef", "changeme-please-really-now"):
        path.write_text(f'[web]\ntoken = "{placeholder}"\n')
        with pytest.raises(ConfigError, match=r"web\.token: .*placeholder"):
            load_settings(path)
    path.write_text(f'[web]\ntoken = "{TOKEN}"\n')
    assert load_settings(path).web.token == SecretStr(TOKEN)


def test_split_host() -> None:
    assert split_host("LocalHost.:8080") == ("localhost", 8080)
    assert split_host("[0:0::1]:80") == ("[::1]", 80)
    assert split_host("::1") == ("[::1]", None)
    for bad in ("", ".", "a@b", "h:99999", "h:0", "[zz]", "a/b", "a b"):
        assert split_host(bad) is None, bad

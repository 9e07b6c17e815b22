"""A real Orthanc PACS on loopback, as the archive the node sends results to.

Orthanc (Debian package ``orthanc``, binary ``/usr/sbin/Orthanc``) runs as a
subprocess with its own JSON config, storage and index in a test's folder, on
free ports, with ``TCP_NODELAY=1`` (its DCMTK-based DICOM server stalls on
Nagle otherwise).  Orthanc 1.10 has no option to bind to one address: both
servers listen on every interface, HTTP answers loopback clients only
(``RemoteAccessAllowed: false``).  The REST helpers use only :mod:`urllib`.

Orthanc keeps the first copy of a SOP Instance UID: storing it again, even
with other content, answers C-STORE success (0x0000) and changes nothing
(``OverwriteInstances: false``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI, require_tool
from tests.support.peers import free_port

ORTHANC_DIRS = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin")
"""Where the Debian package puts ``Orthanc``; /usr/sbin may not be on PATH."""

PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
"""Where the Debian packages put Orthanc plugins (``orthanc-dicomweb`` among them)."""

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def orthanc_executable() -> str:
    """Path of ``Orthanc``, or skip (fail under CI), as :func:`require_tool`."""
    path = shutil.which(
        "Orthanc", path=os.pathsep.join([os.environ.get("PATH", ""), *ORTHANC_DIRS])
    )
    return path if path is not None else require_tool("Orthanc")


def dicomweb_plugin() -> str:
    """Path of the DICOMweb plugin (``orthanc-dicomweb``), or skip (fail under CI)."""
    for folder in PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*"))
        if found:
            return str(found[0])
    message = f"Orthanc DICOMweb plugin (orthanc-dicomweb) not found in {', '.join(PLUGIN_DIRS)}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed; carries the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OrthancServer:
    """Orthanc with its own config, storage and index under *workdir*.

    Ports are chosen once, so :meth:`stop` then :meth:`start` brings the same
    archive back on the same ports with the same stored instances.  *extra*
    is merged into the generated config (e.g. ``{"OverwriteInstances": True}``).
    """

    def __init__(
        self,
        workdir: Path,
        ae_title: str = "ORTHANC",
        *,
        dicomweb: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.exe = orthanc_executable()
        self.plugins = [dicomweb_plugin()] if dicomweb else []
        self.workdir = workdir
        self.ae_title = ae_title
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.extra = dict(extra or {})
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        """``host:port:AET``, as ``dicom-node send --to`` takes it."""
        return f"127.0.0.1:{self.dicom_port}:{self.ae_title}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    @property
    def storage_dir(self) -> Path:
        return self.workdir / "storage"

    def config(self) -> dict[str, Any]:
        """The Orthanc configuration this server runs with."""
        cfg: dict[str, Any] = {
            "Name": f"test-{self.ae_title}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpDescribeErrors": True,
            "HttpCompressionEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "OverwriteInstances": False,
            "StableAge": 1,
            "SaveJobs": False,
            "LuaScripts": [],
            "Plugins": list(self.plugins),
        }
        if self.plugins:
            cfg["DicomWeb"] = {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Host": f"127.0.0.1:{self.http_port}",
                "Ssl": False,
            }
        cfg.update(self.extra)
        return cfg

    def start(self, timeout_s: float = 30.0) -> OrthancServer:
        """Start Orthanc and wait until ``GET /system`` answers."""
        if self.running:
            return self
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        env = dict(os.environ)
        env["TCP_NODELAY"] = "1"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, str(self.config_path)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise OrthancError(f"Orthanc exited with {code} on start:\n{self.log_tail()}")
            try:
                self.get_json("/system", timeout_s=1.0)
                return self
            except (OSError, OrthancError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise OrthancError(f"Orthanc not up after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.1)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM, wait up to *timeout_s*, then kill.  Storage is kept."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- REST --------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, timeout_s: float = 30.0
    ) -> bytes:
        """One REST call; raises :class:`OrthancError` on an HTTP error status."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with _NO_PROXY.open(req, timeout=timeout_s) as rsp:
                return bytes(rsp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {exc.code} {detail}", exc.code) from exc

    def get_json(self, path: str, timeout_s: float = 30.0) -> Any:
        return json.loads(self.request("GET", path, timeout_s=timeout_s))

    def post_json(self, path: str, body: Any, timeout_s: float = 30.0) -> Any:
        return json.loads(self.request("POST", path, json.dumps(body).encode(), timeout_s))

    def instances(self) -> list[str]:
        """Orthanc IDs of every stored instance."""
        return list(self.get_json("/instances"))

    def count_instances(self) -> int:
        return int(self.get_json("/statistics")["CountInstances"])

    def instance_tags(self, orthanc_id: str) -> dict[str, Any]:
        """``/instances/{id}/simplified-tags``: keyword -> value."""
        return dict(self.get_json(f"/instances/{orthanc_id}/simplified-tags"))

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file (Orthanc rewrites the file meta group)."""
        return self.request("GET", f"/instances/{orthanc_id}/file")

    def instance_metadata(self, orthanc_id: str) -> dict[str, str]:
        """Orthanc's metadata of an instance: ``RemoteAET``, ``CalledAET``, ``RemoteIP``, ..."""
        return dict(self.get_json(f"/instances/{orthanc_id}/metadata?expand"))

    def sop_instance_uids(self) -> set[str]:
        """SOP Instance UIDs of every stored instance."""
        return {str(i["MainDicomTags"]["SOPInstanceUID"]) for i in self.find_instances()}

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """``/tools/lookup``: the resources (any level) with this DICOM UID or ID."""
        return list(json.loads(self.request("POST", "/tools/lookup", uid.encode())))

    def find(self, level: str, **query: str) -> list[dict[str, Any]]:
        """``/tools/find`` at *level* with DICOM keyword filters, expanded."""
        body = {"Level": level, "Query": dict(query), "Expand": True}
        return list(self.post_json("/tools/find", body))

    def find_instances(self, **query: str) -> list[dict[str, Any]]:
        """Expanded instances matching *query* (all of them when empty)."""
        return self.find("Instance", **query)

    def series_of_study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Expanded series of the study with this Study Instance UID."""
        return self.find("Series", StudyInstanceUID=study_instance_uid)

    def changes(self, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """``/changes``: ``{"Changes": [...], "Done": bool, "Last": int}``."""
        return dict(self.get_json(f"/changes?since={since}&limit={limit}"))


@pytest.fixture
def orthanc_server(tmp_path: Path) -> Iterator[OrthancServer]:
    """A running Orthanc (AE ``ORTHANC``) under ``tmp_path/orthanc``; stopped afterwards."""
    server = OrthancServer(tmp_path / "orthanc")
    with server:
        yield server

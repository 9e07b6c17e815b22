"""The OHIF web viewer (v3) in front of a test Orthanc, and headless Chromium.

What a radiologist would open, all on loopback and started by the test:

* the prebuilt viewer from the npm package ``@ohif/app`` (its ``dist/``),
  fetched by ``scripts/fetch-ohif.sh`` (``make test`` runs it) into
  ``.cache/ohif/<version>/``;
* :class:`ViewerServer`: a small static server (stdlib) that serves that
  folder, answers unknown routes (``/viewer``, ``/segmentation``) with
  ``index.html`` as a single-page app needs, serves an ``app-config.js`` with
  one DICOMweb data source on the same origin, and proxies ``/dicom-web`` and
  ``/wado`` to Orthanc with the browser's ``Host`` header, so Orthanc's
  DICOMweb plugin builds BulkDataURIs on the viewer's origin (another origin
  would be a CORS failure);
* Debian's Chromium driven headless by Playwright (its own browser download
  is not used: ``executable_path``), with an empty profile.

Missing pieces skip the tests, and fail them under CI.
"""

from __future__ import annotations

import http.client
import json
import mimetypes
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import IN_CI

ROOT = Path(__file__).resolve().parents[2]

OHIF_VERSION = os.environ.get("OHIF_VERSION", "3.12.0")
"""The ``@ohif/app`` version ``scripts/fetch-ohif.sh`` fetches (same default)."""

OHIF_DIST = ROOT / ".cache" / "ohif" / OHIF_VERSION / "dist"

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)

PROXIED_PREFIXES = ("/dicom-web", "/wado")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def ohif_dist() -> Path:
    """The unpacked viewer's ``dist/``, or skip (fail under CI)."""
    if not (OHIF_DIST / "index.html").is_file() or not (OHIF_DIST.parent / ".complete").exists():
        _missing(
            f"OHIF viewer {OHIF_VERSION} not found in {OHIF_DIST}; "
            "run `bash scripts/fetch-ohif.sh` (make test does)"
        )
    return OHIF_DIST


def chromium_executable() -> str:
    """Debian's Chromium (package ``chromium``), or skip (fail under CI)."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("chromium")
    if found is None:
        _missing(
            "Chromium not installed (Debian package chromium); run scripts/install-system-deps.sh"
        )
    assert found is not None
    return found


def sync_playwright() -> Any:
    """``playwright.sync_api.sync_playwright``, or skip (fail under CI)."""
    try:
        from playwright.sync_api import sync_playwright as start
    except ImportError:
        _missing("Python package playwright not installed (pip install -e '.[dev]')")
    return start


def app_config_js() -> str:
    """OHIF's ``window.config``: one DICOMweb data source on the page's own origin."""
    data_source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "test Orthanc (DICOMweb, same origin)",
            "name": "orthanc",
            "wadoUriRoot": "__ORIGIN__/wado",
            "qidoRoot": "__ORIGIN__/dicom-web",
            "wadoRoot": "__ORIGIN__/dicom-web",
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "omitQuotationForMultipartRequest": True,
            "bulkDataURI": {"enabled": True},
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "dicomweb",
        "dataSources": [data_source],
    }
    body = json.dumps(config, indent=2).replace('"__ORIGIN__', 'window.location.origin + "')
    return "/** Written by tests/support/ohif.py. */\nwindow.config = " + body + ";\n"


class _Handler(BaseHTTPRequestHandler):
    server: _ViewerHTTPServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        self.server.log_lines.append(format % args)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        if any(path == p or path.startswith(p + "/") for p in PROXIED_PREFIXES):
            self._proxy()
        elif self.command in ("GET", "HEAD"):
            self._static(path)
        else:
            self.send_error(405)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        # The browser's Host (this server's address) goes through unchanged:
        # Orthanc's DICOMweb plugin writes BulkDataURIs on it.
        conn = http.client.HTTPConnection("127.0.0.1", self.server.orthanc_port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            rsp = conn.getresponse()
            self.send_response(rsp.status, rsp.reason)
            for key, value in rsp.getheaders():
                if key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                while chunk := rsp.read(1 << 16):
                    self.wfile.write(chunk)
        except OSError as exc:
            self.server.log_lines.append(f"proxy error {self.path}: {exc!r}")
        finally:
            conn.close()

    def _static(self, path: str) -> None:
        if path == "/app-config.js":
            self._send(200, self.server.app_config.encode(), "application/javascript")
            return
        root = self.server.dist
        target = (root / path.lstrip("/")).resolve()
        if root not in target.parents and target != root:
            self.send_error(404)
            return
        if not target.is_file():
            if "." in path.rsplit("/", 1)[-1]:
                self.send_error(404)  # a missing asset, not a route
                return
            target = root / "index.html"
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix == ".wasm":
            ctype = "application/wasm"
        elif target.suffix in (".js", ".mjs"):
            ctype = "application/javascript"
        self._send(200, target.read_bytes(), ctype)

    def _send(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


class _ViewerHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, orthanc_port: int, app_config: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.orthanc_port = orthanc_port
        self.app_config = app_config
        self.log_lines: list[str] = []


class ViewerServer:
    """OHIF's ``dist/`` plus a same-origin DICOMweb proxy to Orthanc, on 127.0.0.1."""

    def __init__(self, dist: Path, orthanc_port: int) -> None:
        self._httpd = _ViewerHTTPServer(dist, orthanc_port, app_config_js())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="ohif-server", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_lines(self) -> list[str]:
        return self._httpd.log_lines

    def start(self) -> ViewerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(10)

    def __enter__(self) -> ViewerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def orthanc_dicomweb_config() -> dict[str, Any]:
    """Orthanc's ``DicomWeb`` section for the viewer: no fixed ``Host``.

    With ``Host`` unset, the plugin builds BulkDataURIs from the request's
    ``Host`` header, which the proxy passes through from the browser.
    """
    return {
        "DicomWeb": {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
    }


@contextmanager
def chromium_page(user_data_dir: Path, *, width: int = 1440, height: int = 900) -> Iterator[Any]:
    """A Playwright page in headless Debian Chromium with an empty profile."""
    exe = chromium_executable()
    start = sync_playwright()
    user_data_dir.mkdir(parents=True, exist_ok=True)
    with start() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=exe,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": width, "height": height},
            device_scale_factor=1,
            service_workers="block",
            timeout=60_000,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()

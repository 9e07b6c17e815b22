"""Real peers on loopback: the node as a subprocess, DCMTK tools.

Everything listens on 127.0.0.1 only, on a free port, and is stopped by the
test that started it.  DCMTK tools run with ``TCP_NODELAY=1`` (Debian's
build stalls on Nagle otherwise).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, timeout_s: float = 30.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    """Block until something accepts connections on 127.0.0.1:*port*."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout_s} s")


SENDER_DIMSE_TIMEOUT_S = 180.0
"""How long a test's pynetdicom sender waits for one response.  The node
acknowledges only after its group-committed flush (``syncfs``), and on a
loaded disk that can take longer than pynetdicom's default 30 s."""


def sender_ae(ae_title: str) -> Any:
    """A pynetdicom AE to send with, its timeouts bounded but generous."""
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    ae.acse_timeout = 60
    ae.dimse_timeout = SENDER_DIMSE_TIMEOUT_S
    ae.network_timeout = SENDER_DIMSE_TIMEOUT_S
    return ae


def dcmtk_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TCP_NODELAY"] = "1"
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def render_config(sections: dict[str, Any]) -> str:
    """A tiny TOML writer for test configs (tables and arrays of tables)."""
    lines: list[str] = []
    for name, body in sections.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{name}]]")
                lines.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
                lines.append("")
        else:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
            lines.append("")
    return "\n".join(lines)


@dataclass
class NodeProcess:
    """``dicom-node serve`` in a subprocess with its own config and folder."""

    workdir: Path
    port: int
    ae_title: str = "DICOM_NODE"
    extra: dict[str, Any] | None = None
    database_url: str | None = None
    roles: str | None = None
    """``serve --role``; without ``receiver`` the start waits for the roles' log line."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def config_path(self) -> Path:
        return self.workdir / "config.toml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    @property
    def spool(self) -> Path:
        return self.workdir / "spool"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.workdir / 'node.db'}"

    def write_config(self) -> None:
        sections: dict[str, Any] = {
            "node": {
                "ae_title": self.ae_title,
                "host": "127.0.0.1",
                "port": self.port,
                "shutdown_grace": 10,
            },
            "storage": {
                "spool_dir": str(self.spool),
                "database_url": self.db_url,
                "min_free_disk_mb": 0,
            },
            "worker": {"concurrency": 0},
            "web": {"enabled": False},
        }
        for key, value in (self.extra or {}).items():
            if isinstance(value, dict) and isinstance(sections.get(key), dict):
                sections[key].update(value)
            else:
                sections[key] = value
        self.config_path.write_text(render_config(sections))

    def start(self, timeout_s: float = 60.0) -> NodeProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.write_config()
        log = self.log_path.open("ab")
        role_args = ["--role", self.roles] if self.roles else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "-c", str(self.config_path), "serve",
             *role_args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        try:
            if self.roles and "receiver" not in self.roles and self.roles != "all":
                self._wait_for_log("roles: ", timeout_s)
            else:
                wait_for_port(self.port, timeout_s, self.proc)
        except Exception as exc:
            self.kill()
            raise RuntimeError(f"node did not start:\n{self.log()}") from exc
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _wait_for_log(self, text: str, timeout_s: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} in the node's log after {timeout_s} s")
            time.sleep(0.1)

    def terminate(self, timeout_s: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                pass


def storescu(
    port: int,
    paths: list[Path] | list[str],
    *,
    called_ae: str = "DICOM_NODE",
    calling_ae: str = "STORESCU",
    extra_args: list[str] | None = None,
    timeout_s: float = 120.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``storescu`` (verbose) against 127.0.0.1:*port*."""
    exe = require_tool("storescu")
    args = [
        exe,
        "-v",
        "-R",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        "+sd",
        "+r",
        "-nh",
        *(extra_args or []),
        "127.0.0.1",
        str(port),
        *map(str, paths),
    ]
    return subprocess.run(
        args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout_s, check=check
    )


def echoscu(
    port: int,
    *,
    called_ae: str = "DICOM_NODE",
    calling_ae: str = "ECHOSCU",
    timeout_s: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``echoscu`` against 127.0.0.1:*port*."""
    exe = require_tool("echoscu")
    return subprocess.run(
        [exe, "-v", "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def config_text(**sections: Any) -> str:
    return textwrap.dedent(render_config(sections))


# storescu proposes only uncompressed syntaxes unless told; one option per syntax.
STORESCU_SYNTAX_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-x=",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def storescu_as_is(
    port: int, files: list[Path], transfer_syntax: str, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """storescu proposing *transfer_syntax*, so files in it go without transcoding."""
    option = STORESCU_SYNTAX_OPTION.get(transfer_syntax)
    extra = list(kwargs.pop("extra_args", []) or [])
    if option:
        extra.append(option)
    return storescu(port, files, extra_args=extra, **kwargs)

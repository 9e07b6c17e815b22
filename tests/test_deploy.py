"""The deployment files parse, agree with each other and call real CLI commands.

Containers cannot be built in the test environment, so these checks are
static: the YAML parses, the container configuration validates, and every
``dicom-node`` command line in the Dockerfile, the systemd unit and the
Kubernetes probes names a real sub-command with arguments it accepts.
"""

from __future__ import annotations

import configparser
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

from dicom_node.cli import main as cli_main
from dicom_node.config import Settings, load_settings
from dicom_node.deliver.scu import parse_peer
from dicom_node.errors import ConfigError
from dicom_node.web.server import WebServerError, refuse_open_listener

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DATA_DIR = Path("/var/lib/dicom-node")
CONFIG_IN_IMAGE = "/etc/dicom-node/config.toml"


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DICOM_NODE_"):
            monkeypatch.delenv(key)


def container_settings() -> Settings:
    return load_settings(DEPLOY / "config.container.toml")


def expand_defaults(text: str) -> str:
    """Expand ``${VAR:-default}`` (shell / compose) to its default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)


def check_cli_argv(argv: list[str]) -> tuple[str, list[str]]:
    """Check a ``dicom-node ...`` command line against the click group.

    Returns the sub-command's name and its arguments; fails when the group
    options or the sub-command are not real.
    """
    assert Path(argv[0]).name == "dicom-node", argv
    group_options = {p.opts[0]: p for p in cli_main.params if p.opts}
    for p in cli_main.params:
        for opt in (*p.opts, *p.secondary_opts):
            group_options[opt] = p
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        param = group_options.get(argv[i])
        assert param is not None, f"unknown option {argv[i]!r} of dicom-node in {argv}"
        i += 1 if getattr(param, "is_flag", False) else 2
    assert i < len(argv), f"no sub-command in {argv}"
    name, rest = argv[i], argv[i + 1 :]
    assert name in cli_main.commands, f"{name!r} is not a dicom-node command"
    command = cli_main.commands[name]
    # Let click parse the sub-command's own arguments (no callback runs).
    ctx = command.make_context(name, list(rest), resilient_parsing=False)
    ctx.close()
    return name, rest


def check_echo_to_self(rest: list[str]) -> None:
    """``echo [--timeout N] HOST:PORT:AET`` names the node of the container config."""
    settings = container_settings()
    args = [a for a in rest if not a.startswith("-") and not a.replace(".", "").isdigit()]
    assert len(args) == 1, rest
    peer = parse_peer(args[0])
    assert peer.host == "127.0.0.1"
    assert peer.port == settings.node.port
    assert peer.ae_title == settings.node.ae_title


# -- configuration ---------------------------------------------------------------


def test_container_config_validates() -> None:
    settings = container_settings()
    assert settings.node.host == "0.0.0.0"
    assert settings.node.port == 11112
    assert settings.web.host == "0.0.0.0" and settings.web.port == 8080
    # Beyond loopback: the token comes from the environment, or serve refuses to start.
    assert settings.web.token is None and settings.web.allowed_hosts == []
    with pytest.raises(WebServerError, match=r"\[web\] token"):
        refuse_open_listener(settings.web)
    assert settings.storage.spool_dir.is_relative_to(DATA_DIR)
    assert settings.storage.database_url.startswith("sqlite:////var/lib/dicom-node/")
    for dest in settings.destinations:
        if dest.path is not None:
            assert dest.path.is_relative_to(DATA_DIR), dest
    # Stops within the 60 s the orchestrators allow.
    assert settings.node.shutdown_grace.total_seconds() < 60


def test_container_config_documents_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (DEPLOY / "config.container.toml").read_text()
    examples = re.findall(r'^#\s*database_url\s*=\s*"(postgresql[^"]+)"', text, re.M)
    assert examples, "no commented PostgreSQL example"
    monkeypatch.setenv("DICOM_NODE_STORAGE__DATABASE_URL", examples[0])
    assert container_settings().storage.database_url == examples[0]


# -- Dockerfile --------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, "Dockerfile ends in a line continuation"
    return out


def test_dockerfile_shape() -> None:
    ins = dockerfile_instructions()
    by: dict[str, list[str]] = {}
    for word, args in ins:
        by.setdefault(word, []).append(args)
    args_ = dict(a.split("=", 1) for a in by["ARG"] if "=" in a)
    bases = [expand_defaults(f.split()[0].replace("${PYTHON_IMAGE}", args_["PYTHON_IMAGE"]))
             for f in by["FROM"]]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases
    final_user = by["USER"][-1].split(":")[0]
    assert final_user not in ("root", "0"), final_user
    assert by["VOLUME"] == [str(DATA_DIR)]
    assert sorted(p for e in by["EXPOSE"] for p in e.split()) == ["11112", "8080"]
    assert any("pip install" in r for r in by["RUN"])
    copies = [c.split() for c in by["COPY"]]
    assert ["deploy/config.container.toml", CONFIG_IN_IMAGE] in copies
    for copy in copies:  # sources from the build context exist (wildcards may match nothing)
        if not any(c.startswith("--from") for c in copy):
            for src in copy[:-1]:
                assert "*" in src or (ROOT / src).exists(), src


def test_dockerfile_runs_serve_and_health_checks_with_echo() -> None:
    by: dict[str, list[str]] = {}
    for word, args in dockerfile_instructions():
        by.setdefault(word, []).append(args)
    entrypoint = json.loads(by["ENTRYPOINT"][-1])
    cmd = json.loads(by["CMD"][-1])
    argv = entrypoint + cmd
    assert argv == ["dicom-node", "--config", CONFIG_IN_IMAGE, "serve"]
    assert check_cli_argv(argv) == ("serve", [])

    (health,) = by["HEALTHCHECK"]
    assert "--start-period" in health
    shell = expand_defaults(health.split(" CMD ", 1)[1])
    name, rest = check_cli_argv(shlex.split(shell))
    assert name == "echo"
    check_echo_to_self(rest)


# -- Compose ---------------------------------------------------------------------------


def test_compose_file() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    node, postgres = services["node"], services["postgres"]
    assert node["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (DEPLOY / node["build"]["context"] / node["build"]["dockerfile"]).is_file()
    assert "postgres" in node["depends_on"]
    # DICOM on every interface; the dashboard and API on the Docker host's loopback only.
    assert set(node["ports"]) == {"11112:11112", "127.0.0.1:8080:8080"}
    volume, mount = node["volumes"][0].split(":")[:2]
    assert mount == str(DATA_DIR) and volume in compose["volumes"]

    url = expand_defaults(node["environment"]["DICOM_NODE_STORAGE__DATABASE_URL"])
    env = postgres["environment"]
    password = expand_defaults(env["POSTGRES_PASSWORD"])
    expected = f"postgresql://{env['POSTGRES_USER']}:{password}@postgres:5432/{env['POSTGRES_DB']}"
    assert url == expected


def compose_environment() -> dict[str, str]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return {k: str(v) for k, v in compose["services"]["node"]["environment"].items()}


def test_compose_database_url_validates(monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose_environment()
    monkeypatch.setenv("DICOM_NODE_STORAGE__DATABASE_URL",
                       expand_defaults(env["DICOM_NODE_STORAGE__DATABASE_URL"]))
    settings = container_settings()
    assert settings.storage.database_url.startswith("postgresql://")
    assert "@postgres:5432/" in settings.storage.database_url


def test_compose_web_token_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compose file passes WEB_TOKEN as the web token; its placeholder is refused."""
    env = compose_environment()
    assert env["DICOM_NODE_WEB__TOKEN"] == "${WEB_TOKEN:-change-me}"
    for key, value in env.items():
        monkeypatch.setenv(key, expand_defaults(value))
    with pytest.raises(ConfigError, match=r"web\.token: .*placeholder"):
        container_settings()
    monkeypatch.setenv("DICOM_NODE_WEB__TOKEN", "b5f0c1d2e3a4968778695a4b3c2d1e0f")
    settings = container_settings()
    assert settings.web.token is not None
    refuse_open_listener(settings.web)  # a token: serving on 0.0.0.0 is allowed


# -- Kubernetes -----------------------------------------------------------------------


def kube_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert "apiVersion" in doc and "kind" in doc, path
                objects[doc["kind"]] = doc
    return objects


def test_kubernetes_manifests() -> None:
    objs = kube_objects()
    kustomization = objs["Kustomization"]
    for resource in kustomization["resources"]:
        assert (DEPLOY / "kubernetes" / resource).is_file(), resource

    sts, service, config_map = objs["StatefulSet"], objs["Service"], objs["ConfigMap"]
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60

    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"dicom": 11112, "http": 8080}
    svc_ports = {p["port"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert svc_ports == {11112: "dicom", 8080: "http"}

    assert container["readinessProbe"]["tcpSocket"]["port"] in (11112, "dicom")
    liveness = container["livenessProbe"]["exec"]["command"]
    name, rest = check_cli_argv(liveness)
    assert name == "echo"
    check_echo_to_self(rest)
    assert container.get("args", ["serve"]) == ["serve"]
    env = {e["name"]: e for e in container["env"]}
    token = env["DICOM_NODE_WEB__TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["name"] == "dicom-node-web" and not token.get("optional", False)

    requests = container["resources"]["requests"]
    assert {"cpu", "memory"} <= requests.keys()
    assert "nvidia.com/gpu" in (DEPLOY / "kubernetes" / "statefulset.yaml").read_text()

    mounts = {m["name"]: m for m in container["volumeMounts"]}
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    assert mounts["data"]["mountPath"] == str(DATA_DIR) and "data" in claims
    assert claims["data"]["spec"]["resources"]["requests"]["storage"]
    assert mounts["config"]["mountPath"] == CONFIG_IN_IMAGE
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    assert mounts["config"]["subPath"] in config_map["data"]


def test_kubernetes_config_matches_the_container_config(tmp_path: Path) -> None:
    text = kube_objects()["ConfigMap"]["data"]["config.toml"]
    path = tmp_path / "config.toml"
    path.write_text(text)
    in_cluster = load_settings(path)
    assert in_cluster.model_dump() == container_settings().model_dump()


# -- systemd ---------------------------------------------------------------------------


def systemd_unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=True, interpolation=None, empty_lines_in_values=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd" / "dicom-node.service").read_text())
    return unit


def test_systemd_unit() -> None:
    unit = systemd_unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    svc = unit["Service"]
    assert svc["Type"] == "simple"
    assert svc["User"] not in ("", "root", "0")
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == "/opt/dicom-node/.venv/bin/dicom-node"
    assert argv == [argv[0], "--config", CONFIG_IN_IMAGE, "serve"]
    assert check_cli_argv(argv) == ("serve", [])
    assert svc["KillSignal"] == "SIGTERM"
    assert svc["TimeoutStopSec"] == "60"
    assert svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == "yes"

    writable = [Path(p.lstrip("-")) for p in svc["ReadWritePaths"].split()]
    settings = container_settings()
    db_file = Path(settings.storage.database_url.removeprefix("sqlite:///"))
    for needed in (settings.storage.spool_dir, db_file):
        assert any(needed.is_relative_to(w) for w in writable), needed
    assert unit["Install"]["WantedBy"] == "multi-user.target"

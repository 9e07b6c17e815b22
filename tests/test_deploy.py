"""The deployment files parse, agree with each other and call real CLI commands.

Containers cannot be built in the test environment, so these checks are
static: the YAML parses, the container configurations validate, and every
``dicom-node`` command line in the Dockerfile, the systemd unit, the compose
files and the Kubernetes manifests names a real sub-command with arguments it
accepts.  The Kubernetes manifests are also validated against the API schemas
bundled with ``kubernetes-validate`` (offline), and the scale-out shape
(``deploy/kubernetes/scale-out``, ``deploy/compose.scale-out.yaml``) is checked
for what a schema cannot see: roles, queues, selectors, ports, volumes,
Secrets and the environment overrides each process gets.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import BaseModel

from dicom_node.cli import main as cli_main
from dicom_node.cli_worker import GPU_QUEUE, consumable_queues
from dicom_node.config import Settings, load_settings
from dicom_node.deliver.scu import parse_peer
from dicom_node.errors import ConfigError
from dicom_node.node import ROLES, parse_roles
from dicom_node.web.server import WebServerError, refuse_open_listener

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DATA_DIR = Path("/var/lib/dicom-node")
CONFIG_IN_IMAGE = "/etc/dicom-node/config.toml"
SCALE_OUT = DEPLOY / "kubernetes" / "scale-out"
COMPOSE_SCALE_OUT = DEPLOY / "compose.scale-out.yaml"
#: The oldest Kubernetes release the manifests are validated against (and the newest bundled).
MIN_KUBERNETES = (1, 30)
#: A web token that passes the node's checks (the example Secret holds a placeholder).
GOOD_TOKEN = "b5f0c1d2e3a4968778695a4b3c2d1e0f"


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
    name, rest, _ = parse_cli_argv(argv)
    return name, rest


def parse_cli_argv(argv: list[str]) -> tuple[str, list[str], dict[str, Any]]:
    """:func:`check_cli_argv`, also returning the parameters click parsed.

    A sub-command group (``db upgrade``) is followed down to its command; the
    name comes back with a space (``"db upgrade"``).
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
    while isinstance(command, click.Group):
        assert rest and rest[0] in command.commands, f"no sub-command of {name!r} in {argv}"
        command = command.commands[rest[0]]
        name, rest = f"{name} {rest[0]}", rest[1:]
    # Let click parse the sub-command's own arguments (no callback runs).
    ctx = command.make_context(name, list(rest), resilient_parsing=False)
    params = dict(ctx.params)
    ctx.close()
    return name, rest, params


def check_echo_to_self(rest: list[str], settings: Settings | None = None) -> None:
    """``echo [--timeout N] HOST:PORT:AET`` names the node of *settings* (the container config)."""
    settings = settings or container_settings()
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


# -- environment overrides -------------------------------------------------------------

#: ``DICOM_NODE_*`` variables that are not settings: the CLI's own.
CLI_ENV_VARS = {p.envvar for p in cli_main.params if isinstance(p.envvar, str)}


def setting_of_env(name: str) -> str:
    """The setting ``section.key`` that ``DICOM_NODE_<SECTION>__<KEY>`` overrides."""
    assert name.startswith("DICOM_NODE_"), name
    section, sep, key = name.removeprefix("DICOM_NODE_").lower().partition("__")
    assert sep and key, f"{name}: not DICOM_NODE_<SECTION>__<KEY>"
    assert section in Settings.model_fields, f"{name}: no section [{section}]"
    model = Settings.model_fields[section].annotation
    is_table = isinstance(model, type) and issubclass(model, BaseModel)
    assert is_table, f"{name}: [{section}] is a list"
    assert key in model.model_fields, f"{name}: [{section}] has no key {key!r}"
    return f"{section}.{key}"


def test_setting_of_env_rejects_what_is_not_a_setting() -> None:
    assert setting_of_env("DICOM_NODE_CELERY__BROKER_URL") == "celery.broker_url"
    for wrong in ("DICOM_NODE_CELERY__BROKER", "DICOM_NODE_BROKER__URL", "DICOM_NODE_WEB_TOKEN",
                  "DICOM_NODE_RULES__QUEUE"):
        with pytest.raises(AssertionError):
            setting_of_env(wrong)


def deployment_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in (".yaml", ".toml", ".md")]
    return sorted([*files, DEPLOY / "Dockerfile", DEPLOY / "systemd" / "dicom-node.service"])


def test_every_environment_variable_names_a_setting() -> None:
    """Each ``DICOM_NODE_*`` name in the deployment files (comments included) is real."""
    seen = set()
    for path in deployment_files():
        for name in re.findall(r"\bDICOM_NODE_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            seen.add(name)
            if name not in CLI_ENV_VARS:
                setting_of_env(name)
    assert {"DICOM_NODE_STORAGE__DATABASE_URL", "DICOM_NODE_CELERY__BROKER_URL",
            "DICOM_NODE_WEB__TOKEN"} <= seen


def settings_with_env(
    monkeypatch: pytest.MonkeyPatch, config: Path, env: dict[str, str]
) -> Settings:
    """The settings of *config* as a process with *env* (its ``DICOM_NODE_*`` part) reads them."""
    with monkeypatch.context() as m:
        for key, value in env.items():
            if key.startswith("DICOM_NODE_"):
                m.setenv(key, value)
        return load_settings(config)


def image_argv(command: list[str] | None, args: list[str] | None) -> list[str]:
    """The process a container of the image runs: its command (else the image's
    ENTRYPOINT) followed by its arguments (else, without a command, the image's CMD)."""
    by: dict[str, list[str]] = {}
    for word, text in dockerfile_instructions():
        by.setdefault(word, []).append(text)
    if command:
        return list(command) + list(args or [])
    entrypoint = json.loads(by["ENTRYPOINT"][-1])
    return entrypoint + (list(args) if args else json.loads(by["CMD"][-1]))


def check_process(argv: list[str], executor: str) -> tuple[str, dict[str, Any]]:
    """Check a dicom-node process' command line: the CLI accepts it, ``--config`` is the
    mounted config, and ``serve --role`` parses for *executor*.  Returns the command's
    name and parameters, with ``roles`` (a frozenset) for ``serve``."""
    name, _rest, params = parse_cli_argv(argv)
    assert argv[1:3] == ["--config", CONFIG_IN_IMAGE], argv
    if name == "serve":
        params["roles"] = parse_roles(params["role_text"], executor)
    if name == "worker":
        params["queue_list"] = [q.strip() for q in params["queues"].split(",") if q.strip()]
        assert params["queue_list"], f"name the queues: {argv}"
    return name, params


# -- Kubernetes: every manifest ---------------------------------------------------------


def manifest_documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document under deploy/kubernetes (both bases, the Secret examples)."""
    out = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path, doc))
    return out


def api_documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p, d in manifest_documents() if d.get("kind") != "Kustomization"]


def kubernetes_validate_module() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("kubernetes-validate is missing (pip install -e '.[dev]')")
        pytest.skip("kubernetes-validate is not installed")
    return kubernetes_validate


def schema_versions(kv: Any) -> list[str]:
    """The oldest bundled Kubernetes schema from :data:`MIN_KUBERNETES` on, and the newest."""

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split("."))

    versions = sorted(kv.utils.all_versions(), key=key)
    supported = [v for v in versions if key(v)[:2] >= MIN_KUBERNETES] or versions[-1:]
    return sorted({supported[0], versions[-1]}, key=key)


def document_id(path: Path, doc: dict[str, Any]) -> str:
    return f"{path.relative_to(DEPLOY)}:{doc['kind']}/{doc['metadata']['name']}"


@pytest.mark.parametrize(
    "path,doc", api_documents(), ids=[document_id(p, d) for p, d in api_documents()]
)
def test_kubernetes_manifest_matches_the_api_schema(path: Path, doc: dict[str, Any]) -> None:
    """Strict: unknown fields, wrong types and missing required fields fail."""
    kv = kubernetes_validate_module()
    for version in schema_versions(kv):
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{path.relative_to(DEPLOY)} against Kubernetes {version}: {exc}")


def test_kubernetes_validate_catches_mistakes() -> None:
    kv = kubernetes_validate_module()
    (version,) = schema_versions(kv)[-1:]
    good = yaml.safe_load((SCALE_OUT / "pvc.yaml").read_text())
    kv.validate(good, version, strict=True)
    for bad in (
        {**good, "spec": {**good["spec"], "accesModes": ["ReadWriteMany"]}},
        {**good, "spec": {**good["spec"], "accessModes": "ReadWriteMany"}},
    ):
        with pytest.raises(kv.ValidationError):
            kv.validate(bad, version, strict=True)


def test_kubernetes_documents_have_identity() -> None:
    names = set()
    for path, doc in api_documents():
        assert doc.get("apiVersion") and doc.get("kind"), path
        name = doc.get("metadata", {}).get("name")
        assert name and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), (path, name)
        base = path.parent
        assert (base, doc["kind"], name) not in names, f"{doc['kind']}/{name} twice in {base}"
        names.add((base, doc["kind"], name))


# -- Kubernetes: scale-out -----------------------------------------------------------------


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "Job")


def scale_out_objects() -> list[dict[str, Any]]:
    """The objects kustomization.yaml lists (in its order)."""
    kustomization = yaml.safe_load((SCALE_OUT / "kustomization.yaml").read_text())
    objects = []
    for resource in kustomization["resources"]:
        objects += [d for d in yaml.safe_load_all((SCALE_OUT / resource).read_text()) if d]
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] in WORKLOAD_KINDS}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def dicom_node_containers(
    objects: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, container) for every container that runs the node's image."""
    for workload in workloads(objects).values():
        for container in pod_spec(workload)["containers"]:
            if container["image"].split(":")[0].endswith("dicom-node"):
                yield workload, container


def example_secrets() -> dict[str, dict[str, str]]:
    docs = yaml.safe_load_all((SCALE_OUT / "secrets.example.yaml").read_text())
    return {d["metadata"]["name"]: d["stringData"] for d in docs if d and d["kind"] == "Secret"}


def container_env(container: dict[str, Any], token: str | None = GOOD_TOKEN) -> dict[str, str]:
    """The container's environment, Secrets filled in from secrets.example.yaml (and the
    web token's placeholder replaced by *token* unless ``None``)."""
    secrets = example_secrets()
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = str(entry["value"])
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert not ref.get("optional", False), f"{entry['name']}: the Secret must be required"
        assert ref["name"] in secrets, f"no example of the Secret {ref['name']!r}"
        assert ref["key"] in secrets[ref["name"]], f"{ref['name']!r} lacks {ref['key']!r}"
        env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    if token is not None and "DICOM_NODE_WEB__TOKEN" in env:
        env["DICOM_NODE_WEB__TOKEN"] = token
    return env


@pytest.fixture
def scale_out_config(tmp_path: Path) -> Path:
    (config_map,) = by_kind(scale_out_objects(), "ConfigMap").values()
    path = tmp_path / "config.toml"
    path.write_text(config_map["data"]["config.toml"])
    return path


def test_scale_out_kustomization_lists_the_files() -> None:
    kustomization = yaml.safe_load((SCALE_OUT / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert set(kustomization) <= {"apiVersion", "kind", "resources", "images", "labels",
                                  "namespace", "configMapGenerator", "secretGenerator"}
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), resources
    for resource in resources:
        assert (SCALE_OUT / resource).is_file(), f"kustomization.yaml lists a missing {resource}"
    on_disk = {p.name for p in SCALE_OUT.glob("*.yaml")}
    # Everything but the Secret examples (placeholders) is applied.
    assert set(resources) == on_disk - {"kustomization.yaml", "secrets.example.yaml"}
    assert "Secret" not in {o["kind"] for o in scale_out_objects()}
    # The single-node base is still its own, untouched by this one.
    single = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert not any(r.startswith("scale-out") for r in single["resources"])


def test_scale_out_references_resolve() -> None:
    """Selectors, Service ports, volumes, claims, the ConfigMap and Secrets fit together."""
    objects = scale_out_objects()
    loads = workloads(objects)
    claims, config_maps = by_kind(objects, "PersistentVolumeClaim"), by_kind(objects, "ConfigMap")
    secrets = example_secrets()
    for name, workload in loads.items():
        labels = pod_labels(workload)
        assert labels.get("app.kubernetes.io/name") == "dicom-node", name
        if workload["kind"] != "Job":
            assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        # Selectors of two workloads must not overlap (each pod belongs to one).
        for other, other_load in loads.items():
            if other != name and other_load["kind"] != "Job" and workload["kind"] != "Job":
                selector = other_load["spec"]["selector"]["matchLabels"]
                assert not selector.items() <= labels.items(), f"{other} selects pods of {name}"
        pod = pod_spec(workload)
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert len(volumes) == len(pod["volumes"]), name
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}: mount of undeclared {mount['name']!r}"
                volume = volumes[mount["name"]]
                if "configMap" in volume:
                    config_map = config_maps[volume["configMap"]["name"]]
                    assert mount.get("subPath", "config.toml") in config_map["data"]
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], (name, ref)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, name

    for service in by_kind(objects, "Service").values():
        selector = service["spec"]["selector"]
        selected = [w for w in loads.values()
                    if w["kind"] != "Job" and selector.items() <= pod_labels(w).items()]
        assert len(selected) == 1, f"Service {service['metadata']['name']} selects {len(selected)}"
        ports = {p["name"]: p["containerPort"]
                 for c in pod_spec(selected[0])["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert target in ports or target in ports.values(), (service["metadata"], target)
            assert ports.get(target, target) == port["port"], "the Service keeps the port number"

    (claim,) = claims.values()
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_scale_out_processes(scale_out_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process: a real command line, the roles and queues of the shape, and
    the settings its environment gives it."""
    objects = scale_out_objects()
    (claim_name,) = by_kind(objects, "PersistentVolumeClaim")
    roles_seen: set[str] = set()
    consumed: set[str] = set()
    found: dict[str, dict[str, Any]] = {}
    for workload, container in dicom_node_containers(objects):
        name = workload["metadata"]["name"]
        env = container_env(container)
        for key in env:
            if key.startswith("DICOM_NODE_"):
                setting_of_env(key)
        settings = settings_with_env(monkeypatch, scale_out_config, env)
        argv = image_argv(container.get("command"), container.get("args"))
        command, params = check_process(argv, settings.worker.executor)
        pod = pod_spec(workload)
        mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
        assert mounts[CONFIG_IN_IMAGE]["readOnly"] is True

        # Every process reads the same PostgreSQL, from the Secret.
        assert "DICOM_NODE_STORAGE__DATABASE_URL" in env, name
        assert settings.storage.database_url.startswith("postgresql://"), name
        if command == "db upgrade":
            assert workload["kind"] == "Job" and pod["restartPolicy"] in ("OnFailure", "Never")
            found["db upgrade"] = workload
            continue

        # ... and the same spool, results and outbox, on the ReadWriteMany claim.
        volumes = {v["name"]: v for v in pod["volumes"]}
        shared = [m for m in mounts.values()
                  if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName")
                  == claim_name]
        assert len(shared) == 1, f"{name} does not mount the shared claim"
        root = Path(shared[0]["mountPath"])
        assert not shared[0].get("readOnly", False)
        assert settings.storage.spool_dir.is_relative_to(root), name
        assert settings.storage.results_dir.is_relative_to(root), name
        for dest in settings.destinations:
            if getattr(dest, "path", None) is not None:
                assert dest.path.is_relative_to(root), dest
        assert settings.storage.shared_spool

        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if command == "serve":
            roles = params["roles"]
            roles_seen |= roles
            grace = settings.node.shutdown_grace.total_seconds()
            assert pod["terminationGracePeriodSeconds"] > grace, name
            if "collector" in roles and settings.worker.executor == "celery":
                assert "DICOM_NODE_CELERY__BROKER_URL" in env, f"{name} publishes jobs"
            if "receiver" in roles:
                assert ports == {"dicom": settings.node.port}, name
                assert container["readinessProbe"]["tcpSocket"]["port"] in ("dicom",
                                                                            settings.node.port)
                echo, rest = check_cli_argv(container["livenessProbe"]["exec"]["command"])
                assert echo == "echo"
                check_echo_to_self(rest, settings)
            if "web" in roles:
                assert ports == {"http": settings.web.port}, name
                assert "DICOM_NODE_WEB__TOKEN" in env
                assert settings.web.token is not None
                refuse_open_listener(settings.web)  # a token: serving on 0.0.0.0 is allowed
                probe = container["readinessProbe"]["httpGet"]
                assert probe["path"] == "/api/health" and probe["port"] in ("http", 8080)
                hosts = {h["value"] for h in probe.get("httpHeaders", []) if h["name"] == "Host"}
                assert hosts and hosts <= {"localhost", "127.0.0.1"}, "a name the node answers to"
            else:
                assert "DICOM_NODE_WEB__TOKEN" not in env, f"{name} needs no web token"
            found[",".join(sorted(roles))] = workload
        else:
            assert command == "worker", argv
            assert settings.worker.executor == "celery"
            assert "DICOM_NODE_CELERY__BROKER_URL" in env, name
            assert not ports, name
            gpus = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
            queues = consumable_queues(params["queue_list"], settings.celery.default_queue,
                                       cuda=gpus > 0)
            assert queues == params["queue_list"], f"{name}: without a GPU, no gpu queue"
            if gpus:
                assert params["concurrency"] <= gpus or params["pool"] in ("solo", "threads")
                found["worker gpu"] = workload
            else:
                assert settings.worker.device == "cpu", f"{name}: a CPU worker says so"
                found["worker cpu"] = workload
            consumed |= set(queues)
        if "DICOM_NODE_CELERY__BROKER_URL" in env:
            broker = example_secrets()["dicom-node-broker"]["url"]
            assert settings.celery.broker_url.get_secret_value() == broker

    # The shape: every role of `serve` somewhere, jobs through Celery.
    assert roles_seen == set(ROLES) - {"worker"}
    assert set(found) == {"db upgrade", "receiver", "collector,sender", "web", "worker gpu",
                          "worker cpu"}
    assert found["receiver"]["spec"]["replicas"] == 2
    assert found["collector,sender"]["spec"]["replicas"] == 1
    assert int(pod_spec(found["worker gpu"])["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"]) == 1
    assert GPU_QUEUE in consumed
    # Every rule's jobs go to a queue that a worker consumes.
    settings = settings_with_env(monkeypatch, scale_out_config, {})
    for rule in settings.rules:
        assert (rule.queue or settings.celery.default_queue) in consumed, rule.name


def test_scale_out_services(scale_out_config: Path) -> None:
    settings = load_settings(scale_out_config)
    services = by_kind(scale_out_objects(), "Service")
    assert {p["port"] for p in services["dicom-node"]["spec"]["ports"]} == {settings.node.port}
    assert {p["port"] for p in services["dicom-node-web"]["spec"]["ports"]} == {settings.web.port}
    # The web Service's name is one the node answers to.
    assert "dicom-node-web" in settings.web.allowed_hosts


def test_scale_out_config(scale_out_config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ConfigMap's config.toml: jobs through Celery, a shared spool, secrets elsewhere."""
    text = scale_out_config.read_text()
    assert "database_url =" not in text and "broker_url =" not in text and "token =" not in text
    settings = load_settings(scale_out_config)
    assert settings.worker.executor == "celery"
    assert settings.storage.shared_spool
    # Without the Secrets the node would fall back to SQLite and a local broker:
    # every process sets both (test_scale_out_processes).
    assert settings.storage.database_url.startswith("sqlite:")
    assert settings.node.shutdown_grace.total_seconds() < 60
    assert {r.queue for r in settings.rules} >= {GPU_QUEUE}


def test_scale_out_secret_examples_are_placeholders(
    scale_out_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = example_secrets()
    assert set(secrets) == {"dicom-node-db", "dicom-node-broker", "dicom-node-web"}
    assert "CHANGE_ME" in secrets["dicom-node-db"]["url"]
    assert "CHANGE_ME" in secrets["dicom-node-broker"]["url"]
    (web,) = [c for w, c in dicom_node_containers(scale_out_objects())
              if "DICOM_NODE_WEB__TOKEN" in container_env(c)]
    with pytest.raises(ConfigError, match=r"web\.token: .*placeholder"):
        settings_with_env(monkeypatch, scale_out_config, container_env(web, token=None))


# -- Compose: scale-out ------------------------------------------------------------------


def compose_scale_out() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_SCALE_OUT.read_text())


def compose_unescape(text: str) -> str:
    """What compose makes of a text: ``${VAR:-default}`` expanded, ``$$`` as ``$``."""
    assert not re.search(r"\$(?![{$])", text.replace("$$", "")), "write $ as $$"
    return expand_defaults(text).replace("$$", "$")


def compose_node_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith(
        "dicom-node")}


@pytest.fixture
def compose_config(tmp_path: Path) -> Path:
    compose = compose_scale_out()
    (config,) = compose["configs"].values()
    path = tmp_path / "config.toml"
    path.write_text(compose_unescape(config["content"]))
    return path


def test_compose_scale_out_shape() -> None:
    compose = compose_scale_out()
    services = compose["services"]
    assert {"postgres", "redis", "orthanc", "db-upgrade", "receiver", "collector-sender",
            "worker", "web"} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
    nodes = compose_node_services(compose)
    (config_name,) = compose["configs"]
    for name, service in nodes.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert service["configs"] == [{"source": config_name, "target": CONFIG_IN_IMAGE}]
        # One named volume for spool, results and outbox, shared by every process.
        volume, mount = service["volumes"][0].split(":")[:2]
        assert mount == str(DATA_DIR) and volume in compose["volumes"], name
        if name != "db-upgrade":
            assert services[name]["depends_on"]["db-upgrade"]["condition"] == (
                "service_completed_successfully")
    assert services["db-upgrade"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["db-upgrade"]["restart"] == "no"
    assert services["worker"]["deploy"]["replicas"] == 2


def test_compose_scale_out_processes(
    compose_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = compose_scale_out()
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    expected_db = (f"postgresql://{postgres['POSTGRES_USER']}:"
                   f"{expand_defaults(postgres['POSTGRES_PASSWORD'])}@postgres:5432/"
                   f"{postgres['POSTGRES_DB']}")
    roles_seen: set[str] = set()
    for name, service in compose_node_services(compose).items():
        env = {k: compose_unescape(str(v)) for k, v in service["environment"].items()}
        for key in env:
            setting_of_env(key)
        if "DICOM_NODE_WEB__TOKEN" in env:
            with pytest.raises(ConfigError, match=r"web\.token: .*placeholder"):
                settings_with_env(monkeypatch, compose_config, env)
            env["DICOM_NODE_WEB__TOKEN"] = GOOD_TOKEN
        settings = settings_with_env(monkeypatch, compose_config, env)
        assert settings.storage.database_url == expected_db, name
        broker = settings.celery.broker_url.get_secret_value()
        assert broker.split("//")[1].split(":")[0] in services, broker
        argv = image_argv(None, service["command"])
        command, params = check_process(argv, settings.worker.executor)
        container_ports = {p.rsplit(":", 1)[-1] for p in service.get("ports", [])}
        if command == "serve":
            roles = params["roles"]
            roles_seen |= roles
            expected_ports = set()
            if "receiver" in roles:
                expected_ports.add(str(settings.node.port))
                health = service["healthcheck"]["test"]
                assert health[0] == "CMD"
                echo, rest = check_cli_argv(health[1:])
                assert echo == "echo"
                check_echo_to_self(rest, settings)
            if "web" in roles:
                expected_ports.add(str(settings.web.port))
                assert "127.0.0.1:8080:8080" in service["ports"], "the dashboard on loopback only"
                assert f"127.0.0.1:{settings.web.port}/api/health" in " ".join(
                    service["healthcheck"]["test"])
            else:
                assert "DICOM_NODE_WEB__TOKEN" not in env
            assert container_ports == expected_ports, name
        elif command == "worker":
            queues = consumable_queues(params["queue_list"], settings.celery.default_queue, False)
            assert queues == params["queue_list"], name
            for rule in settings.rules:
                assert (rule.queue or settings.celery.default_queue) in queues, rule.name
            assert not container_ports
        else:
            assert command == "db upgrade", argv
    assert roles_seen == set(ROLES) - {"worker"}


def test_compose_scale_out_sends_to_orthanc(compose_config: Path) -> None:
    settings = load_settings(compose_config)
    orthanc = compose_scale_out()["services"]["orthanc"]["environment"]
    pacs = next(d for d in settings.destinations if d.type == "dicom")
    assert pacs.host == "orthanc"
    assert pacs.ae_title == orthanc["ORTHANC__DICOM_AET"]
    assert pacs.port == int(orthanc["ORTHANC__DICOM_PORT"])
    assert any(pacs.name in rule.destinations for rule in settings.rules)
    # Orthanc knows the node's receiver, to send it studies.
    modalities = json.loads(orthanc["ORTHANC__DICOM_MODALITIES"])
    assert [settings.node.ae_title, "receiver", settings.node.port] in modalities.values()

"""config.toml -> Settings: defaults, environment overrides, errors that name the key."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from dicom_node.config import DuplicatePolicy, Settings, load_settings
from dicom_node.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_repository_config_is_valid() -> None:
    settings = load_settings(ROOT / "config.toml")
    assert settings.node.ae_title == "DICOM_NODE"
    assert settings.storage.database_url.startswith("sqlite:///")
    assert Path(settings.storage.database_url.split("///", 1)[1]).is_absolute()


def test_defaults_without_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.node.port == 11112
    assert settings.node.dimse_timeout == timedelta(seconds=60)
    assert settings.storage.spool_dir == (tmp_path / "var" / "spool").resolve()
    assert settings.peers == []


def test_relative_paths_follow_the_file(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[storage]\nspool_dir = "s"\ndatabase_url = "sqlite:///d/x.db"\n')
    settings = load_settings(cfg)
    assert settings.storage.spool_dir == (tmp_path / "s").resolve()
    assert settings.storage.database_url == f"sqlite:///{(tmp_path / 'd' / 'x.db').resolve()}"


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(tmp_path, "[node]\nport = 4000\nae_title = \"FROM_FILE\"\n")
    monkeypatch.setenv("DICOM_NODE_NODE__PORT", "11113")
    settings = load_settings(cfg)
    assert settings.node.port == 11113
    assert settings.node.ae_title == "FROM_FILE"


def test_unknown_keys_are_errors_naming_the_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, "[node]\nprot = 4000\n[nodes]\nx = 1\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert "node.prot: unknown key" in text
    assert "nodes: unknown key" in text


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ('[node]\nae_title = "THIS_IS_MUCH_TOO_LONG"\n', "node.ae_title"),
        ('[node]\nae_title = "BAD\\\\AE"\n', "node.ae_title"),
        ("[node]\nport = 70000\n", "node.port"),
        ('[storage]\ndatabase_url = "mysql://x"\n', "storage.database_url"),
        ('[node]\nduplicate_policy = "overwrite"\n', "node.duplicate_policy"),
        ('[[destinations]]\nname = "pacs"\ntype = "dicom"\nhost = "h"\n', "needs ae_title, port"),
        ('[[destinations]]\nname = "out"\ntype = "folder"\n', "needs path"),
        ('[[rules]]\nname = "r"\ndestinations = ["nowhere"]\n', "unknown destination 'nowhere'"),
        ("[node\n", "cannot read"),
    ],
)
def test_bad_values_are_reported(tmp_path: Path, toml: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, toml))
    assert fragment in str(info.value)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_peers_destinations_and_policy(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        """
[node]
duplicate_policy = "reject"
[[peers]]
ae_title = "CT1"
host = "127.0.0.1"
[[peers]]
ae_title = "  MR1 "
[[destinations]]
name = "pacs"
type = "dicom"
ae_title = "ORTHANC"
host = "127.0.0.1"
port = 4242
""",
    )
    settings = load_settings(cfg)
    assert settings.node.duplicate_policy is DuplicatePolicy.REJECT
    assert [p.ae_title for p in settings.peers] == ["CT1", "MR1"]
    assert settings.peers[1].host is None
    assert settings.destinations[0].port == 4242


def test_destinations_dump_with_their_own_type_fields() -> None:
    """A dump (JSON or Python) keeps each destination's type fields and validates back."""
    settings = Settings.model_validate(
        {
            "destinations": [
                {"name": "pacs", "type": "dicom", "ae_title": "PACS", "host": "h", "port": 104},
                {"name": "outbox", "type": "folder", "path": "/srv/outbox"},
            ]
        }
    )
    for mode in ("json", "python"):
        dumped = settings.model_dump(mode=mode)["destinations"]
        assert dumped[0]["ae_title"] == "PACS" and dumped[0]["port"] == 104
        assert str(dumped[1]["path"]) == "/srv/outbox"
        again = Settings.model_validate({"destinations": dumped})
        assert again.destinations == settings.destinations

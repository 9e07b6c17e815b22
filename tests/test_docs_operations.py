"""docs/operations.md, the operator's guide, cannot drift from the code.

Static checks, no node started:

* every DIMSE status constant of :mod:`dicom_node.protocol.status` is named in
  the guide as its hex text, and every ``0x....`` code of the troubleshooting
  section is a status the code knows (a constant or an integer literal);
* every A-ASSOCIATE-RJ (result, source, reason) of the Storage SCP
  (``_RJ_*`` in :mod:`dicom_node.receive.scp`) is in the guide's table;
* every text the guide quotes in a table column named "log line" or "error
  text" is a format string of the code (``%s``, ``%d``, ``%.1f``, ... and
  f-string fields read as ``<...>``) in ``dicom_node/``, ``storage/`` or
  ``ai_models/``;
* every ``dicom-node ...`` command line in a code span or block names a real
  command (walked through click's ``list_commands``/``get_command``, so it
  works for lazily loaded sub-commands) and only options it has;
* every ``toml`` block loads through :func:`dicom_node.config.load_settings`,
  and every ``[section] key`` code span names a real setting;
* every ``dicom_node_*`` metric is one ``/metrics`` serves, and every
  relative link (and README anchor) resolves.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from pydantic import BaseModel

from dicom_node.cli import main as cli_main
from dicom_node.config import Settings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.protocol import status as st

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pydantic-settings reads TOML with tomli there)
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
TEXT = DOC.read_text(encoding="utf-8")
SOURCE_ROOTS = ("dicom_node", "storage", "ai_models")
CHECKED_COLUMNS = ("log line", "error text")
"""Table columns whose code spans must be the code's own texts."""

_PRINTF = re.compile(r"%[-#0+]*(?:\d+|\*)?(?:\.\d+)?[sdrifgeExXoac]")
_RUNS = re.compile(r"(?:<\.\.\.>)+")
_FENCE = r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```"
"""A fenced code block, also indented inside a list item."""


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("DICOM_NODE_"):
            monkeypatch.delenv(key)


# -- reading the guide ---------------------------------------------------------------


def _section(title_prefix: str) -> str:
    """The text of the ``## `` section whose title starts with *title_prefix*."""
    match = re.search(
        rf"^## {re.escape(title_prefix)}.*?$(.*?)(?=^## |\Z)", TEXT, re.MULTILINE | re.DOTALL
    )
    assert match, f"no section {title_prefix!r} in {DOC.name}"
    return match.group(1)


def _code_blocks(lang: str | None = None) -> Iterator[tuple[str, str]]:
    """(language, body) of each fenced block, of *lang* only when given."""
    for m in re.finditer(_FENCE, TEXT, re.MULTILINE | re.DOTALL):
        if lang is None or m.group(1) == lang:
            yield m.group(1), m.group(2)


def _prose() -> str:
    """The guide without its fenced blocks."""
    return re.sub(_FENCE, "", TEXT, flags=re.MULTILINE | re.DOTALL)


def _code_spans() -> list[str]:
    """Inline code spans outside the fenced blocks (joined over line breaks)."""
    return [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", _prose())]


def _split_row(line: str) -> list[str]:
    """A Markdown table row's cells (``|`` inside code spans does not split)."""
    cells, cell, in_code = [], "", False
    for ch in line.strip().strip("|"):
        if ch == "`":
            in_code = not in_code
        if ch == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += ch
    cells.append(cell.strip())
    return cells


def _tables(text: str) -> Iterator[tuple[list[str], list[list[str]]]]:
    """(header, rows) of each Markdown table in *text*."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\|[-| :]+\|$", lines[i + 1])
        ):
            header = [c.lower() for c in _split_row(lines[i])]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            yield header, rows
        else:
            i += 1


def quoted_texts() -> list[str]:
    """Every code span in a "log line" or "error text" column of the guide."""
    out = []
    for header, rows in _tables(TEXT):
        columns = [i for i, name in enumerate(header) if name in CHECKED_COLUMNS]
        for row in rows:
            for i in columns:
                out.extend(re.findall(r"`([^`]+)`", row[i]))
    return out


# -- reading the code ----------------------------------------------------------------


def normalise(text: str) -> str:
    """``%s``-style fields (and ``<...>`` already there) as one ``<...>``; ``%%`` as ``%``."""
    parts = [_PRINTF.sub("<...>", part) for part in text.split("%%")]
    return _RUNS.sub("<...>", "%".join(parts)).strip()


def _fstring(node: ast.JoinedStr) -> str:
    parts = []
    for value in node.values:
        if isinstance(value, ast.Constant):
            parts.append(str(value.value).replace("%", "%%"))
        else:
            parts.append("<...>")
    return "".join(parts)


def _source_files() -> Iterator[Path]:
    for root in SOURCE_ROOTS:
        yield from sorted((ROOT / root).rglob("*.py"))


def code_texts() -> set[str]:
    """Every string literal and f-string of the sources, normalised."""
    texts: set[str] = set()
    for path in _source_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.add(normalise(node.value))
            elif isinstance(node, ast.JoinedStr):
                texts.add(normalise(_fstring(node)))
    return texts


def code_status_literals() -> set[int]:
    """Integer literals of the sources that look like DIMSE statuses (4 hex digits)."""
    found: set[int] = set()
    for path in _source_files():
        for m in re.finditer(r"\b0x([0-9A-Fa-f]{4})\b", path.read_text(encoding="utf-8")):
            found.add(int(m.group(1), 16))
    return found


def status_constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(st).items()
        if name.isupper() and isinstance(value, int) and not isinstance(value, bool)
    }


# -- (a) statuses, rejections ------------------------------------------------------------


def test_every_status_constant_is_in_the_guide() -> None:
    constants = status_constants()
    assert constants, "no status constants found"
    missing = [
        f"{name} 0x{value:04X}" for name, value in constants.items() if f"0x{value:04X}" not in TEXT
    ]
    assert not missing, f"statuses the node answers but the guide does not name: {missing}"


def test_every_code_in_troubleshooting_exists_in_the_code() -> None:
    known = set(status_constants().values()) | code_status_literals()
    troubleshooting = _section("7. Troubleshooting")
    named = {int(m, 16) for m in re.findall(r"\b0x([0-9A-Fa-f]{4})\b", troubleshooting)}
    assert named, "the troubleshooting section names no status code"
    unknown = sorted(f"0x{code:04X}" for code in named - known)
    assert not unknown, f"codes in the troubleshooting section the code does not have: {unknown}"


def test_every_status_row_of_the_table_is_a_code_the_node_answers() -> None:
    table = next(
        (
            rows
            for header, rows in _tables(_section("7. Troubleshooting"))
            if header[:2] == ["status", "name in the log"]
        ),
        None,
    )
    assert table is not None, "no status table (status | name in the log | ...)"
    for row in table:
        code = int(row[0], 16)
        if code in st.DESCRIPTIONS:
            assert row[1] == st.describe(code), f"0x{code:04X}: the log says {st.describe(code)!r}"
        else:  # answered as a literal (0x0211, Unrecognized operation)
            assert code in code_status_literals(), f"0x{code:04X} is not in the code"


def test_every_association_rejection_is_in_the_guide() -> None:
    tree = ast.parse((ROOT / "dicom_node" / "receive" / "scp.py").read_text(encoding="utf-8"))
    rejections = {}
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.startswith("_RJ_")
        ):
            rejections[node.targets[0].id] = tuple(ast.literal_eval(node.value))
    assert len(rejections) >= 4, rejections
    for name, (result, source, reason) in rejections.items():
        assert f"| {result} / {source} / {reason} |" in TEXT, (
            f"{name} ({result}, {source}, {reason})"
        )
    aborts = re.search(
        r"_ABORT_\w+ = (0x[0-9A-Fa-f]+)", (ROOT / "dicom_node" / "receive" / "scp.py").read_text()
    )
    assert aborts, "no A-ABORT reason constant in scp.py"
    assert f"source 2, reason {int(aborts.group(1), 16)}" in TEXT


# -- (b) quoted log lines and error texts ------------------------------------------------


def test_quoted_log_lines_and_errors_are_the_codes_own() -> None:
    quoted = quoted_texts()
    assert len(quoted) >= 80, f"only {len(quoted)} quoted texts found: is the table format intact?"
    texts = code_texts()
    missing = sorted({q for q in quoted if normalise(q) not in texts})
    assert not missing, "quoted in docs/operations.md but not a text of the code:\n" + "\n".join(
        missing
    )


def test_key_log_lines_are_covered() -> None:
    """The lines an admin meets first are in the guide (a new one is added, not lost)."""
    quoted = {normalise(q) for q in quoted_texts()}
    expected = (
        "rejected association from %s%s: %s",
        "C-STORE from %s refused with 0x%04X (%s): %s",
        "series %s (%s, %r, %d instance(s)) matches no rule",
        "job %d attempt %d failed (%s): %s",
        "job %d skipped: %s",
        "job %d taken over from %s (lease expired)",
        "delivery to %s: %s%s",
        "health: database unreachable: %s",
        "retention: disk %.1f%% full, above the %.0f%% watermark, and nothing more may be "
        "purged (the rest is still being processed)",
    )
    missing = [line for line in expected if normalise(line) not in quoted]
    assert not missing, f"log lines the guide's troubleshooting tables must quote: {missing}"


def test_normalise() -> None:
    assert normalise("disk %.1f%% full (%d MB)") == "disk <...>% full (<...> MB)"
    assert normalise("delivery to %s: %s%s") == "delivery to <...>: <...>"
    assert normalise("status 0x%04X %r") == "status 0x<...> <...>"


# -- (c) commands -------------------------------------------------------------------------

_COMMAND = re.compile(
    r"(?:^\s*|&&\s*|;\s*|\bexec\s+\S+\s+|\bsudo\s+)(?:\S*/bin/)?dicom-node\s+(\S.*)$"
)
"""``dicom-node`` where a command line starts (not ``journalctl -u dicom-node``)."""
GLOBAL_OPTIONS_WITH_VALUE = {"--config", "-c"}
GLOBAL_FLAGS = {"--log-json", "--verbose", "-v", "--version", "--help", "-h"}


def _command_lines() -> Iterator[str]:
    """Every ``dicom-node`` invocation in code blocks and code spans, from the command on."""
    sources = [body for _lang, body in _code_blocks()] + _code_spans()
    for source in sources:
        for line in source.splitlines():
            for m in re.finditer(_COMMAND, line):
                yield m.group(1).split("#")[0].strip()


def _resolve(tokens: list[str]) -> tuple[click.Command, list[str], list[str]]:
    """The command *tokens* name, the path to it, and the tokens after it."""
    ctx = click.Context(cli_main)
    command: click.Command = cli_main
    path: list[str] = []
    rest = list(tokens)
    while rest and rest[0] in GLOBAL_OPTIONS_WITH_VALUE | GLOBAL_FLAGS:
        token = rest.pop(0)
        if token in GLOBAL_OPTIONS_WITH_VALUE:
            rest.pop(0)
    while isinstance(command, click.Group):
        assert rest, (
            f"`dicom-node {' '.join(tokens)}`: {' '.join(path) or 'dicom-node'} needs a sub-command"
        )
        name = rest.pop(0)
        known = command.list_commands(ctx)
        assert name in known, (
            f"`dicom-node {' '.join(tokens)}`: {name!r} is not a command of "
            f"{' '.join(['dicom-node', *path])} (known: {', '.join(known)})"
        )
        sub = command.get_command(ctx, name)
        assert sub is not None, name
        command, path = sub, [*path, name]
    return command, path, rest


def test_every_command_in_the_guide_exists() -> None:
    lines = list(_command_lines())
    assert len(lines) >= 40, f"only {len(lines)} dicom-node command lines found"
    seen = set()
    for line in lines:
        tokens = line.split()
        if (
            not tokens or tokens[0] == "dicom-node"
        ):  # a container named dicom-node, then the command
            continue
        command, path, rest = _resolve(tokens)
        seen.add(" ".join(path))
        options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
        options |= {"--help", "-h"}
        for token in rest:
            if token.startswith("--"):
                name = token.split("=", 1)[0]
                assert name in options, (
                    f"`dicom-node {line}`: {' '.join(path)} has no option {name}"
                )
    for expected in (
        "serve",
        "check-config",
        "echo",
        "rules test",
        "complete",
        "db upgrade",
        "retention run",
        "jobs retry",
        "users add",
        "worker",
        "audit",
    ):
        assert expected in seen, f"the guide never shows `dicom-node {expected}`"


def test_every_benchmark_command_exists() -> None:
    """``python -m bench.NAME --option`` lines name real modules and options."""
    runs = re.findall(r"python -m (bench\.\w+)([^\n#]*)", TEXT)
    assert len(runs) >= 6, runs
    for module, args in runs:
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        for option in re.findall(r"(?<!\S)(--[a-z][a-z-]*)", args):
            assert f'"{option}"' in source, f"{module} has no option {option}"
    for script in re.findall(r"bash (bench/[\w.]+\.sh)", TEXT):
        assert (ROOT / script).is_file(), script


def test_the_command_walk_sees_every_command() -> None:
    """The walk uses click's API, so a lazily loaded command is found like any other."""
    ctx = click.Context(cli_main)
    names = cli_main.list_commands(ctx)
    assert {"serve", "jobs", "rules", "db", "retention", "users"} <= set(names)
    assert isinstance(cli_main.get_command(ctx, "jobs"), click.Group)


# -- (d) configuration ---------------------------------------------------------------------


def _touch_files(table: Any, folder: Path) -> None:
    """Create the (relative) files a block names, so the loader's existence checks pass."""
    if isinstance(table, dict):
        for key, value in table.items():
            if key.endswith("_file") and isinstance(value, str) and not Path(value).is_absolute():
                target = folder / value
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            else:
                _touch_files(value, folder)
    elif isinstance(table, list):
        for item in table:
            _touch_files(item, folder)


def test_every_toml_block_loads(tmp_path: Path) -> None:
    blocks = [body for _lang, body in _code_blocks("toml")]
    assert len(blocks) >= 6, f"only {len(blocks)} toml blocks"
    for i, body in enumerate(blocks):
        folder = tmp_path / f"block{i}"
        folder.mkdir()
        _touch_files(tomllib.loads(body), folder)
        path = folder / "config.toml"
        path.write_text(body, encoding="utf-8")
        try:
            load_settings(path)
        except ConfigError as exc:
            pytest.fail(f"toml block {i + 1} of {DOC.name} does not load:\n{exc}\n---\n{body}")


def _section_model(section: str) -> type[BaseModel] | None:
    field = Settings.model_fields.get(section)
    if field is None:
        return None
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    args = getattr(annotation, "__args__", ())
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _keys_of(section: str) -> set[str]:
    if section == "destinations":
        from dicom_node.deliver.destinations.registry import BUILT_IN_TYPES

        keys: set[str] = set()
        for kind in BUILT_IN_TYPES:
            keys |= set(kind.settings_model.model_fields)
        return keys
    model = _section_model(section)
    assert model is not None, f"[{section}] is not a section of the settings"
    return set(model.model_fields)


def test_every_section_key_in_prose_is_a_setting() -> None:
    mentions = []
    for span in _code_spans():
        m = re.match(r"\[\[?([a-z_]+)\]\]? ([a-z_]+)\b", span)
        if m:
            mentions.append((m.group(1), m.group(2)))
    assert len(mentions) >= 20, mentions
    for section, key in mentions:
        assert key in _keys_of(section), f"`[{section}] {key}` is not a setting"


# -- metrics and links -----------------------------------------------------------------------


def test_every_metric_is_served() -> None:
    from dicom_node.web import metrics

    source = Path(metrics.__file__).read_text(encoding="utf-8")
    served = set()
    for name in re.findall(r'PREFIX \+ "(\w+)"', source) + re.findall(
        r'counter\(\s*"(\w+)"', source
    ):
        served |= {metrics.PREFIX + name, metrics.PREFIX + name + "_total"}
    served.add(metrics.PREFIX + "metrics_scrape_duration_seconds")
    named = set(re.findall(r"\bdicom_node_[a-z_]+", TEXT))
    assert len(named) >= 8, named
    unknown = sorted(named - served)
    assert not unknown, f"metrics the node does not serve: {unknown}"


def _slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return slug.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(
        r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL
    )
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_links_resolve() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", _prose())
    assert links
    for link in links:
        if re.match(r"^[a-z]+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = (DOC.parent / target).resolve() if target else DOC
        assert path.exists(), f"link to a missing file: {link}"
        if anchor:
            assert anchor in _anchors(path), f"no heading for #{anchor} in {path.name}"

"""``dicom-node rules list|test``: the configured routing rules (click commands).

``list`` prints them as a table; ``test`` runs them on files and explains
each decision, sending nothing.  The CLI group registers the ``rules`` group
lazily (``dicom_node.cli.LAZY_COMMANDS``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["match_text", "rules"]

console = Console()
err_console = Console(stderr=True)


@click.group("rules")
def rules() -> None:
    """Routing rules: list, test."""


@rules.command("list")
@click.pass_context
def rules_list(ctx: click.Context) -> None:
    """The configured rules: trigger, priority, match, pipelines, destinations."""
    settings = ctx.obj.settings()
    if not settings.rules:
        err_console.print("no [[rules]] configured", markup=False)
        return
    table = Table(title=f"rules ({len(settings.rules)})")
    for column in (
        "name",
        "trigger",
        "priority",
        "fallback",
        "match",
        "pipelines",
        "destinations",
        "quiet period",
    ):
        table.add_column(column, overflow="fold")
    for rule in settings.rules:
        cells = (
            rule.name,
            rule.trigger,
            str(rule.priority),
            "yes" if rule.fallback else "no",
            match_text(rule.match),
            ", ".join(rule.pipelines),
            ", ".join(rule.destinations),
            f"{rule.quiet_period_s:g} s",
        )
        table.add_row(*(Text(cell) for cell in cells))  # a regex's [...] is no markup
    console.print(table)


def match_text(match: Mapping[str, Any]) -> str:
    """A rule's ``match`` table in one line, e.g. ``Modality=CT, SliceThickness<=3,
    not(SeriesDescription~/scout/)`` or ``any(Modality=MR | Modality in (PT, NM))``
    (``,`` joins conditions that must all hold); ``(every series)`` for an empty table."""
    return _table_text(match) or "(every series)"


def _table_text(match: Mapping[str, Any]) -> str:
    parts = []
    for key, spec in match.items():
        if key in ("all", "any") and isinstance(spec, list):
            sep = " | " if key == "any" else "; "
            inner = sep.join(
                _table_text(item) if isinstance(item, Mapping) else str(item) for item in spec
            )
            parts.append(f"{key}({inner})")
        elif key == "not" and isinstance(spec, Mapping):
            parts.append(f"not({_table_text(spec)})")
        else:
            parts.append(_condition_text(key, spec))
    return ", ".join(parts)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _equals(key: str, value: Any) -> str:
    return f"{key} in {_value(value)}" if isinstance(value, list) else f"{key}={_value(value)}"


def _condition_text(key: str, spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return _equals(key, spec)
    parts = []
    if "equals" in spec or "any_of" in spec:
        parts.append(_equals(key, spec.get("equals", spec.get("any_of"))))
    if "regex" in spec:
        parts.append(f"{key}~/{spec['regex']}/")
    low, high = spec.get("min"), spec.get("max")
    if low is not None and high is not None:
        parts.append(f"{_value(low)}<={key}<={_value(high)}")
    elif low is not None:
        parts.append(f"{key}>={_value(low)}")
    elif high is not None:
        parts.append(f"{key}<={_value(high)}")
    if "contains" in spec:
        parts.append(f"{key} contains {_value(spec['contains'])}")
    if "present" in spec:
        parts.append(f"{key} {'present' if spec['present'] else 'absent'}")
    return ", ".join(parts)


@rules.command("test")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--calling-ae", default="", help="Calling AE title to assume.")
@click.option("--called-ae", default=None, help="Called AE title to assume (default: ours).")
@click.option("--peer-address", default="", help="Sender address to assume.")
@click.pass_context
def rules_test(
    ctx: click.Context,
    paths: tuple[Path, ...],
    calling_ae: str,
    called_ae: str | None,
    peer_address: str,
) -> None:
    """Run the rules on files or folders, send nothing, and explain each decision."""
    from pydicom import dcmread

    from dicom_node.collect.routing import evaluate_rules
    from dicom_node.deliver.scu import collect_dicom_files
    from dicom_node.receive.header import routing_attributes

    settings = ctx.obj.settings()
    if not settings.rules:
        err_console.print("[yellow]no [[rules]] configured[/]", markup=True)
    series: dict[str, tuple[Path, int]] = {}
    for path in collect_dicom_files(paths):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception as exc:  # noqa: BLE001 - report and go on
            err_console.print(f"skipped {path}: {exc}", markup=False)
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or f"(no SeriesInstanceUID) {path}")
        first, count = series.get(uid, (path, 0))
        series[uid] = (first, count + 1)
    if not series:
        err_console.print("no DICOM files found", markup=False)
        sys.exit(1)
    for uid, (first, count) in series.items():
        attrs = routing_attributes(dcmread(first, stop_before_pixels=True))
        attrs.update(
            calling_ae=calling_ae,
            called_ae=called_ae or settings.node.ae_title,
            peer_address=peer_address,
        )
        results = evaluate_rules(settings.rules, attrs)
        chosen = [r.rule for r in results if r.matched]
        title = (
            f"series {uid} ({attrs.get('Modality', '?')}, "
            f"{attrs.get('SeriesDescription', '')!s}, {count} file(s)): "
            f"{', '.join(chosen) if chosen else 'no rule matches'}"
        )
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("rule")
        table.add_column("result")
        table.add_column("why")
        for r in results:
            if r.matched:
                result = "[green]match[/]"
            elif r.fallback and not r.failures():
                result = "[yellow]fallback, not needed[/]"
            else:
                result = "[red]no match[/]"
            why = "; ".join(e.reason for e in r.failures()) or "all conditions hold"
            table.add_row(r.rule, result, why)
        console.print(table)

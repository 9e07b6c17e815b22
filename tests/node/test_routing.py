"""Routing rules on real series: a table of series x rules -> the rules that apply.

Attributes come from each series' first file exactly as the receiver records
them (:func:`dicom_node.receive.header.routing_attributes`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from dicom_node.collect.routing import RuleError, compile_match, evaluate_rules
from dicom_node.config import RuleSettings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.receive.header import routing_attributes

SERIES = {
    "philips_head_ct": "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm",
    "ge_tilted_ct": "dcm_qa_ct/GE_HiSpeedDual_head_tilted",
    "abdomen_ct_thin": "dcmqi/ct-3slice",
    "prostate_adc_mr": "dcmqi/qin-prostate-01-0001_adc",
    "mr_localizer": "dcm_qa_table/GE_SIGNA_Premier_3plane_localizer",
    "mammo_as_sc": "nema_wg04/MG1_mammo",
    "chest_cr": "nema_wg04/RG1_chest_CR",
}

RULES: list[dict[str, Any]] = [
    {"name": "ct-thin", "match": {"Modality": "ct", "SliceThickness": {"max": 3.0}}},
    {"name": "ct-axial", "match": {"Modality": "CT", "ImageType": {"contains": "axial"}}},
    # The shared mammogram is Secondary Capture with Modality RG: Modality alone misses it.
    {
        "name": "mammo",
        "match": {"any": [{"Modality": "MG"}, {"Modality": "RG", "BodyPartExamined": "BREAST"}]},
    },
    {"name": "chest-xr", "match": {"Modality": ["CR", "DX"], "BodyPartExamined": ["CHEST"]}},
    {
        "name": "mr-anatomy",
        "match": {
            "Modality": "MR",
            "ImageType": {"contains": "ORIGINAL"},
            "not": {"SeriesDescription": {"regex": "loc|scout"}},
        },
    },
    {"name": "head-by-description", "match": {"SeriesDescription": {"regex": "brain|head"}}},
    {"name": "from-ct-scanner", "match": {"calling_ae": "CT_SCANNER_1"}},
    {
        "name": "no-contrast-ct",
        "match": {"Modality": "CT", "ContrastBolusAgent": {"present": False}},
    },
    {"name": "catch-all", "fallback": True},
]

EXPECTED = {
    # ge_tilted_ct: no SeriesDescription at all -> that condition is false, not an error.
    "philips_head_ct": {"ct-axial", "head-by-description", "no-contrast-ct"},
    "ge_tilted_ct": {"ct-axial", "no-contrast-ct"},
    "abdomen_ct_thin": {"ct-thin", "ct-axial", "no-contrast-ct"},
    "prostate_adc_mr": {"catch-all"},  # DERIVED ImageType: not anatomy; nothing else applies
    "mr_localizer": {"catch-all"},  # ORIGINAL, but the description says localizer
    "mammo_as_sc": {"mammo"},
    "chest_cr": {"chest-xr"},
}


def first_file_attributes(folder: Path) -> dict[str, Any]:
    first = sorted(p for p in folder.iterdir() if p.is_file())[0]
    return routing_attributes(dcmread(first, stop_before_pixels=True))


@pytest.mark.parametrize("name", sorted(SERIES))
def test_rule_table(dicom_data: Path, name: str) -> None:
    attrs = first_file_attributes(dicom_data / SERIES[name])
    attrs.update(calling_ae="STORESCU", called_ae="DICOM_NODE", peer_address="127.0.0.1")
    rules = [RuleSettings(**r) for r in RULES]
    got = {r.rule for r in evaluate_rules(rules, attrs) if r.matched}
    assert got == EXPECTED[name]


def test_calling_ae_rule(dicom_data: Path) -> None:
    attrs = first_file_attributes(dicom_data / SERIES["philips_head_ct"])
    rules = [RuleSettings(**r) for r in RULES]
    attrs["calling_ae"] = "CT_SCANNER_1"
    got = {r.rule for r in evaluate_rules(rules, attrs) if r.matched}
    assert "from-ct-scanner" in got
    attrs["calling_ae"] = "ct_scanner_1"  # AE titles compare case-insensitively here too
    assert "from-ct-scanner" in {r.rule for r in evaluate_rules(rules, attrs) if r.matched}


def test_explanations_say_why(dicom_data: Path) -> None:
    attrs = first_file_attributes(dicom_data / SERIES["ge_tilted_ct"])
    (result,) = evaluate_rules([RuleSettings(**RULES[0])], attrs)
    assert not result.matched
    reasons = [e.reason for e in result.failures()]
    assert reasons == ["SliceThickness = 4, wanted in [, 3.0]"]
    (result,) = evaluate_rules([RuleSettings(**RULES[5])], attrs)
    assert [e.reason for e in result.failures()] == ["SeriesDescription is missing"]


@pytest.mark.parametrize(
    ("match", "fragment"),
    [
        ({"Modalty": "CT"}, "match.Modalty: 'Modalty' is not a DICOM keyword"),
        ({"SliceThickness": {"maxx": 3}}, "unknown operator(s) maxx"),
        ({"SliceThickness": {"max": "3"}}, "match.SliceThickness.max: expected a number"),
        ({"SeriesDescription": {"regex": "("}}, "match.SeriesDescription.regex: invalid"),
        ({"any": []}, "match.any: expected a non-empty list"),
        ({"not": {"Foo": 1}}, "match.not.Foo"),
        ({"Modality": True}, "present = true/false"),
        ({"SliceThickness": {"min": 5, "max": 1}}, "min 5 is above max 1"),
    ],
)
def test_invalid_matches_name_the_key(match: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RuleError) as info:
        compile_match(match)
    assert fragment in str(info.value)


def test_config_reports_rule_and_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[rules]]\nname = "ct-chest"\n[rules.match]\nSliceThickness = { max = "x" }\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert "rule 'ct-chest': match.SliceThickness.max: expected a number" in str(info.value)


def test_rules_test_command(dicom_data: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        """
[[rules]]
name = "ct-thin"
pipelines = ["ct-lungs"]
[rules.match]
Modality = "CT"
SliceThickness = { max = 3.0 }

[[rules]]
name = "catch-all"
fallback = true
"""
    )
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "dicom_node.cli",
            "-c",
            str(cfg),
            "rules",
            "test",
            str(dicom_data / SERIES["abdomen_ct_thin"]),
            str(dicom_data / SERIES["philips_head_ct"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin"},
    )
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.count("series ") == 2
    assert "3 file(s)): ct-thin" in out  # the thin abdominal CT
    assert "28 file(s)): catch-all" in out  # the 5 mm head phantom
    assert "SliceThickness = 5, wanted in [, 3.0]" in out


def test_check_config_knows_the_pipelines(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[[rules]]\nname = "r"\npipelines = ["ct-lungs", "ct-lung"]\n')
    res = subprocess.run(
        [sys.executable, "-m", "dicom_node.cli", "-c", str(cfg), "check-config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2
    assert "rule 'r': unknown pipeline 'ct-lung'" in res.stderr
    assert "'ct-lungs'" not in res.stderr.split("unknown pipeline", 1)[1].split("(known")[0]

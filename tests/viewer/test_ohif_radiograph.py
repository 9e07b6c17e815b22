"""Classification and detection reports in the radiologist's viewer: radiographs.

``dicom-node analyze --pipeline cxr-findings`` classifies a chest CR of the
demonstration model's training family (``tests/support/radiographs.py``: the
shared real CR is refused by the model's out-of-distribution check); DCMTK ``storescu`` puts
the radiograph and the node's SR into Orthanc, and the OHIF viewer opens the
SR in headless Chromium.  A classification SR holds no outline of its own:
OHIF 3.12 stops with a TypeError (and shows an empty viewer) on a Tracking
UID without an SCOORD, so every finding needs its TID 1410 region group
(``dicom_node/results/sr_regions.py``).  The checks: the SR opens, each
finding is drawn on the radiograph with the probability the node wrote, and
OHIF's measurement panel lists every finding under the node's label.  The
same for ``mg-masses`` on a mammogram of its training family: each mass's box
and score.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests.node.test_route_deliver import SR_CLASS, by_class, results_in_orthanc
from tests.support.ohif import (
    ViewerServer,
    chromium_executable,
    ohif_dist,
    orthanc_dicomweb_config,
    sync_playwright,
)
from tests.support.orthanc import OrthancServer
from tests.support.peers import storescu_as_is
from tests.support.radiographs import write_cxr, write_mammogram
from tests.viewer.page import Viewer, open_viewer
from tests.viewer.sr_content import Finding, listed_labels, sr_findings

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(600)]



@dataclass
class RadiographStack:
    study_uid: str
    sr: pydicom.Dataset
    viewer: ViewerServer


@contextmanager
def _analyzed(
    source_file: Path, pipeline: str, work: Path
) -> Iterator[RadiographStack]:
    """``dicom-node analyze`` on one image; it and the SR in Orthanc; OHIF in front."""
    dist = ohif_dist()
    chromium_executable()
    sync_playwright()
    series = work / "series"
    series.mkdir()
    source = shutil.copy2(source_file, series / source_file.name)
    results = work / "results"
    analyzed = subprocess.run(
        [
            sys.executable, "-m", "dicom_node.cli", "analyze",
            "--pipeline", pipeline, "--outputs", "sr", "--out", str(results), str(series),
        ],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert analyzed.returncode == 0, analyzed.stdout + analyzed.stderr
    written = sorted(results.glob("*.dcm"))
    assert written, analyzed.stdout
    header = pydicom.dcmread(source, stop_before_pixels=True)
    study_uid = str(header.StudyInstanceUID)
    orthanc = OrthancServer(work / "orthanc", dicomweb=True, extra=orthanc_dicomweb_config())
    with orthanc:
        # The image in its own transfer syntax (e.g. JPEG 2000), then the SR.
        for files, syntax in (
            ([source], str(header.file_meta.TransferSyntaxUID)),
            (written, "1.2.840.10008.1.2.1"),
        ):
            sent = storescu_as_is(
                orthanc.dicom_port, files, syntax, called_ae=orthanc.ae_title
            )
            assert sent.returncode == 0, sent.stdout + sent.stderr
        assert orthanc.lookup(str(header.SOPInstanceUID)), "the image is not in Orthanc"
        (sr_uid,) = by_class(results_in_orthanc(orthanc, study_uid), SR_CLASS)
        (hit,) = orthanc.lookup(sr_uid)
        sr = pydicom.dcmread(io.BytesIO(orthanc.instance_file(hit["ID"])))
        with ViewerServer(dist, orthanc.http_port) as viewer:
            yield RadiographStack(study_uid, sr, viewer)


@pytest.fixture(scope="module")
def radiograph(
    dicom_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RadiographStack]:
    work = tmp_path_factory.mktemp("viewer-radiograph")
    with _analyzed(write_cxr(work / "src"), "cxr-findings", work) as stack:
        yield stack


@pytest.fixture(scope="module")
def mammogram(
    dicom_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RadiographStack]:
    work = tmp_path_factory.mktemp("viewer-mammogram")
    with _analyzed(write_mammogram(work / "src"), "mg-masses", work) as stack:
        yield stack


@pytest.fixture
def viewer(
    radiograph: RadiographStack,
    artifacts: Callable[[str, bytes], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Viewer]:
    with open_viewer(radiograph.viewer, radiograph.study_uid, artifacts, tmp_path, request) as v:
        yield v


@pytest.fixture
def mg_viewer(
    mammogram: RadiographStack,
    artifacts: Callable[[str, bytes], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Viewer]:
    with open_viewer(mammogram.viewer, mammogram.study_uid, artifacts, tmp_path, request) as v:
        yield v


def _drawn(viewer: Viewer, findings: list[Finding], what: str) -> dict[str, list[str]]:
    """The lines OHIF's SR viewport draws for each finding (by tracking UID), once
    every finding is drawn."""
    uids = [f.tracking_uid for f in findings]
    drawn = viewer.sr_drawn(what, uids)
    return {uid: list(drawn["annotations"][uid]["lines"]) for uid in uids}


def test_classification_sr_draws_each_finding_with_its_probability(
    radiograph: RadiographStack, viewer: Viewer
) -> None:
    findings = sr_findings(radiograph.sr)
    assert len(findings) == 4 and all(f.outline is not None for f in findings)
    viewer.open_series(str(radiograph.sr.SeriesDescription), "SR")
    drawn = _drawn(viewer, findings, "the SR's four findings drawn on the radiograph")
    viewer.stable_screenshot("cxr-sr.png")
    problems = []
    for finding in findings:
        lines = drawn[finding.tracking_uid]
        if lines != finding.lines:
            problems.append(f"{finding.tracking_id}: drawn {lines}, the SR says {finding.lines}")
        if not any(line.startswith("Probability: ") for line in lines):
            problems.append(f"{finding.tracking_id}: no probability drawn ({lines})")
    assert not problems, "\n".join(problems) + "\n" + viewer.log_tail()
    assert not [line for line in viewer.console if "Error Boundary" in line], viewer.log_tail()


def test_classification_findings_are_listed_in_the_measurement_panel(
    radiograph: RadiographStack, viewer: Viewer
) -> None:
    labels = listed_labels(radiograph.sr)
    assert len(labels) == 4 and all("(Probability " in x for x in labels), labels
    viewer.open_series(str(radiograph.sr.SeriesDescription), "SR")
    viewer.track_report(len(labels))
    missing = [x for x in labels if x not in viewer.body_text()]
    viewer.stable_screenshot("cxr-measurement-panel.png")
    assert not missing, f"not in the measurement panel: {missing}\n{viewer.body_text()}"


def test_detection_sr_draws_and_lists_each_mass(
    mammogram: RadiographStack, mg_viewer: Viewer
) -> None:
    """The mg-masses SR on a mammogram of the training family: each mass's
    box drawn with its score, and listed in the panel as ``Mass 1 (Probability ...)``."""
    findings = sr_findings(mammogram.sr)
    labels = listed_labels(mammogram.sr)
    assert findings and len(labels) == len(findings), labels
    assert all(f.outline is not None and len(f.outline) == 5 for f in findings)
    mg_viewer.open_series(str(mammogram.sr.SeriesDescription), "SR")
    drawn = _drawn(mg_viewer, findings, "the SR's masses drawn on the mammogram")
    mg_viewer.stable_screenshot("mg-sr.png")
    for finding in findings:
        lines = drawn[finding.tracking_uid]
        assert lines == finding.lines, (finding.tracking_id, lines, finding.lines)
    mg_viewer.track_report(len(labels))
    missing = [x for x in labels if x not in mg_viewer.body_text()]
    mg_viewer.stable_screenshot("mg-measurement-panel.png")
    assert not missing, f"not in the measurement panel: {missing}\n{mg_viewer.body_text()}"

"""What a radiologist sees: the node's results in a real web viewer, in a real browser.

DCMTK ``storescu`` sends a CT series (28 slices of a synthetic chest phantom,
written with real CT headers: the shared data holds no chest CT, and
``ct-lungs`` refuses a head) to ``dicom-node serve``; its ``ct-lungs`` rule
sends SEG, TID 1500 SR and
secondary-capture overlays to Orthanc, which serves them over DICOMweb to
the OHIF viewer (v3, the npm package's prebuilt ``dist/``), opened in
headless Chromium.  Everything runs on loopback and is stopped by the tests.

The checks read the screen, not only the page: the segmentation overlay
must tint exactly the screen pixels where the SEG's own mask is (in the
segment's recommended colour) and leave every other pixel of the image
untouched; the SR's findings must be drawn with the values the node wrote
in the SR, and listed in OHIF's measurement panel under the node's labels
once the viewer tracks the report; the secondary-capture series must show its burned-in outlines
where its pixel data has them.  Screen positions come from the viewer's own
image-to-canvas transform (Cornerstone), so the checks do not depend on the
window layout.

Screenshots go to ``<pytest tmp>/viewer-screenshots*/`` and, when
``DICOM_NODE_TEST_ARTIFACTS`` is set, to ``$DICOM_NODE_TEST_ARTIFACTS/viewer/``.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from scipy import ndimage
from sqlalchemy import func, select

from storage.db import Database
from storage.models import Delivery, Job
from tests.node.test_route_deliver import (
    SC_CLASS,
    SEG_CLASS,
    SR_CLASS,
    by_class,
    ct_files,
    node_config,
    results_in_orthanc,
    source_study,
    wait_for,
)
from tests.support.ohif import (
    ViewerServer,
    chromium_executable,
    ohif_dist,
    orthanc_dicomweb_config,
    sync_playwright,
)
from tests.support.orthanc import OrthancServer
from tests.support.peers import NodeProcess, free_port, storescu
from tests.viewer.page import Viewer, open_viewer
from tests.viewer.sr_content import listed_labels, sr_findings

pytestmark = [pytest.mark.network, pytest.mark.slow, pytest.mark.timeout(600)]

VIEWPORT_MARGINS_PX = (40, 100, 40, 40)
"""Bands along the viewport's left, top, right and bottom edges left out of pixel
checks: overlay text, badges and the cine player live there."""


# -- the stack: node -> Orthanc -> OHIF -----------------------------------------------


@dataclass
class Stack:
    """The results in Orthanc, as the node sent them, and the viewer in front of it."""

    study_uid: str
    ct_series_uid: str
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    sc: dict[str, pydicom.Dataset]
    """Secondary captures by SOP Instance UID."""
    ct_description: str
    viewer: ViewerServer


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Everything the browser side needs, checked before the node runs.
    dist = ohif_dist()
    chromium_executable()
    sync_playwright()
    work = tmp_path_factory.mktemp("viewer-stack")
    files = ct_files(work)
    study_uid, series_uid = source_study(files)
    orthanc = OrthancServer(work / "orthanc", dicomweb=True, extra=orthanc_dicomweb_config())
    node: NodeProcess | None = None
    viewer: ViewerServer | None = None
    with orthanc:
        try:
            # The scanner sends the series to the archive and to the node.
            archived = storescu(
                orthanc.dicom_port, files, called_ae=orthanc.ae_title, calling_ae="CT_SCANNER_1"
            )
            assert archived.returncode == 0, archived.stdout + archived.stderr
            extra = node_config(orthanc, outputs=("seg", "sr", "sc"))
            extra["storage"] = {"results_dir": str(work / "node" / "results")}
            node = NodeProcess(work / "node", free_port(), extra=extra).start()
            sent = storescu(node.port, files, calling_ae="CT_SCANNER_1")
            assert sent.returncode == 0, sent.stdout + sent.stderr
            _wait_until_delivered(node)
            node.terminate()
            found = results_in_orthanc(orthanc, study_uid)
            (seg_uid,) = by_class(found, SEG_CLASS)
            (sr_uid,) = by_class(found, SR_CLASS)
            sc_uids = by_class(found, SC_CLASS)
            assert sc_uids, f"no secondary capture in Orthanc: {found}"
            ct = pydicom.dcmread(files[0], stop_before_pixels=True)
            viewer = ViewerServer(dist, orthanc.http_port).start()
            yield Stack(
                study_uid=study_uid,
                ct_series_uid=series_uid,
                seg=_fetch(orthanc, seg_uid),
                sr=_fetch(orthanc, sr_uid),
                sc={uid: _fetch(orthanc, uid) for uid in sc_uids},
                ct_description=str(ct.SeriesDescription),
                viewer=viewer,
            )
        finally:
            if viewer is not None:
                viewer.stop()
            if node is not None:
                node.kill()


def _wait_until_delivered(node: NodeProcess) -> None:
    db = Database(node.db_url)
    try:

        def delivered() -> bool:
            with db.engine.connect() as conn:
                jobs = conn.execute(select(Job.status)).scalars().all()
                if not jobs or any(s != "succeeded" for s in jobs):
                    return False
                total, sent = conn.execute(
                    select(
                        func.count(Delivery.id),
                        func.count(Delivery.id).filter(Delivery.status == "sent"),
                    )
                ).one()
                return bool(total) and total == sent

        wait_for("the node to send every result to Orthanc", delivered, timeout_s=240)
    except AssertionError:
        raise AssertionError(f"results not delivered; node log:\n{node.log()[-4000:]}") from None
    finally:
        db.dispose()


def _fetch(orthanc: OrthancServer, sop_uid: str) -> pydicom.Dataset:
    (hit,) = orthanc.lookup(sop_uid)
    return pydicom.dcmread(io.BytesIO(orthanc.instance_file(hit["ID"])))


# -- the viewer page ------------------------------------------------------------------------


@pytest.fixture
def viewer(
    stack: Stack,
    artifacts: Callable[[str, bytes], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Viewer]:
    """A fresh Chromium profile on an OHIF page of the stack's study."""
    with open_viewer(stack.viewer, stack.study_uid, artifacts, tmp_path, request) as view:
        yield view




# -- pixel arithmetic ----------------------------------------------------------------------


def dicom_lab_to_rgb(value: Any) -> np.ndarray:
    """sRGB (0-255) of a DICOM CIELab triplet (PS3.3 C.10.7.1.1; D65, as dcmjs converts)."""
    lab_l = float(value[0]) / 65535 * 100
    lab_a = float(value[1]) / 65535 * 255 - 128
    lab_b = float(value[2]) / 65535 * 255 - 128
    fy = (lab_l + 16) / 116
    fx, fz = fy + lab_a / 500, fy - lab_b / 200

    def finv(t: float) -> float:
        return t**3 if t**3 > 0.008856 else (t - 16 / 116) / 7.787

    x, y, z = 0.95047 * finv(fx), finv(fy), 1.08883 * finv(fz)
    linear = np.array(
        [
            3.2406 * x - 1.5372 * y - 0.4986 * z,
            -0.9689 * x + 1.8758 * y + 0.0415 * z,
            0.0557 * x - 0.2040 * y + 1.0570 * z,
        ]
    ).clip(0, 1)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.asarray(srgb * 255)


def chroma(rgb: np.ndarray) -> np.ndarray:
    """Colour minus its grey level.  A grey CT pixel has none; an overlay of colour C
    blended with alpha a over any grey adds exactly a * chroma(C)."""
    rgb = np.asarray(rgb, dtype=float)
    return np.asarray(rgb - rgb.mean(axis=-1, keepdims=True))


@dataclass
class ScreenMap:
    """Which image pixel (column, row) each screen pixel of the viewport shows."""

    col: np.ndarray
    row: np.ndarray
    inside: np.ndarray
    """Screen pixels over the image, away from the viewport's edges (overlay text)."""

    @classmethod
    def of(cls, shown: dict[str, Any], shape: tuple[int, ...], rows: int, cols: int) -> ScreenMap:
        origin = np.array(shown["origin"])
        forward = np.array([shown["col"], shown["row"]]).T  # page = origin + forward @ (c, r)
        inverse = np.linalg.inv(forward)
        ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
        rel = np.stack([xs + 0.5 - origin[0], ys + 0.5 - origin[1]])
        cr = np.einsum("ij,jhw->ihw", inverse, rel)
        col, row = np.rint(cr[0]).astype(int), np.rint(cr[1]).astype(int)
        left, top, width, height = shown["rect"]
        ml, mt, mr, mb = VIEWPORT_MARGINS_PX
        in_view = (
            (xs >= left + ml)
            & (xs < left + width - mr)
            & (ys >= top + mt)
            & (ys < top + height - mb)
        )
        inside = in_view & (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
        return cls(col.clip(0, cols - 1), row.clip(0, rows - 1), inside)

    def pixels(self, image_mask: np.ndarray) -> np.ndarray:
        """Screen pixels (inside) that show a True pixel of *image_mask*."""
        return np.asarray(self.inside & image_mask[self.row, self.col])


# -- SEG ---------------------------------------------------------------------------------


def seg_masks_by_source(seg: pydicom.Dataset) -> dict[str, dict[int, np.ndarray]]:
    """SOP Instance UID of the source slice -> segment number -> mask (rows x columns)."""
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    out: dict[str, dict[int, np.ndarray]] = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        source = item.DerivationImageSequence[0].SourceImageSequence[0]
        per_segment = out.setdefault(str(source.ReferencedSOPInstanceUID), {})
        per_segment[number] = per_segment.get(number, False) | frame.astype(bool)
    return out


def slices_to_check(masks: dict[str, dict[int, np.ndarray]]) -> list[str]:
    """Per segment, the slice where it is largest and the one where it is smallest."""
    chosen: list[str] = []
    numbers = sorted({n for per in masks.values() for n in per})
    for number in numbers:
        areas = {uid: int(per[number].sum()) for uid, per in masks.items() if number in per}
        present = {uid: a for uid, a in areas.items() if a >= 200}
        if not present:
            continue
        for uid in (max(present, key=present.__getitem__), min(present, key=present.__getitem__)):
            if uid not in chosen:
                chosen.append(uid)
    return chosen


def check_overlay(
    frame: np.ndarray,
    screen: ScreenMap,
    masks: dict[int, np.ndarray],
    colours: dict[int, np.ndarray],
    labels: dict[int, str],
) -> list[str]:
    """What is wrong with the overlay on this screenshot (empty when it is right)."""
    problems: list[str] = []
    c = chroma(frame)
    union = np.zeros_like(next(iter(masks.values())))
    for number, mask in masks.items():
        union |= mask
        interior = ndimage.binary_erosion(mask, iterations=2)
        sel = screen.pixels(interior)
        if sel.sum() < 50:
            continue  # too thin to judge away from the outline
        expected = chroma(colours[number])
        px = c[sel]
        magnitude = np.linalg.norm(px, axis=1)
        cosine = px @ expected / (magnitude * np.linalg.norm(expected) + 1e-9)
        tinted = (magnitude >= 0.25 * np.linalg.norm(expected)) & (cosine >= 0.9)
        if tinted.mean() < 0.97:
            problems.append(
                f"{labels[number]}: {tinted.mean():.1%} of {int(sel.sum())} screen pixels inside "
                f"the mask show its colour {np.rint(colours[number]).astype(int).tolist()} "
                f"(median chroma {np.median(magnitude):.1f}, median cosine {np.median(cosine):.2f})"
            )
    outside = screen.pixels(~ndimage.binary_dilation(union, iterations=3))
    magnitude = np.linalg.norm(c[outside], axis=1)
    coloured = magnitude > 6
    if outside.sum() < 10_000:
        problems.append(f"only {int(outside.sum())} screen pixels outside the mask to check")
    elif coloured.mean() > 0.001:
        problems.append(
            f"{int(coloured.sum())} of {int(outside.sum())} screen pixels outside every "
            f"segment are coloured (max chroma {magnitude.max():.0f})"
        )
    return problems


def test_seg_overlay_is_drawn_exactly_where_the_mask_is(stack: Stack, viewer: Viewer) -> None:
    seg = stack.seg
    masks = seg_masks_by_source(seg)
    colours = {
        int(s.SegmentNumber): dicom_lab_to_rgb(s.RecommendedDisplayCIELabValue)
        for s in seg.SegmentSequence
    }
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    assert len(colours) >= 2

    # The segmentation hanging protocol opens the SEG; LOAD puts it on the CT.
    viewer.open("&hangingProtocolId=@ohif/seg")
    viewer.page.get_by_text("LOAD", exact=True).click()
    wait_for(
        "the SEG loaded on the CT",
        lambda: (
            stack.ct_description in viewer.overlay_text()
            and viewer.page.evaluate(
                "() => window.services.segmentationService.getSegmentations().length"
            )
        ),
        timeout_s=60,
    )

    problems: list[str] = []
    checked = 0
    for uid in slices_to_check(masks):
        shown = viewer.show(uid)
        assert uid in shown["imageId"]
        frame = viewer.stable_screenshot(f"seg-slice-{shown['index'] + 1:02d}.png")
        screen = ScreenMap.of(shown, frame.shape, int(seg.Rows), int(seg.Columns))
        found = check_overlay(frame, screen, masks[uid], colours, labels)
        problems += [f"slice {shown['index'] + 1}/{shown['count']}: {p}" for p in found]
        checked += 1
    assert checked >= 2
    assert not problems, "\n".join(problems) + "\n" + viewer.log_tail()

    # The segmentation panel lists every segment by the label the node wrote.
    viewer.page.locator('[data-cy="panelSegmentation-btn"]').click()
    panel = viewer.page.locator("body")
    for label in labels.values():
        panel.get_by_text(label, exact=True).first.wait_for(state="visible")
    largest = max(masks, key=lambda u: sum(int(m.sum()) for m in masks[u].values()))
    viewer.show(largest)
    viewer.stable_screenshot("seg-overlay-with-panel.png")


# -- SR ----------------------------------------------------------------------------------


def _open_sr(viewer: Viewer, sr: pydicom.Dataset) -> None:
    viewer.open_series(str(sr.SeriesDescription), "SR")


OHIF_TEXT_LINES = 5
"""OHIF 3.12 draws at most five lines of an SR annotation's text box
(``Math.min(labels.length, 5)`` in ``_getTextBoxLinesFromLabels``); a nodule's
name, volume, long axis and finding site make more, all listed in the panel."""


def test_sr_findings_are_drawn_with_the_values_the_node_wrote(stack: Stack, viewer: Viewer) -> None:
    findings = [f for f in sr_findings(stack.sr) if f.outline is not None]
    assert findings and all(f.lines for f in findings), sr_findings(stack.sr)
    _open_sr(viewer, stack.sr)

    problems: list[str] = []
    for finding in findings:
        assert finding.outline_image is not None and finding.outline is not None
        # The SR viewport shows each finding on the image its outline references.
        shown = viewer.show(finding.outline_image)
        what = f"the SR annotation of {finding.tracking_id!r}"
        drawn = viewer.sr_drawn(what, [finding.tracking_uid])
        frame_name = f"sr-{re.sub(r'[^a-z0-9]+', '-', finding.tracking_id.lower())[:40]}.png"
        viewer.stable_screenshot(frame_name)
        lines = drawn["annotations"][finding.tracking_uid]["lines"]
        if lines != finding.lines[:OHIF_TEXT_LINES]:
            problems.append(f"{finding.tracking_id}: drawn {lines}, the SR says {finding.lines}")
        # The outline is drawn where the SR puts it (SCOORD: 0,0 = top-left corner of the
        # top-left pixel, so pixel centres are at +0.5).
        origin = np.array(shown["origin"])
        forward = np.array([shown["col"], shown["row"]]).T
        expected = (forward @ (finding.outline - 0.5).T).T + origin
        boxes = [np.array(p) for p in drawn["polylines"] if len(p) >= 3]
        lo, hi = expected.min(axis=0), expected.max(axis=0)
        if not any(
            np.abs(b.min(axis=0) - lo).max() <= 3 and np.abs(b.max(axis=0) - hi).max() <= 3
            for b in boxes
        ):
            problems.append(
                f"{finding.tracking_id}: no outline drawn over screen box "
                f"{np.rint(lo).tolist()}-{np.rint(hi).tolist()}; drawn: "
                f"{[(np.rint(b.min(0)).tolist(), np.rint(b.max(0)).tolist()) for b in boxes]}"
            )
    assert not problems, "\n".join(problems) + "\n" + viewer.log_tail()


def test_sr_findings_are_listed_in_the_measurement_panel(stack: Stack, viewer: Viewer) -> None:
    labels = listed_labels(stack.sr)
    # One row per finding, labelled with its name and the values the node measured.
    assert len(labels) == len(sr_findings(stack.sr)) and all("Volume" in x for x in labels)
    _open_sr(viewer, stack.sr)
    # The viewer offers to track (hydrate) the SR's measurements only when it finds a
    # group it can take; "Yes" turns them into its own measurements, listed in its panel.
    viewer.track_report(len(labels))
    # Labels wrap in the panel: compare with whitespace collapsed.
    wait_for(
        "the measurement panel to list every finding by the node's label",
        lambda: all(label in viewer.body_text() for label in labels),
        timeout_s=60,
    )
    viewer.stable_screenshot("sr-measurement-panel.png")


def test_the_study_opens_again_in_the_same_profile(stack: Stack, viewer: Viewer) -> None:
    """What the SR test's retry does: OHIF shows its first-run dialogs only once."""
    viewer.open()
    viewer.open()
    viewer.thumbnail(str(stack.sr.SeriesDescription)).wait_for()
    assert viewer.page.get_by_text("Skip all", exact=True).count() == 0


# -- secondary capture ---------------------------------------------------------------------


def test_secondary_capture_overlay_shows_as_an_ordinary_series(
    stack: Stack, viewer: Viewer
) -> None:
    first = next(iter(stack.sc.values()))
    description = str(first.SeriesDescription)
    viewer.open()
    entry = viewer.thumbnail(description)
    entry.wait_for()
    assert str(first.Modality) in str(entry.inner_text())
    entry.dblclick()
    wait_for("the overlay series in the viewport", lambda: description in viewer.overlay_text())

    # A slice whose burned-in outlines are large enough to see at any zoom.
    def outline_pixels(ds: pydicom.Dataset) -> int:
        return int((np.linalg.norm(chroma(ds.pixel_array), axis=-1) > 60).sum())

    uid = max(stack.sc, key=lambda u: outline_pixels(stack.sc[u]))
    sc = stack.sc[uid]
    assert outline_pixels(sc) > 200, "the secondary capture has no coloured outline"
    shown = viewer.show(uid)
    frame = viewer.stable_screenshot("sc-overlay-series.png")
    screen = ScreenMap.of(shown, frame.shape, int(sc.Rows), int(sc.Columns))

    source = chroma(sc.pixel_array)
    strength = np.linalg.norm(source, axis=-1)
    coloured = strength > 60
    on_screen = chroma(frame)
    sel = screen.pixels(coloured)
    want = source[screen.row[sel], screen.col[sel]]
    got = on_screen[sel]
    cosine = np.sum(want * got, axis=1) / (
        np.linalg.norm(want, axis=1) * np.linalg.norm(got, axis=1) + 1e-9
    )
    shown_coloured = (np.linalg.norm(got, axis=1) > 15) & (cosine > 0.8)
    assert sel.sum() > 200
    assert shown_coloured.mean() >= 0.8, (
        f"{shown_coloured.mean():.1%} of {int(sel.sum())} screen pixels over the burned-in "
        "outlines show their colour"
    )
    grey = screen.pixels(~ndimage.binary_dilation(strength > 8, iterations=3))
    stray = np.linalg.norm(on_screen[grey], axis=1) > 8
    assert grey.sum() > 10_000 and stray.mean() <= 0.001, (
        f"{int(stray.sum())} of {int(grey.sum())} screen pixels away from the outlines are coloured"
    )

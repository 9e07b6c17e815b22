"""The job preview of the web console (:mod:`dicom_node.web.preview`) on real series.

The results drawn are written by the node's own writers over real source
images (a Philips head-phantom CT, the NEMA WG-04 chest CR); the PNG is
decoded again and checked pixel by pixel: the SEG outline lies exactly on the
boundary of the known segment after the tile's scaling, the SR and GSPS
boxes where they were written, the slices shown are those with the most
finding.  Renders are saved to ``$DICOM_NODE_TEST_ARTIFACTS/preview`` when
that is set.
"""

from __future__ import annotations

import copy
import io
import os
import pathlib
import shutil
import time
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.sr.codedict import codes
from scipy import ndimage

from ai_models.radiograph import load_radiograph
from ai_models.types import (
    ClassificationFinding,
    CodedConcept,
    DetectionFinding,
    Finding,
    HeatMap,
    PipelineResult,
    Segment,
    Volume,
)
from ai_models.volume import load_series
from dicom_node.results import save_datasets, write_gsps, write_heatmaps, write_results
from dicom_node.web.preview import (
    MAX_SLICES,
    SR_COLOUR,
    PreviewSource,
    PreviewUnavailable,
    caption_height,
    preview_slices,
    render_preview,
    tile_placement,
)
from tests.results.helpers import algorithm, sphere

CT = "dcm_qa_ct/Philips_Ingenuity_headphantom_5mm"
CR = "nema_wg04/RG1_chest_CR/RG1_UNCR.dcm"
CR_J2K = "nema_wg04/RG1_chest_CR/RG1_J2KI.dcm"
SAME_PIXELS = "dcm_qa_ts/siemens_trio_ax_asc_35sl"  # 1.dcm .. 9.dcm: one image, 9 syntaxes
ENHANCED_MR = "dcm_qa_enh/Philips_Achieva_enhanced"
CT3 = "dcmqi/ct-3slice"
LIVER_SEG = "dcmqi/ct-3slice_seg/liver.dcm"
UNDECODABLE = "pydicom/bad/JPEG2000-embedded-sequence-delimiter.dcm"

SIZE = 384
MASS = CodedConcept("4147007", "SCT", "Mass")
TISSUE = CodedConcept("85756007", "SCT", "Tissue")
OPACITY = CodedConcept("263716002", "SCT", "Lung opacity")
SQUARE_RGB = (255, 0, 128)

#: Slice k of the CT -> (r0, r1, c0, c1) of the square segment there; 12 has the most.
SQUARES = {
    10: (200, 220, 200, 220),
    11: (180, 230, 190, 240),
    12: (150, 230, 180, 240),
    13: (190, 230, 200, 240),
    14: (205, 225, 205, 225),
}
#: The SR's detection box on slice 12 (x0, y0, x1, y1), image coordinates.
BOX = (300.0, 290.0, 360.0, 340.0)


# --------------------------------------------------------------------------- helpers


def _save(name: str, png: bytes, tmp_path: pathlib.Path) -> None:
    (tmp_path / f"{name}.png").write_bytes(png)
    extra = os.environ.get("DICOM_NODE_TEST_ARTIFACTS")
    if extra:
        folder = pathlib.Path(extra) / "preview"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.png").write_bytes(png)


def _decode(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png))
    assert img.format == "PNG" and img.mode == "RGB"
    return np.asarray(img)


def _tiles(png: bytes, n: int) -> list[np.ndarray]:
    """The ``n`` tiles of a preview, without their caption lines (checks the size)."""
    img = _decode(png)
    assert img.shape == (SIZE + caption_height(SIZE), n * SIZE, 3)
    return [img[:SIZE, i * SIZE : (i + 1) * SIZE] for i in range(n)]


def _of_colour(tile: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(tile == np.asarray(rgb, dtype=np.uint8), axis=2)


def _near_colour(tile: np.ndarray, rgb: tuple[int, int, int], tol: int = 2) -> np.ndarray:
    return np.all(np.abs(tile.astype(int) - np.asarray(rgb)) <= tol, axis=2)


def _expected_outline(square: tuple[int, int, int, int], rows: int, cols: int) -> np.ndarray:
    """The square's boundary in a ``SIZE`` tile filled by a ``rows`` x ``cols`` image
    of square pixels: nearest neighbour by pixel centres, then mask minus erosion."""
    r0, r1, c0, c1 = square
    src_r = np.floor((np.arange(SIZE) + 0.5) * rows / SIZE)
    src_c = np.floor((np.arange(SIZE) + 0.5) * cols / SIZE)
    mask = ((src_r >= r0) & (src_r < r1))[:, None] & ((src_c >= c0) & (src_c < c1))[None, :]
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _rectangle_distance(shape: tuple[int, int], box: tuple[float, ...]) -> np.ndarray:
    """Distance of each tile pixel centre to the outline of ``box`` (tile coordinates)."""
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    dx = np.maximum(np.maximum(x0 - xx, xx - x1), 0.0)
    dy = np.maximum(np.maximum(y0 - yy, yy - y1), 0.0)
    outside = np.hypot(dx, dy)
    inside = np.minimum.reduce([np.abs(xx - x0), np.abs(xx - x1), np.abs(yy - y0), np.abs(yy - y1)])
    return np.where((dx > 0) | (dy > 0), outside, inside)


def _check_box_drawn(
    tile: np.ndarray, drawn: np.ndarray, box: tuple[float, ...], also: list[tuple[float, ...]]
) -> None:
    """Every ``drawn`` pixel lies on ``box`` or one of ``also`` (within 2.5 px), and
    the whole outline of ``box`` is drawn (a drawn pixel within 2 px of every point)."""
    dist = np.minimum.reduce([_rectangle_distance(tile.shape[:2], b) for b in [box, *also]])
    assert drawn.any()
    assert dist[drawn].max() <= 2.5, f"drawn {dist[drawn].max():.1f} px off the boxes"
    x0, y0, x1, y1 = box
    ys, xs = np.nonzero(drawn)
    centres = np.column_stack((xs + 0.5, ys + 0.5))
    perimeter = [(x, y0) for x in np.arange(x0, x1, 2)] + [(x, y1) for x in np.arange(x0, x1, 2)]
    perimeter += [(x0, y) for y in np.arange(y0, y1, 2)] + [(x1, y) for y in np.arange(y0, y1, 2)]
    for x, y in perimeter:
        assert np.hypot(*(centres - (x, y)).T).min() <= 2.0, f"box not drawn near {(x, y)}"


def _tile_box(box: tuple[float, ...], rows: int, cols: int) -> tuple[float, ...]:
    """``box`` (image coordinates) in a tile of a square-pixel image (``tile_placement``)."""
    place = tile_placement(rows, cols, None, SIZE)
    (a, b), (c, d) = place.to_tile(np.array([[box[0], box[1]], [box[2], box[3]]]))
    return a, b, c, d


def _seg_rgb(seg_path: pathlib.Path, number: int = 1) -> tuple[int, int, int]:
    """The Recommended Display CIELab Value of a segment, as RGB (highdicom)."""
    ds = pydicom.dcmread(seg_path, stop_before_pixels=True)
    (item,) = [s for s in ds.SegmentSequence if int(s.SegmentNumber) == number]
    lab = hd.color.CIELabColor.from_dicom_value(
        [int(v) for v in item.RecommendedDisplayCIELabValue]
    )
    return lab.to_rgb(clip=True)


# --------------------------------------------------------------------------- CT job


@pytest.fixture(scope="module")
def ct(dicom_data: pathlib.Path) -> Volume:
    return load_series(dicom_data / CT)


@pytest.fixture(scope="module")
def ct_job(
    ct: Volume, dicom_data: pathlib.Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[PreviewSource, pathlib.Path]:
    """A SEG with a square segment (largest on slice 12) and an SR with a detection box
    on slice 12, written by the node over the real CT; the source and the SEG path."""
    mask = np.zeros(ct.shape, dtype=bool)
    for k, (r0, r1, c0, c1) in SQUARES.items():
        mask[k, r0:r1, c0:c1] = True
    square = Segment(1, "Square", TISSUE, MASS, mask, "Square", hd.UID(), color_rgb=SQUARE_RGB)
    findings = [
        Finding("Square", square.tracking_uid, MASS, segment_number=1),
        DetectionFinding("Box", hd.UID(), MASS, frame_index=12, box=BOX, score=0.9, label="Box"),
    ]
    result = PipelineResult("preview-test", ct, algorithm(), [square], findings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the phantom's single-component names
        datasets = write_results(result, ("seg", "sr"))
    paths = save_datasets(datasets, tmp_path_factory.mktemp("ct_results"))
    seg_path = next(p for p in paths if p.name.startswith("seg_"))
    sources = sorted((dicom_data / CT).iterdir())
    return PreviewSource(sources, [(p.name.split("_")[0], p) for p in paths]), seg_path


def test_slices_with_the_most_finding_and_exact_outlines(
    ct: Volume, ct_job: tuple[PreviewSource, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    source, seg_path = ct_job
    colour = _seg_rgb(seg_path)
    assert np.abs(np.subtract(colour, SQUARE_RGB)).max() <= 2  # CIELab round trip
    _, rows, cols = ct.shape

    chosen = preview_slices(source)
    assert [s.index for s in chosen] == [11, 12, 13]  # the three with the most finding
    assert [s.sop_instance_uid for s in chosen] == [
        ct.frames[k].sop_instance_uid for k in (11, 12, 13)
    ]
    assert all(s.total == ct.shape[0] and s.finding > 0 for s in chosen)

    png = render_preview(source)
    _save("ct_seg_sr", png, tmp_path)
    for tile, k in zip(_tiles(png, 3), (11, 12, 13), strict=True):
        drawn = _of_colour(tile, colour)
        expected = _expected_outline(SQUARES[k], rows, cols)
        assert np.array_equal(drawn, expected), (
            f"slice {k}: {int((drawn & ~expected).sum())} outline pixels off the boundary, "
            f"{int((expected & ~drawn).sum())} boundary pixels not drawn"
        )

    # One tile: the slice with the most finding.
    png = render_preview(source, slices=1)
    (tile,) = _tiles(png, 1)
    assert np.array_equal(_of_colour(tile, colour), _expected_outline(SQUARES[12], rows, cols))
    assert [s.index for s in preview_slices(source, slices=1)] == [12]


def test_sr_regions_are_drawn_on_their_image(
    ct: Volume, ct_job: tuple[PreviewSource, pathlib.Path]
) -> None:
    source, _ = ct_job
    _, rows, cols = ct.shape
    before, on, after = _tiles(render_preview(source), 3)
    # Slice 12 holds the box and the square finding's cross-section (its TID 1410 region).
    r0, r1, c0, c1 = SQUARES[12]
    square = _tile_box((c0, r0, c1, r1), rows, cols)
    _check_box_drawn(on, _of_colour(on, SR_COLOUR), _tile_box(BOX, rows, cols), [square])
    assert not _of_colour(before, SR_COLOUR).any() and not _of_colour(after, SR_COLOUR).any()


def test_scoord3d_region_is_projected_onto_its_slice(
    ct: Volume, dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """An SR whose region is a 3D polygon (SCOORD3D) in the CT's frame of reference."""
    k = 5
    ref = pydicom.dcmread(dicom_data / CT / _file_of(ct, k, dicom_data), stop_before_pixels=True)
    ipp = np.array(ref.ImagePositionPatient, dtype=float)
    iop = np.array(ref.ImageOrientationPatient, dtype=float)
    row_sp, col_sp = (float(v) for v in ref.PixelSpacing)
    pixels = [(100, 120), (180, 120), (180, 170), (100, 170), (100, 120)]  # (column, row)
    points = np.array([ipp + c * col_sp * iop[:3] + r * row_sp * iop[3:] for c, r in pixels])
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Region 3D"),
        referenced_region=hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYGON,
            graphic_data=points,
            frame_of_reference_uid=ct.frame_of_reference_uid,
        ),
        finding_type=codes.SCT.Mass,
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Person,
                observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(
                    name="Test^Reader"
                ),
            )
        ),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[group],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sr = hd.sr.Comprehensive3DSR(
            evidence=[ref],
            content=report,
            series_instance_uid=hd.UID(),
            series_number=99,
            sop_instance_uid=hd.UID(),
            instance_number=1,
        )
    sr_path = tmp_path / "sr3d.dcm"
    sr.save_as(sr_path)
    source = PreviewSource(sorted((dicom_data / CT).iterdir()), [("sr", sr_path)])
    assert [s.index for s in preview_slices(source, slices=1)] == [k]
    png = render_preview(source, slices=1)
    _save("ct_scoord3d", png, tmp_path)
    (tile,) = _tiles(png, 1)
    # Pixel centres (c, r) are image coordinates (c + 0.5, r + 0.5).
    box = _tile_box((100.5, 120.5, 180.5, 170.5), ct.shape[1], ct.shape[2])
    _check_box_drawn(tile, _of_colour(tile, SR_COLOUR), box, [])


def _file_of(ct: Volume, k: int, dicom_data: pathlib.Path) -> str:
    uid = ct.frames[k].sop_instance_uid
    for path in (dicom_data / CT).iterdir():
        if pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == uid:
            return path.name
    raise AssertionError(uid)


def test_foreign_seg_matches_highdicom(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """dcmqi's liver SEG over its 3-slice CT: the outline on each slice is the
    boundary of highdicom's mask for that source instance."""
    seg_path = dicom_data / LIVER_SEG
    source = PreviewSource(sorted((dicom_data / CT3).iterdir()), [("seg", seg_path)])
    chosen = preview_slices(source)
    png = render_preview(source)
    _save("ct3_liver", png, tmp_path)
    seg = hd.seg.segread(seg_path)
    colour = _seg_rgb(seg_path)
    tiles = _tiles(png, len(chosen))
    assert len(chosen) == 3
    for tile, s in zip(tiles, chosen, strict=True):
        mask = seg.get_pixels_by_source_instance(
            [s.sop_instance_uid], segment_numbers=[1], ignore_spatial_locations=True
        )[0, ..., 0].astype(bool)
        rows, cols = mask.shape
        src_r = np.floor((np.arange(SIZE) + 0.5) * rows / SIZE).astype(int)
        src_c = np.floor((np.arange(SIZE) + 0.5) * cols / SIZE).astype(int)
        scaled = mask[np.ix_(src_r, src_c)]
        expected = scaled & ~ndimage.binary_erosion(scaled, border_value=0)
        assert expected.any()
        assert np.array_equal(_of_colour(tile, colour), expected)


def test_burned_in_overlays_when_nothing_else_was_written(
    ct: Volume, dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """A job that wrote only the SC outline series: its images are the preview."""
    mask = np.zeros(ct.shape, dtype=bool)
    for k, (r0, r1, c0, c1) in SQUARES.items():
        mask[k, r0:r1, c0:c1] = True
    square = Segment(1, "Square", TISSUE, MASS, mask, "Square", hd.UID(), color_rgb=SQUARE_RGB)
    result = PipelineResult("preview-test", ct, algorithm(), [square], [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = save_datasets(write_results(result, ("sc",)), tmp_path)
    assert len(paths) == len(SQUARES)
    source = PreviewSource(sorted((dicom_data / CT).iterdir()), [("sc", p) for p in paths])
    png = render_preview(source)
    _save("ct_sc_overlays", png, tmp_path)
    assert all(_near_colour(t, SQUARE_RGB, 8).sum() > 50 for t in _tiles(png, 3))


# --------------------------------------------------------------------------- radiographs


def _grey(tile: np.ndarray) -> np.ndarray:
    assert np.array_equal(tile[..., 0], tile[..., 1]) and np.array_equal(tile[..., 1], tile[..., 2])
    return tile[..., 0].astype(int)


def test_monochrome1_radiograph_is_inverted(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    src = dicom_data / CR
    png = render_preview(PreviewSource([src], []))
    _save("cr_monochrome1", png, tmp_path)
    (tile,) = _tiles(png, 1)
    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    place = tile_placement(int(ds.Rows), int(ds.Columns), None, SIZE)  # PixelSpacing 0
    shown = _grey(tile)[place.top : place.top + place.height, place.left : place.left + place.width]

    # Stored values, area-averaged to the tile: high (more exposure, air) must show dark.
    stored = Image.fromarray(ds.pixel_array.astype(np.float32)).resize(
        (place.width, place.height), Image.Resampling.BOX
    )
    assert np.corrcoef(np.asarray(stored).ravel(), shown.ravel())[0, 1] < -0.9
    h, w = shown.shape
    lung = shown[int(0.30 * h) : int(0.45 * h), int(0.20 * w) : int(0.32 * w)].mean()
    spine = shown[int(0.30 * h) : int(0.45 * h), int(0.47 * w) : int(0.53 * w)].mean()
    assert lung + 40 < spine, (lung, spine)  # air-filled lung dark, bone bright

    # The same pixels declared MONOCHROME2 render as the exact complement.
    plain = copy.deepcopy(ds)
    plain.PhotometricInterpretation = "MONOCHROME2"
    plain_path = tmp_path / "m2.dcm"
    plain.save_as(plain_path)
    (tile2,) = _tiles(render_preview(PreviewSource([plain_path], [])), 1)
    both = _grey(tile) + _grey(tile2)
    inside = both[place.top : place.top + place.height, place.left : place.left + place.width]
    assert np.abs(inside - 255).max() <= 1


def test_compressed_sources_render(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """One image in Explicit VR, JPEG-LS lossless and JPEG 2000 lossless renders the
    same; the lossy JPEG 2000 copy of the chest CR renders close to the original."""
    renders = {}
    for name in ("1.dcm", "7.dcm", "9.dcm"):
        png = render_preview(PreviewSource([dicom_data / SAME_PIXELS / name], []))
        (renders[name],) = _tiles(png, 1)
    _save("mr_jpegls", png, tmp_path)
    assert renders["1.dcm"].std() > 10  # an image, not a blank tile
    assert np.array_equal(renders["1.dcm"], renders["7.dcm"])
    assert np.array_equal(renders["1.dcm"], renders["9.dcm"])

    png = render_preview(PreviewSource([dicom_data / CR_J2K], []))
    _save("cr_j2k_lossy", png, tmp_path)
    (lossy,) = _tiles(png, 1)
    (exact,) = _tiles(render_preview(PreviewSource([dicom_data / CR], [])), 1)
    assert np.abs(lossy.astype(int) - exact.astype(int)).mean() < 3.0


def test_gsps_box_over_a_radiograph(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    chest = load_radiograph(dicom_data / CR)
    _, rows, cols = chest.shape
    box = (0.30 * cols, 0.40 * rows, 0.45 * cols, 0.52 * rows)
    finding = DetectionFinding(
        "Mass 1", hd.UID(), MASS, frame_index=0, box=box, score=0.87, label="Mass 1"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gsps = write_gsps(PipelineResult("preview-test", chest, algorithm(), findings=[finding]))
    (path,) = save_datasets([gsps], tmp_path)
    layer = pydicom.dcmread(path).GraphicLayerSequence[0]
    colour = hd.color.CIELabColor.from_dicom_value(
        [int(v) for v in layer.GraphicLayerRecommendedDisplayCIELabValue]
    ).to_rgb(clip=True)

    png = render_preview(PreviewSource([dicom_data / CR], [("gsps", path)]))
    _save("cr_gsps", png, tmp_path)
    (tile,) = _tiles(png, 1)
    _check_box_drawn(tile, _of_colour(tile, colour), _tile_box(box, rows, cols), [])


def test_heat_map_is_a_tile_of_its_own(dicom_data: pathlib.Path, tmp_path: pathlib.Path) -> None:
    chest = load_radiograph(dicom_data / CR)
    _, rows, cols = chest.shape
    yy, xx = np.mgrid[:rows, :cols]
    level = np.exp(
        -(((yy - 0.45 * rows) / (0.15 * rows)) ** 2 + ((xx - 0.3 * cols) / (0.15 * cols)) ** 2)
    )
    uid = hd.UID()
    result = PipelineResult(
        "preview-test",
        chest,
        algorithm(),
        findings=[
            ClassificationFinding("Opacity", uid, OPACITY, probability=0.9, source_frames=(0,))
        ],
        heatmaps=[HeatMap("Opacity", "Opacity", uid, 0, level.astype(np.float32), 0.9, True)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = write_results(result, ("sr",)) + list(write_heatmaps(result))
    paths = save_datasets(datasets, tmp_path / "results")
    source = PreviewSource([dicom_data / CR], [(p.name.split("_")[0], p) for p in paths])

    def coloured(tile: np.ndarray) -> float:
        t = tile.astype(int)
        return float(((t.max(axis=2) - t.min(axis=2)) > 60).mean())

    png = render_preview(source, slices=2)
    _save("cr_heatmap", png, tmp_path)
    radiograph, heat = _tiles(png, 2)
    assert coloured(heat) > 0.02  # the map blended in colour
    assert _of_colour(radiograph, SR_COLOUR).any()  # the SR's explained region
    assert coloured(radiograph) < 0.01  # otherwise grey
    (only,) = _tiles(render_preview(source, slices=1), 1)
    assert np.array_equal(only, heat)


def test_enhanced_multiframe_middle_frames(
    dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    source = PreviewSource(sorted((dicom_data / ENHANCED_MR).iterdir()), [])
    chosen = preview_slices(source)
    assert all(s.frame_number is not None and s.finding == 0 for s in chosen)
    total = chosen[0].total
    assert [s.index for s in chosen] == [total // 4, total // 2, 3 * total // 4]
    png = render_preview(source)
    _save("mr_enhanced", png, tmp_path)
    assert all(t.std() > 10 for t in _tiles(png, 3))


# --------------------------------------------------------------------------- nothing to show


def test_unavailable_when_nothing_can_be_rendered(
    dicom_data: pathlib.Path, ct_job: tuple[PreviewSource, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    source, _ = ct_job
    copies = []
    for path in source.source_paths:
        copies.append(tmp_path / path.name)
        shutil.copyfile(path, copies[-1])
    kept = PreviewSource(copies, source.result_paths)
    assert len(_tiles(render_preview(kept), 3)) == 3
    for path in copies:
        path.unlink()  # purged by retention
    with pytest.raises(PreviewUnavailable, match="no longer stored") as info:
        render_preview(kept)
    assert "retention" in info.value.reason
    with pytest.raises(PreviewUnavailable, match="no longer stored"):
        render_preview(PreviewSource([], []))

    sr_path = next(p for kind, p in source.result_paths if kind == "sr")
    with pytest.raises(PreviewUnavailable, match="holds an image"):
        render_preview(PreviewSource([sr_path], []))
    with pytest.raises(PreviewUnavailable, match="cannot be shown") as info:
        render_preview(PreviewSource([dicom_data / UNDECODABLE], []))
    assert "JPEG 2000" in info.value.reason and str(dicom_data) not in info.value.reason

    for bad in ({"slices": 0}, {"slices": MAX_SLICES + 1}, {"size": 16}):
        with pytest.raises(ValueError):
            render_preview(source, **bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- speed


@pytest.mark.slow  # builds and segments a 300-slice series (about 10 s)
def test_300_slice_ct_renders_fast(
    ct: Volume, dicom_data: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """300 slices (the phantom's 28 repeated 1 mm apart) with a node SEG of an organ
    and a ball and its SR: only the shown slices are decoded."""
    originals = [pydicom.dcmread(p) for p in sorted((dicom_data / CT).iterdir())]
    folder = tmp_path / "ct300"
    folder.mkdir()
    series_uid, z0 = hd.UID(), np.array(originals[0].ImagePositionPatient, dtype=float)
    for i in range(300):
        ds = copy.deepcopy(originals[i % len(originals)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = hd.UID()
        ds.SeriesInstanceUID = series_uid
        ds.ImagePositionPatient = [float(z0[0]), float(z0[1]), float(z0[2]) + i]
        ds.InstanceNumber = i + 1
        ds.SliceThickness = 1.0
        ds.save_as(folder / f"{i:03d}.dcm")
    volume = load_series(folder)
    organ = np.zeros(volume.shape, dtype=bool)
    organ[20:280, 100:400, 120:380] = True
    segments = [
        Segment(1, "Organ", TISSUE, TISSUE, organ, "Organ", hd.UID()),
        Segment(2, "Ball", TISSUE, MASS, sphere(volume, (150, 256, 256), 40.0), "Ball", hd.UID()),
    ]
    findings = [Finding(s.tracking_id, s.tracking_uid, s.type, None, s.number) for s in segments]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets = write_results(
            PipelineResult("preview-test", volume, algorithm(), segments, findings), ("seg", "sr")
        )
    paths = save_datasets(datasets, tmp_path / "results")
    source = PreviewSource(sorted(folder.iterdir()), [(p.name.split("_")[0], p) for p in paths])

    times = []
    for _ in range(3):
        start = time.perf_counter()
        png = render_preview(source)
        times.append(time.perf_counter() - start)
    _save("ct_300_slices", png, tmp_path)
    assert len(_tiles(png, 3)) == 3
    assert 150 in [s.index for s in preview_slices(source)]  # the ball's centre
    print(f"300-slice CT preview: best {min(times):.3f} s of {times}")
    assert min(times) < 3.0, times

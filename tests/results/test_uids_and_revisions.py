"""Seeded (idempotent) result UIDs and revisions that supersede earlier results."""

from __future__ import annotations

import dataclasses

import highdicom as hd
import pydicom
import pytest
from pydicom.dataset import Dataset

from ai_models.types import PipelineResult, Volume
from dicom_node.results import (
    COMPREHENSIVE_3D_SR_SOP_CLASS_UID,
    OutputUIDs,
    PreviousVersion,
    derive_uid,
    save_datasets,
    write_results,
)
from dicom_node.results.common import check_uid, series_description
from dicom_node.results.sc import frame_key
from tests.results.helpers import algorithm, assert_valid, make_result

SEED = "5eed" * 8
OTHER_SEED = "f00d" * 8

# Attributes that say when an object was made: the only ones allowed to differ
# between two runs of one job (with the File Meta, which repeats the UIDs).
_TIME_KEYWORDS = {
    "ContentDate",
    "ContentTime",
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContributionDateTime",
    "DateOfSecondaryCapture",
    "TimeOfSecondaryCapture",
}


def _uids(datasets: list[Dataset]) -> list[tuple[str, str, str]]:
    return [(d.Modality, d.SeriesInstanceUID, d.SOPInstanceUID) for d in datasets]


def _content(ds: Dataset) -> dict[str, object]:
    """Every element but the time stamps, by path (Pixel Data included)."""
    out: dict[str, object] = {}

    def walk(item: Dataset, path: str) -> None:
        for elem in item:
            name = f"{path}/{elem.keyword or elem.tag}"
            if elem.VR == "SQ":
                for i, child in enumerate(elem.value):
                    walk(child, f"{name}[{i}]")
            elif elem.keyword not in _TIME_KEYWORDS:
                out[name] = elem.value

    walk(ds, "")
    return out


@pytest.fixture
def result(ct_volume: Volume) -> PipelineResult:
    return make_result(ct_volume)


def test_same_seed_same_objects(result: PipelineResult) -> None:
    first = write_results(result, "seg,sr,sc", uid_seed=SEED)
    again = write_results(result, "seg,sr,sc", uid_seed=SEED)
    assert [d.Modality for d in first[:2]] == ["SEG", "SR"] and len(first) > 3
    assert _uids(first) == _uids(again)
    # Nothing but time stamps differs: no UID highdicom makes up on its own
    # (e.g. the SEG's Dimension Organization UID) is left random.
    for a, b in zip(first, again, strict=True):
        assert _content(a) == _content(b), a.Modality
    seg, sr, images = first[0], first[1], first[2:]
    assert len({d.SeriesInstanceUID for d in first}) == 3
    assert len({d.SOPInstanceUID for d in first}) == len(first)
    assert {im.SeriesInstanceUID for im in images} == {images[0].SeriesInstanceUID}
    # The documented derivation, so the job runner can predict the UIDs.
    assert seg.SeriesInstanceUID == derive_uid(SEED, "seg", "series")
    assert seg.SOPInstanceUID == derive_uid(SEED, "seg", "sop")
    assert sr.SOPInstanceUID == derive_uid(SEED, "sr", "sop")
    assert images[0].SeriesInstanceUID == derive_uid(SEED, "sc", "series")
    dim = derive_uid(SEED, "seg", "dimension-organization")
    assert seg.DimensionOrganizationSequence[0].DimensionOrganizationUID == dim
    assert {i.DimensionOrganizationUID for i in seg.DimensionIndexSequence} == {dim}
    for uid in (d.SOPInstanceUID for d in first):
        check_uid(uid, "uid")


def test_sc_uid_keyed_by_source_frame(result: PipelineResult, ct_volume: Volume) -> None:
    """Each SC image's UID depends on its source frame, not on which images are written."""
    # The nodules only (the organ is on every slice).
    result = dataclasses.replace(
        result,
        segments=[s for s in result.segments if s.number in (1, 2)],
        findings=[f for f in result.findings if f.segment_number in (1, 2)],
    )
    masked = write_results(result, "sc", uid_seed=SEED)
    every = write_results(result, "sc", uid_seed=SEED, sc_slices="all")
    assert len(every) == ct_volume.shape[0] > len(masked) > 0
    by_source = {
        im.SourceImageSequence[0].ReferencedSOPInstanceUID: im.SOPInstanceUID for im in every
    }
    for im in masked:
        assert by_source[im.SourceImageSequence[0].ReferencedSOPInstanceUID] == im.SOPInstanceUID
    for ref, im in zip(ct_volume.frames, every, strict=True):
        assert im.SOPInstanceUID == derive_uid(SEED, "sc", "sop", frame_key(ref))


def test_different_or_no_seed_different_uids(result: PipelineResult) -> None:
    seeded = write_results(result, "seg,sr,sc", uid_seed=SEED)
    other = write_results(result, "seg,sr,sc", uid_seed=OTHER_SEED)
    random1 = write_results(result, "seg,sr,sc")
    random2 = write_results(result, "seg,sr,sc")
    groups = [seeded, other, random1, random2]
    for i, a in enumerate(groups):
        ua = {u for _, series, sop in _uids(a) for u in (series, sop)}
        for b in groups[i + 1:]:
            ub = {u for _, series, sop in _uids(b) for u in (series, sop)}
            assert not ua & ub
    dims = {g[0].DimensionOrganizationSequence[0].DimensionOrganizationUID for g in groups}
    assert len(dims) == 4


def test_fixed_uids_win_over_seed(result: PipelineResult, ct_volume: Volume) -> None:
    key = frame_key(ct_volume.frames[0])
    uids = {
        "sr": OutputUIDs(sop_instance_uid="1.2.3.3", series_number=77),
        "sc": OutputUIDs(sop_instance_uids={key: "1.2.3.9"}),
    }
    out = write_results(result, "sr,sc", uids=uids, uid_seed=SEED, sc_slices="all")
    sr, images = out[0], out[1:]
    assert sr.SOPInstanceUID == "1.2.3.3" and sr.SeriesNumber == 77
    assert sr.SeriesInstanceUID == derive_uid(SEED, "sr", "series")
    assert images[0].SOPInstanceUID == "1.2.3.9"
    assert images[1].SOPInstanceUID == derive_uid(SEED, "sc", "sop", frame_key(ct_volume.frames[1]))


def test_revision_changes_seeded_uids(result: PipelineResult) -> None:
    """A seed reused by mistake for a revision does not repeat the earlier UIDs."""
    first = write_results(result, "seg,sr", uid_seed=SEED)
    rev1 = write_results(result, "seg,sr", uid_seed=SEED, revision=1)
    rev1_again = write_results(result, "seg,sr", uid_seed=SEED, revision=1)
    assert _uids(rev1) == _uids(rev1_again)
    assert not {u for t in _uids(first) for u in t[1:]} & {u for t in _uids(rev1) for u in t[1:]}
    assert rev1[0].SOPInstanceUID == derive_uid(SEED, "seg", "sop", "revision 1")


def test_revision_supersedes_previous_sr(result: PipelineResult, tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = write_results(result, "seg,sr", uid_seed=SEED)
    old_sr = first[1]
    assert "PredecessorDocumentsSequence" not in old_sr
    assert "(rev" not in old_sr.SeriesDescription
    previous = PreviousVersion(
        study_instance_uid=old_sr.StudyInstanceUID,
        series_instance_uid=old_sr.SeriesInstanceUID,
        sop_class_uid=old_sr.SOPClassUID,
        sop_instance_uid=old_sr.SOPInstanceUID,
    )
    assert PreviousVersion.from_dataset(old_sr) == previous
    out = write_results(
        result, "seg,sr,sc", uid_seed=OTHER_SEED, previous_sr=[previous], revision=2
    )
    paths = save_datasets(out, tmp_path)
    for path in paths[:3]:  # SEG, SR, one SC image
        assert_valid(path)
    for ds in out:
        assert ds.SeriesDescription.endswith(" (rev 2)")
        assert "(AI, not for diagnosis)" in ds.SeriesDescription
        assert len(ds.SeriesDescription) <= 64
    sr = hd.sr.srread(paths[1])
    assert sr.SOPInstanceUID != old_sr.SOPInstanceUID
    (study,) = sr.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == old_sr.StudyInstanceUID
    (series,) = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == old_sr.SeriesInstanceUID
    (inst,) = series.ReferencedSOPSequence
    assert inst.ReferencedSOPClassUID == COMPREHENSIVE_3D_SR_SOP_CLASS_UID
    assert inst.ReferencedSOPInstanceUID == old_sr.SOPInstanceUID
    # Tracking UIDs come from the result: the revision tracks the same findings.
    assert _tracking_uids(sr) == _tracking_uids(old_sr)
    # A dataset works as well as the dataclass.
    again = write_results(result, "sr", uid_seed=OTHER_SEED, previous_sr=[old_sr], revision=2)
    assert again[0].PredecessorDocumentsSequence == sr.PredecessorDocumentsSequence


def test_several_predecessors(result: PipelineResult, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two earlier SRs in two series: one study item, two series items."""
    first = write_results(result, "sr", uid_seed=SEED)[0]
    second = write_results(
        result, "sr", uid_seed=OTHER_SEED, previous_sr=[first], revision=1
    )[0]
    prev = [PreviousVersion.from_dataset(d) for d in (first, second)]
    third = write_results(result, "sr", uid_seed="ab" * 16, previous_sr=prev + prev, revision=2)
    path = save_datasets(third, tmp_path)[0]
    assert_valid(path)
    ds = pydicom.dcmread(path)
    (study,) = ds.PredecessorDocumentsSequence
    refs = {
        (s.SeriesInstanceUID, r.ReferencedSOPInstanceUID)
        for s in study.ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert refs == {(d.SeriesInstanceUID, d.SOPInstanceUID) for d in (first, second)}


def test_revision_argument_checks(result: PipelineResult) -> None:
    first = write_results(result, "sr", uid_seed=SEED)[0]
    with pytest.raises(ValueError, match="supersede itself"):
        write_results(result, "sr", uid_seed=SEED, previous_sr=[first])
    with pytest.raises(ValueError, match="revision"):
        write_results(result, "sr", revision=-1)
    with pytest.raises(TypeError, match="revision"):
        write_results(result, "sr", revision=True)
    with pytest.raises(ValueError, match="uid_seed"):
        write_results(result, "sr", uid_seed=" ")
    with pytest.raises(TypeError, match="uid_seed"):
        write_results(result, "sr", uid_seed=1234)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PreviousVersion"):
        write_results(result, "sr", previous_sr=["1.2.3"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="sequence"):
        write_results(result, "sr", previous_sr=first)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a valid UID"):
        PreviousVersion("1.2", "1.2.3", COMPREHENSIVE_3D_SR_SOP_CLASS_UID, "1.02")
    with pytest.raises(ValueError, match="lacks"):
        PreviousVersion.from_dataset(Dataset())


def test_derive_uid() -> None:
    uid = derive_uid(SEED, "seg", "sop")
    assert uid == derive_uid(SEED, "seg", "sop") != derive_uid(OTHER_SEED, "seg", "sop")
    assert check_uid(uid, "uid") and len(uid) <= 64
    # Parts do not run into each other.
    assert derive_uid(SEED, "ab", "c") != derive_uid(SEED, "a", "bc")
    assert derive_uid(SEED, "sc", "sop", "1.2#1") != derive_uid(SEED, "sc", "sop", "1.2#2")


def test_series_description_of_a_revision() -> None:
    assert (
        series_description("ct-lungs", algorithm(), "SEG", 2)
        == "ct-lungs 0.1 SEG (AI, not for diagnosis) (rev 2)"
    )
    assert series_description("ct-lungs", algorithm(), "SR", 0) == (
        "ct-lungs 0.1 SR (AI, not for diagnosis)"
    )
    long = series_description("x" * 80, algorithm(), "overlay", 12)
    assert len(long) <= 64 and long.endswith("overlay (AI, not for diagnosis) (rev 12)")
    algo = dataclasses.replace(algorithm(), version="v" * 40)
    text = series_description("ct-lungs", algo, "overlay", 123456)
    assert len(text) <= 64 and text.endswith("(AI, not for diagnosis) (rev 123456)")


def _tracking_uids(sr: Dataset) -> set[str]:
    out: set[str] = set()

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for item in items:
            name = item.get("ConceptNameCodeSequence")
            if name and name[0].CodeValue == "112040":
                out.add(str(item.UID))
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    return out

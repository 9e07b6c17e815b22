"""The fast SR content search equals highdicom's on real reports."""

from __future__ import annotations

import highdicom as hd
import pytest
from pydicom.sr.codedict import codes

from dicom_node.results import write_seg
from dicom_node.results.sr import write_sr
from dicom_node.results.sr_search import find_content_items, installed, original
from tests.results.helpers import make_result

QUERIES = [
    {},
    {"recursive": True},
    {"value_type": hd.sr.ValueTypeValues.IMAGE, "recursive": True},
    {"value_type": "COMPOSITE", "recursive": True},
    {"value_type": "CONTAINER", "relationship_type": "CONTAINS", "recursive": True},
    {"relationship_type": hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD, "recursive": True},
    {"name": codes.DCM.TrackingUniqueIdentifier, "recursive": True},
    {"name": codes.DCM.ImagingMeasurements},
    {"name": hd.sr.CodedConcept("118565006", "SCT", "Volume"), "recursive": True},
    {"name": hd.sr.CodedConcept("G-C0E3", "SRT", "Finding Site"), "recursive": True},  # SRT -> SCT
    {"name": codes.SCT.FindingSite, "value_type": "CODE", "recursive": True},
]


def test_installed_by_the_sr_writer() -> None:
    assert installed()
    assert original() is not find_content_items


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: ",".join(f"{k}" for k in q) or "all")
def test_same_items_in_the_same_order(ct_volume, query) -> None:  # type: ignore[no-untyped-def]
    result = make_result(ct_volume)
    sr = write_sr(result, segmentation=write_seg(result))
    expected = original()(sr, **query)
    got = find_content_items(sr, **query)
    assert [id(x) for x in got] == [id(x) for x in expected]
    if query == {"recursive": True}:
        assert len(got) > 20  # the whole tree of a real report


def test_no_content_sequence_is_an_error() -> None:
    from pydicom.dataset import Dataset

    with pytest.raises(AttributeError, match="Content Sequence"):
        find_content_items(Dataset())

"""UID checks of PS3.5 9.1 (dicom_node.receive.uids)."""

from __future__ import annotations

import pytest

from dicom_node.receive.uids import UidPolicy, check_uids, uid_problem, unusable_uid


@pytest.mark.parametrize(
    "uid",
    [
        "0",
        "1.2.840.10008.5.1.4.1.1.2",
        "2.25.329800735698586629295641978511506172918",
        "1." * 31 + "1",
    ],
)
def test_valid(uid: str) -> None:
    assert uid_problem(uid) is None


@pytest.mark.parametrize(
    ("uid", "problem"),
    [
        ("", "is empty"),
        ("1." * 32 + "1", "longer than 64"),
        ("1.2.\u200f3", "outside printable ASCII"),
        ("1.2.\u00e93", "outside printable ASCII"),
        ("1.2\\3", "outside printable ASCII"),
        ("1.2.3\n", "outside printable ASCII"),
        ("/etc/passwd", "other than digits"),
        ("$(touch x)", "other than digits"),
        ("..", "empty component"),
        ("1.2.", "empty component"),
        (".1.2", "empty component"),
        ("1.02.3", "leading zero"),
        ("00", "leading zero"),
    ],
)
def test_invalid(uid: str, problem: str) -> None:
    found = uid_problem(uid)
    assert found is not None and problem in found


def test_policies() -> None:
    uids = {"StudyInstanceUID": "1.02", "SOPInstanceUID": "1.2.\u200f3", "SOPClassUID": "1.2"}
    strict = check_uids(uids, UidPolicy.STRICT)
    assert set(strict.refused) == {"StudyInstanceUID", "SOPInstanceUID"} and not strict.warnings
    warn = check_uids(uids, UidPolicy.WARN)
    assert set(warn.refused) == {"SOPInstanceUID"} and set(warn.warnings) == {"StudyInstanceUID"}
    # The value is quoted with ascii(): a bidi mark cannot hide in a log line.
    assert "\\u200f" in warn.describe(warn.refused)
    assert unusable_uid("1.02") is None

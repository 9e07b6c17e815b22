"""A cleaned copy of the source header, before a writer copies from it.

The result writers copy patient, study and some series attributes from the
source images into their own objects: highdicom copies every root attribute
of the Patient, Clinical Trial Subject, General Study, Patient Study and
Clinical Trial Study modules (PS3.3 C.7.1.1, C.7.1.3, C.7.2.1, C.7.2.2,
C.7.2.3) and the Specific Character Set; the node's own code copies Body Part
Examined, Laterality / Image Laterality and Patient Orientation.  Real
exports carry values that are invalid for their Value Representation
(PS3.5 6.2): ``***`` or ``00000000`` dates, ages without a unit, over-long or
control-character strings, unknown character sets, ``70,5`` as a DS.  Copied
as they are, they break the writer (a lost result) or the output object.

:func:`clean_result` gives the writers a result whose source datasets are
shallow copies with every such value dealt with, following the attribute's
type (PS3.5 7.4): Type 2 values are emptied, Type 3 attributes left out, and
a Type 1 value that cannot be repaired (a UID that places the result in the
source study and series, a Type 1 text) refuses the result with a
:class:`SourceHeaderError` that names the attribute.  Sequences are checked
item by item, at any depth: one invalid nested value empties a Type 2
sequence and leaves out any other (the items are the source's; the node
never half-copies one).  An unknown Specific
Character Set (Type 1C) is replaced: left out when every copied text is
ASCII, else ISO_IR 192 (UTF-8), which holds any decoded text; ISO_IR 192
is also declared when copied text is not ASCII but no character set is.  Missing Type 2
patient/study attributes are added empty.  Each attribute cleaned logs one
warning naming the attribute and the rule, never its value (the values are
patient data).  The source datasets themselves are never modified.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydicom import config
from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import validate_value

from dicom_node.results.common import TYPE2_FROM_SOURCE

if TYPE_CHECKING:
    from ai_models.types import PipelineResult

logger = logging.getLogger(__name__)

__all__ = [
    "COPIED_ATTRIBUTES",
    "SourceHeaderError",
    "clean_datasets",
    "clean_result",
    "cleaned_once",
]


class SourceHeaderError(ValueError):
    """A Type 1 source attribute the result must copy is invalid and cannot be repaired."""


#: The main attributes of those modules (PS3.3 C.7.1.1 Patient, C.7.2.1 General
#: Study, C.7.2.2 Patient Study), for a highdicom whose module table moved.
_FALLBACK_MODULE_ATTRIBUTES: dict[str, str] = {
    "PatientName": "2",
    "PatientID": "2",
    "IssuerOfPatientID": "3",
    "PatientBirthDate": "2",
    "PatientBirthTime": "3",
    "PatientSex": "2",
    "OtherPatientNames": "3",
    "PatientComments": "3",
    "StudyInstanceUID": "1",
    "StudyDate": "2",
    "StudyTime": "2",
    "ReferringPhysicianName": "2",
    "StudyID": "2",
    "AccessionNumber": "2",
    "StudyDescription": "3",
    "PatientAge": "3",
    "PatientSize": "3",
    "PatientWeight": "3",
    "AdditionalPatientHistory": "3",
}


def _module_attributes() -> dict[str, str]:
    """Root attributes of the modules highdicom copies from a source, with their type.

    Read from highdicom's own module table (a private module: when a
    highdicom release moves it, :data:`_FALLBACK_MODULE_ATTRIBUTES` is used).
    """
    try:
        from highdicom._standard_utils import get_module_attribute_map

        table = get_module_attribute_map()
        out: dict[str, str] = {}
        for module in (
            "patient",
            "clinical-trial-subject",
            "general-study",
            "patient-study",
            "clinical-trial-study",
        ):
            for item in table[module]:
                if not item["path"]:
                    out[str(item["keyword"])] = str(item["type"])
    except (ImportError, KeyError, TypeError) as exc:
        logger.debug("highdicom module table not available (%s): built-in list used", exc)
        return dict(_FALLBACK_MODULE_ATTRIBUTES)
    return out


#: keyword -> type (PS3.3) of every source attribute a writer may copy.
COPIED_ATTRIBUTES: dict[str, str] = {
    **_module_attributes(),
    # Copied or read by the node's own code (General Series, PS3.3 C.7.3.1;
    # General Image, C.7.6.1; DX Image, C.8.11.2).
    "BodyPartExamined": "3",
    "Laterality": "2C",
    "ImageLaterality": "3",
    "PatientOrientation": "2C",
    # Referenced or copied UIDs that place the result in the source study,
    # series and frame of reference (SOP Common C.12.1, General Series,
    # Frame of Reference C.7.4.1).
    "SeriesInstanceUID": "1",
    "SOPInstanceUID": "1",
    "SOPClassUID": "1",
    "FrameOfReferenceUID": "1",
}

#: Type 2 patient/study attributes added empty when the source lacks them.
_TYPE2_REQUIRED = TYPE2_FROM_SOURCE

#: Type 1 UIDs that must have a value (an empty one cannot be repaired).
_UIDS_REQUIRED = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"}

#: Enumerated values (PS3.3 C.7.1.1 Patient's Sex).
_ENUMERATED = {"PatientSex": {"M", "F", "O"}}

_TEXT_VRS = {
    "AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UT",
}
#: Control characters a value may hold (PS3.5 6.1.2.3, 6.2): ESC for the
#: ISO 2022 code extensions; LT, ST, UT also format effectors.
_CONTROLS_ALLOWED = {"LT": "\x1b\t\n\f\r", "ST": "\x1b\t\n\f\r", "UT": "\x1b\t\n\f\r"}
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")


def _text(value: Any) -> str:
    original = getattr(value, "original_string", None)  # DS/IS as written
    return original if isinstance(original, str) else str(value)


def _real_date(text: str) -> bool:
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return True


def _real_time(text: str) -> bool:
    main = text.split(".")[0]
    try:
        parts = [int(main[i : i + 2]) for i in range(0, len(main), 2)]
    except ValueError:
        return False
    limits = (23, 59, 60)
    return all(p <= lim for p, lim in zip(parts, limits, strict=False))


def _problem(keyword: str, vr: str, value: str) -> str | None:
    """Why one value is invalid for ``vr`` (PS3.5 6.2), or ``None``.

    The reason never quotes the value.
    """
    if not value:
        return "empty" if keyword in _UIDS_REQUIRED else None
    allowed = _CONTROLS_ALLOWED.get(vr, "\x1b")
    if any(ch not in allowed for ch in _CONTROL_RE.findall(value)):
        return "control character"
    try:
        validate_value(vr, value, config.RAISE)
    except (ValueError, TypeError):
        return f"not a valid {vr} (length or format)"
    stripped = value.strip()
    if vr == "DA" and not _real_date(stripped):
        return "not a calendar date"
    if vr == "TM" and not _real_time(stripped):
        return "not a time of day"
    if vr == "DT":
        match = _DT_RE.match(stripped)
        if not match or (match.group(3) and not _real_date(stripped[:8])):
            return "not a valid DT"
    if vr == "DS":
        try:
            if not math.isfinite(float(stripped)):
                return "not a finite DS"
        except ValueError:
            return "not a valid DS"
    if vr == "IS" and not -(2**31) <= int(stripped) < 2**31:
        return "IS out of range"
    enumerated = _ENUMERATED.get(keyword)
    if enumerated is not None and stripped not in enumerated:
        return "not an enumerated value"
    return None


def _element(ds: Dataset, tag: BaseTag) -> DataElement | str:
    """The (decoded) element at ``tag``, or why it cannot be decoded."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        # pydicom's own warnings would quote the (patient) value: checked here.
        mode = config.settings.reading_validation_mode
        config.settings.reading_validation_mode = config.IGNORE
        try:
            return convert_raw_data_element(elem, encoding=ds._character_set, ds=ds)
        except Exception:  # noqa: BLE001 - any decoding failure means an unusable value
            return "cannot be decoded"
        finally:
            config.settings.reading_validation_mode = mode
    assert isinstance(elem, DataElement)
    return elem


def _element_problem(keyword: str, elem: DataElement | str) -> tuple[str, str] | None:
    """(VR, reason) when an element holds a value invalid for its VR.

    A sequence (SQ) is invalid when any element of any of its items is,
    at any depth; the reason names the item and the nested attribute.
    """
    if isinstance(elem, str):
        return dictionary_VR(tag_for_keyword(keyword) or 0), elem
    vr = elem.VR
    if vr == "SQ":
        reason = _sequence_problem(elem)
        return ("SQ", reason) if reason else None
    if vr not in _TEXT_VRS:
        return None
    if elem.value is None or elem.VM == 0:
        empty = _problem(keyword, vr, "")
        return (vr, empty) if empty else None
    values = elem.value if elem.VM > 1 else [elem.value]
    for value in values:
        reason = _problem(keyword, vr, _text(value) if value is not None else "")
        if reason:
            return vr, reason
    return None


def _sequence_problem(elem: DataElement) -> str | None:
    """Why a sequence's items hold an invalid value (item number, attribute), or ``None``."""
    for number, item in enumerate(elem.value or [], start=1):
        for tag in list(item.keys()):
            nested = _element(item, Tag(tag))
            keyword = nested.keyword if isinstance(nested, DataElement) else str(Tag(tag))
            found = _element_problem(keyword or str(Tag(tag)), nested)
            if found is not None:
                return f"item {number} {keyword or Tag(tag)}: {found[1]}"
    return None


def _charset_problem(ds: Dataset) -> bool:
    """True when Specific Character Set (0008,0005) names an unknown term (PS3.3 C.12.1.1.2)."""
    if "SpecificCharacterSet" not in ds:
        return False
    elem = _element(ds, Tag(0x00080005))
    if isinstance(elem, str):
        return True
    values = elem.value if elem.VM > 1 else [elem.value]
    return any(str(v or "").strip() not in python_encoding for v in values)


_COPIED_TEXT_TAGS = [
    Tag(tag)
    for tag in (tag_for_keyword(kw) for kw in COPIED_ATTRIBUTES)
    if tag is not None and dictionary_VR(tag) in ("LO", "LT", "PN", "SH", "ST", "UC", "UT")
]


def _undeclared_non_ascii(ds: Dataset) -> bool:
    """True when a copied text holds non-ASCII characters but no character set
    other than the default repertoire is declared (PS3.5 6.1.2.2)."""
    if str(ds.get("SpecificCharacterSet", "") or "").strip() not in ("", "ISO_IR 6"):
        return False
    for tag in _COPIED_TEXT_TAGS:
        if tag not in ds:
            continue
        elem = ds.get_item(tag)
        value = elem.value
        if isinstance(value, bytes):
            if not value.isascii():
                return True
        elif value is not None and not str(value).isascii():
            return True
    return False


def _decoded_text(ds: Dataset) -> list[str]:
    """Decode every root text element of ``ds`` in place (with its present character set)."""
    texts: list[str] = []
    for tag in list(ds.keys()):
        if tag == 0x00080005:
            continue
        elem = _element(ds, tag)
        if isinstance(elem, str):
            del ds[tag]
            continue
        if elem.VR in ("LO", "LT", "PN", "SH", "ST", "UC", "UT"):
            ds[tag] = elem
            if elem.value is not None:
                values = elem.value if elem.VM > 1 else [elem.value]
                texts.extend(str(v) for v in values)
    return texts


@dataclasses.dataclass(frozen=True)
class _Cleaned:
    keyword: str
    vr: str
    reason: str
    rule: str


def _shallow_copy(ds: Dataset) -> Dataset:
    copy = Dataset()
    copy.update(ds)  # new element dict; Dataset(ds) would share it
    if hasattr(ds, "file_meta"):
        copy.file_meta = ds.file_meta
    return copy


def _clean(ds: Dataset, log: dict[str, _Cleaned]) -> Dataset:
    """``ds``, or a cleaned shallow copy of it; rules applied are added to ``log``."""
    copy: Dataset | None = None

    def target() -> Dataset:
        nonlocal copy
        if copy is None:
            copy = _shallow_copy(ds)
        return copy

    if _undeclared_non_ascii(ds):
        new = target()
        _decoded_text(new)
        new.SpecificCharacterSet = "ISO_IR 192"
        log.setdefault(
            "SpecificCharacterSet",
            _Cleaned(
                "SpecificCharacterSet", "CS", "absent while copied text is not ASCII",
                "set to ISO_IR 192 (UTF-8)",
            ),
        )
    elif _charset_problem(ds):
        new = target()
        texts = _decoded_text(new)
        if all(t.isascii() for t in texts):
            del new.SpecificCharacterSet
            rule = "left out (default repertoire; every copied text is ASCII)"
        else:
            new.SpecificCharacterSet = "ISO_IR 192"
            rule = "replaced by ISO_IR 192 (UTF-8)"
        log.setdefault(
            "SpecificCharacterSet",
            _Cleaned("SpecificCharacterSet", "CS", "unknown character set term", rule),
        )

    for keyword, type_ in COPIED_ATTRIBUTES.items():
        tag = tag_for_keyword(keyword)
        if tag is None or tag not in ds:
            continue
        source = copy if copy is not None else ds
        found = _element_problem(keyword, _element(source, Tag(tag)))
        if found is None:
            continue
        vr, reason = found
        if type_.startswith("1") and vr != "SQ":
            raise SourceHeaderError(
                f"Source attribute {keyword} {Tag(tag)} ({vr}) is {reason} (PS3.5 6.2); "
                f"it is Type {type_} in the result and cannot be repaired, so no "
                "conforming result object can be written."
            )
        new = target()
        if type_.startswith("2"):
            new[tag] = DataElement(tag, vr, [] if vr == "SQ" else None)
            rule = f"emptied (Type {type_})"
        else:
            del new[tag]
            rule = f"left out (Type {type_})"
        log.setdefault(keyword, _Cleaned(keyword, vr, reason, rule))

    missing = [kw for kw in _TYPE2_REQUIRED if kw not in (copy if copy is not None else ds)]
    if missing:
        new = target()
        for kw in missing:
            setattr(new, kw, "")
    return copy if copy is not None else ds


def clean_datasets(datasets: Iterable[Dataset]) -> list[Dataset]:
    """Each dataset, or a cleaned shallow copy of it (see the module docstring).

    Logs one warning per attribute cleaned, however many datasets carry it.
    Cleaning a cleaned dataset returns it unchanged and logs nothing.

    Raises
    ------
    SourceHeaderError
        When a Type 1 attribute the result must copy is invalid.
    """
    log: dict[str, _Cleaned] = {}
    out = [_clean(ds, log) for ds in datasets]
    for item in log.values():
        logger.warning(
            "source attribute %s (%s, %s): %s (PS3.5 6.2); %s in the result",
            item.keyword,
            Tag(tag_for_keyword(item.keyword) or 0),
            item.vr,
            item.reason,
            item.rule,
        )
    return out


#: The source datasets :func:`cleaned_once` has cleaned, while its block runs.
_CLEANED: contextvars.ContextVar[Sequence[Dataset] | None] = contextvars.ContextVar(
    "cleaned_sources", default=None
)


def clean_result(result: PipelineResult) -> PipelineResult:
    """``result``, or a copy whose volume's source datasets are cleaned.

    Inside :func:`cleaned_once`, a result whose source datasets are the ones
    cleaned there is returned as it is (cleaning them again changes nothing).
    """
    original: Sequence[Dataset] = result.volume.source_datasets
    if _CLEANED.get() is original:
        return result
    cleaned = clean_datasets(original)
    if all(a is b for a, b in zip(cleaned, original, strict=True)):
        return result
    return dataclasses.replace(
        result, volume=dataclasses.replace(result.volume, source_datasets=cleaned)
    )



@contextlib.contextmanager
def cleaned_once(result: PipelineResult) -> Iterator[PipelineResult]:
    """:func:`clean_result` of ``result``, not checked again inside the block.

    For callers that run several writers on one result (each writer cleans
    what it is given): the source datasets are checked once, and a writer
    given the cleaned result inside the block skips its own pass over the
    same datasets.
    """
    out = clean_result(result)
    token = _CLEANED.set(out.volume.source_datasets)
    try:
        yield out
    finally:
        _CLEANED.reset(token)
